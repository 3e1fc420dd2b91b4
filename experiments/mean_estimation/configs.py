"""One config per question of the synthetic study (see experiments/README.md, "Mean estimation").

Every question shares BASE and sweeps one axis. Hyper-parameters are tuned per
setting and per method on TUNE_SEEDS (k from K_GRID, which also fixes the ULS
cohort at matched compute; learning rate x clip norm from LR_GRID x CLIP_GRID),
then the chosen configuration is re-run on fresh EVAL_SEEDS, which are reported.
"""
BASE = {
    "num_users": 10_000,
    "dim": 16,
    "heterogeneity": 1.0,        # tau
    "diversity": 1.0,            # s (s/tau = diversity since tau = 1)
    "median_examples": 8.0,
    "count_log_std": 1.0,
    "epsilon": 1.0,
    "delta": 1e-6,
    "examples_per_step": 256,    # compute per step, both modes (expected)
    "steps": 200,
}
K_GRID = [1, 4, 16]
LR_GRID = [0.05, 0.1, 0.2, 0.5, 1.0]
CLIP_GRID = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
TUNE_SEEDS = [0, 1]
EVAL_SEEDS = [100, 101, 102, 103, 104]

QUESTIONS = {
    # Q1: does ULS win under strong privacy and ELS (if anywhere) under weak privacy?
    "epsilon": {"axis": "epsilon", "values": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]},
    # Q2: compute budget over two orders of magnitude (expected examples per step, fixed steps).
    "compute": {"axis": "examples_per_step", "values": [20, 200, 2000]},
    # Q3: within-user diversity s/tau.
    "diversity": {"axis": "diversity", "values": [0.1, 0.3, 1.0, 3.0, 10.0]},
}
