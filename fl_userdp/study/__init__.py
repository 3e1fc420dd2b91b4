"""Study tools around a run: the planner, the ELS-or-ULS advisor, synthetic mean estimation, the audit."""
