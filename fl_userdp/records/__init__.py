"""The run's records: the write-ahead release log and the per-round reports and summaries."""
