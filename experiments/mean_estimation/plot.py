"""Plot the sweeps from results.jsonl only: one PNG per question (error vs the swept axis, ULS vs ELS).

    python experiments/mean_estimation/plot.py [--results experiments/mean_estimation/results.jsonl] [--table]

The last record of each (question, value, mode) wins (results.jsonl is append-only).
--table also prints one markdown table per question (the README's tables): per
setting both methods' error (mean ± sd over the eval seeds) and chosen k, lr, C;
the paired difference ELS − ULS over the same seeds (same populations); and a
verdict: "tie" when |mean difference| < the larger of the two sds, else the winner.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LABELS = {"epsilon": "user-level ε (δ = 1e-6)", "examples_per_step": "expected examples per step (200 steps)",
          "diversity": "within-user diversity s/τ"}


def latest_records(path) -> dict:
    latest = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            latest[(r["question"], r["value"], r["mode"])] = r
    return latest


def _fmt(x: float) -> str:
    return "0" if x == 0 else (f"{x:.4f}" if x >= 1e-3 else f"{x:.1e}")


def _signed(x: float) -> str:
    return "0" if x == 0 else ("+" if x > 0 else "−") + _fmt(abs(x))


def tables(latest: dict) -> str:
    out = []
    for q in dict.fromkeys(key[0] for key in latest):
        values = sorted({v for (qq, v, _m) in latest if qq == q})
        axis = next(r["axis"] for (qq, _v, _m), r in latest.items() if qq == q)
        out.append(f"\n**{q}** (swept `{axis}`)\n")
        out.append(f"| {axis} | ULS ‖θ−μ‖² | ULS k, lr, C | ELS ‖θ−μ‖² | ELS k, lr, C | ELS/ULS | ELS − ULS (paired) | verdict |")
        out.append("|---|---|---|---|---|---|---|---|")
        for v in values:
            u, e = latest.get((q, v, "uls")), latest.get((q, v, "els"))
            if u is None or e is None:
                continue
            diff = np.asarray(e["errors"]) - np.asarray(u["errors"])
            d_mean, d_sd = float(diff.mean()), float(diff.std(ddof=1))
            tol = max(u["error_std"], e["error_std"])
            if abs(d_mean) < tol:
                verdict = "tie (< 1 sd)"
            else:
                verdict = ("ULS" if d_mean > 0 else "ELS") + f" ({abs(d_mean) / tol:.1f} sd)"
            if u["k"] == 1 and e["k"] == 1:
                verdict += ", both k=1"
            edges = sorted(set(u.get("grid_edges", [])) | set(e.get("grid_edges", [])))
            note = f" ⚑{','.join(edges)}" if edges else ""
            out.append(f"| {v:g} | {_fmt(u['error_mean'])} ± {_fmt(u['error_std'])} | "
                       f"{u['k']}, {u['learning_rate']:g}, {u['clip_norm']:g} | "
                       f"{_fmt(e['error_mean'])} ± {_fmt(e['error_std'])} | "
                       f"{e['k']}, {e['learning_rate']:g}, {e['clip_norm']:g} | "
                       f"{e['error_mean'] / u['error_mean']:.2f} | {_signed(d_mean)} ± {_fmt(d_sd)} | {verdict}{note} |")
    return "\n".join(out)


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(HERE / "results.jsonl"))
    ap.add_argument("--table", action="store_true", help="also print markdown tables")
    a = ap.parse_args(argv)
    latest = latest_records(a.results)  # the last record of each (question, value, mode) wins
    rows = list(latest.values())
    by_q = defaultdict(lambda: defaultdict(list))
    for (q, v, mode), r in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        by_q[q][mode].append((v, r["error_mean"], r["error_std"], r["k"]))
    for q, modes in by_q.items():
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for mode, pts in modes.items():
            xs, ys, sd, ks = zip(*pts)
            ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=mode.upper())
            for x, y, k in zip(xs, ys, ks):  # ULS labels above the point, ELS below
                ax.annotate(f"k={k}", (x, y), textcoords="offset points", fontsize=7,
                            xytext=(3, 4) if mode == "uls" else (3, -10), color=ax.lines[-1].get_color())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(LABELS.get(next(r["axis"] for r in rows if r["question"] == q), q))
        ax.set_ylabel("‖θ − μ‖² (mean ± sd, 5 seeds)")
        n_users = next(r["config"]["num_users"] for r in rows if r["question"] == q)
        ax.set_title(f"Mean estimation: {q} (N = {n_users:,})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(HERE / f"{q}.png", dpi=120)
        plt.close(fig)
        print(HERE / f"{q}.png")
    if a.table:
        print(tables(latest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
