"""Plot the sweeps from results.jsonl only: one PNG per question (error vs the swept axis, ULS vs ELS).

    python experiments/mean_estimation/plot.py [--results experiments/mean_estimation/results.jsonl]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABELS = {"epsilon": "user-level ε (δ = 1e-6)", "examples_per_step": "expected examples per step (200 steps)",
          "diversity": "within-user diversity s/τ"}


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(HERE / "results.jsonl"))
    a = ap.parse_args(argv)
    rows = [json.loads(line) for line in open(a.results) if line.strip()]
    latest = {}
    for r in rows:  # the last record of each (question, value, mode) wins
        latest[(r["question"], r["value"], r["mode"])] = r
    by_q = defaultdict(lambda: defaultdict(list))
    for (q, v, mode), r in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        by_q[q][mode].append((v, r["error_mean"], r["error_std"], r["k"]))
    for q, modes in by_q.items():
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for mode, pts in modes.items():
            xs, ys, sd, ks = zip(*pts)
            ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=mode.upper())
            for x, y, k in zip(xs, ys, ks):
                ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(LABELS.get(next(r["axis"] for r in rows if r["question"] == q), q))
        ax.set_ylabel("‖θ − μ‖² (mean ± sd, 5 seeds)")
        ax.set_title(f"Mean estimation: {q}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(HERE / f"{q}.png", dpi=120)
        plt.close(fig)
        print(HERE / f"{q}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
