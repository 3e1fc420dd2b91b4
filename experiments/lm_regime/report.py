#!/usr/bin/env python
"""Tables, figure and per-axis summaries of the LM regime study, from results.jsonl only.

    python experiments/lm_regime/report.py [--results experiments/lm_regime/results.jsonl]

Writes results.md (the tables in docs/results/lm-regime.md) and loss.png next to this file. Per cell and
mode: the tuning winner (k, C, lr; ✓/✗ whether one run past the lr edge did worse/better), held-out loss mean ± sd over the
reporting seeds, the paired difference ELS − ULS over the same seeds (same corpus draws and held-out
users; > 0: ULS better) with the verdict "tie" when |mean| < 2 × its standard error, and the adaptive-C
arm's loss and its paired difference to the tuned-C arm. Per axis (ε, budget, diversity): the mean
paired difference at each level, over the cells that share it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REF = "k4|C1|lr0.02"  # the no-noise reference's configuration (run.py)
sys.path.insert(0, str(HERE))
from run import GRID, REPORT_SEEDS, STEPS, cell_name, cells  # noqa: E402


def load(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def arm(done: dict, cname: str, mode: str, which: str) -> np.ndarray | None:
    vals = [done.get(f"report|{cname}|{mode}|{which}|seed{s}") for s in REPORT_SEEDS]
    return None if any(v is None for v in vals) else np.array([v["eval_loss"] for v in vals])


def chosen(done: dict, cname: str, mode: str) -> tuple[str, dict] | None:
    row = done.get(f"report|{cname}|{mode}|tuned|seed{REPORT_SEEDS[0]}")
    if row is None:
        return None
    c = row["config"]
    vals = {"k": c["privacy.max-examples-per-user"], "C": c["privacy.clip-norm"], "lr": c["train.server-lr"]}
    past = vals["lr"] * 4 if vals["lr"] == max(GRID["lr"]) else vals["lr"] / 4
    tuned = done.get(f"tune|{cname}|{mode}|k{vals['k']}|C{vals['C']:g}|lr{vals['lr']:g}")
    beyond = done.get(f"edge|{cname}|{mode}|k{vals['k']}|C{vals['C']:g}|lr{past:g}")
    edge = "" if beyond is None or tuned is None else (" ✓" if beyond["eval_loss"] >= tuned["eval_loss"] else
                                                       f" ✗lr {past:g} better")
    return f"{vals['k']}, {vals['C']:g}, {vals['lr']:g}{edge}", {"edges": [], "sigma": row["sigma"],
                                                          "q": row["q"], "users": row["users_sampled_mean"]}


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """mean and standard error of a − b over seeds, and the verdict (> 0: b better)."""
    d = a - b
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))
    return m, se, ("tie" if abs(m) < 2 * se else ("second" if m > 0 else "first"))


def fmt(x: np.ndarray) -> str:
    return f"{x.mean():.4f} ± {x.std(ddof=1):.4f}"


def table(done: dict, todo: list[dict]) -> tuple[str, list[dict]]:
    out = ["| N | ε | B | diversity | ULS loss | ULS k, C, lr | ELS loss | ELS k, C, lr | σ ULS / ELS | ELS − ULS |"
           " verdict | ULS adaptive − tuned | ELS adaptive − tuned |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for cell in todo:
        cname = cell_name(cell)
        u, e = arm(done, cname, "uls", "tuned"), arm(done, cname, "els", "tuned")
        cu, ce = chosen(done, cname, "uls"), chosen(done, cname, "els")
        if u is None or e is None or cu is None or ce is None:
            continue
        m, se, v = paired(e, u)
        verdict = {"tie": "tie", "second": "ULS", "first": "ELS"}[v]
        ad = []
        for mode, tuned in (("uls", u), ("els", e)):
            a = arm(done, cname, mode, "adaptive")
            if a is None:
                ad.append("–")
            else:
                am, ase, av = paired(a, tuned)
                ad.append(f"{am:+.4f} ± {ase:.4f}" + ("" if av == "tie" else (" (worse)" if am > 0 else " (better)")))
        flag = lambda c: c[0] + (f" ⚑{','.join(c[1]['edges'])}" if c[1]["edges"] else "")  # noqa: E731
        out.append(f"| {cell['N']:,} | {cell['eps']:g} | {cell['budget']} | {cell['div']} | {fmt(u)} | {flag(cu)} | "
                   f"{fmt(e)} | {flag(ce)} | {cu[1]['sigma']:.3f} / {ce[1]['sigma']:.3f} | {m:+.4f} ± {se:.4f} | {verdict} | "
                   f"{ad[0]} | {ad[1]} |")
        rows.append({**cell, "diff": m, "se": se, "verdict": verdict, "uls": u.mean(), "els": e.mean()})
    return "\n".join(out), rows


def axes(rows: list[dict]) -> str:
    out = ["| axis | level | cells | mean ELS − ULS | ULS wins | ELS wins | ties |", "|---|---|---|---|---|---|---|"]
    for axis, name in (("eps", "ε"), ("budget", "budget B"), ("div", "diversity")):
        for level in dict.fromkeys(r[axis] for r in rows):
            sub = [r for r in rows if r[axis] == level and r["N"] == 100_000]
            if not sub:
                continue
            n = lambda v: sum(r["verdict"] == v for r in sub)  # noqa: E731
            shown = level if isinstance(level, str) else f"{level:g}"
            out.append(f"| {name} | {shown} | {len(sub)} | {np.mean([r['diff'] for r in sub]):+.4f} | "
                       f"{n('ULS')} | {n('ELS')} | {n('tie')} |")
    return "\n".join(out)


def references(done: dict) -> str:
    out = ["| N | B | diversity | ULS loss (σ = 0) | ELS loss (σ = 0) |", "|---|---|---|---|---|"]
    keys = sorted({k.split("|")[1] for k in done if k.startswith("reference|") and k.endswith(REF)})
    for cell in keys:
        u, e = done.get(f"reference|{cell}|uls|{REF}"), done.get(f"reference|{cell}|els|{REF}")
        n, b, div = cell.split("-")
        out.append(f"| {int(n[1:]):,} | {b[1:]} | {div} | {u['eval_loss']:.4f} | {e['eval_loss']:.4f} |"
                   if u and e else f"| {n} | {b} | {div} | – | – |")
    return "\n".join(out)


def long_runs(done: dict) -> str:
    """`run.py --long T`: the ε = 1, B = 64 cells with the T = 20 tuned configurations run for T steps."""
    out = ["| T | N | ε | B | diversity | ULS loss (σ) | ELS loss (σ) | ELS − ULS | verdict |",
           "|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({tuple(k.split("|")[1:3]) for k in done if k.startswith("long|")})
    for t, cname in groups:
        got = {}
        for mode in ("uls", "els"):
            rows = [done.get(f"long|{t}|{cname}|{mode}|seed{s}") for s in REPORT_SEEDS]
            got[mode] = None if None in rows else (np.array([r["eval_loss"] for r in rows]), rows[0]["sigma"])
        if None in got.values():
            continue
        m, se, v = paired(got["els"][0], got["uls"][0])
        n, eps, b, div = cname.split("-")
        out.append(f"| {t[1:]} | {int(n[1:]):,} | {eps[3:]} | {b[1:]} | {div} | {fmt(got['uls'][0])} ({got['uls'][1]:.3f}) | "
                   f"{fmt(got['els'][0])} ({got['els'][1]:.3f}) | {m:+.4f} ± {se:.4f} | "
                   f"{ {'tie': 'tie', 'second': 'ULS', 'first': 'ELS'}[v]} |")
    return "\n".join(out) if len(out) > 2 else ""


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, budget in zip(axs, (64, 1024)):
        for div, style in (("low", "--"), ("high", "-")):
            sub = sorted((r for r in rows if r["budget"] == budget and r["div"] == div and r["N"] == 100_000),
                         key=lambda r: r["eps"])
            if sub:
                eps = [r["eps"] for r in sub]
                ax.errorbar(eps, [r["diff"] for r in sub], yerr=[2 * r["se"] for r in sub], ls=style, marker="o",
                            capsize=3, label=f"diversity {div}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks([1, 4, 16], ["1", "4", "16"])
        ax.set_title(f"N = 100,000, B = {budget} examples/step, {STEPS} steps")
        ax.set_xlabel("user-level ε (δ = 1e-6)")
    axs[0].set_ylabel("held-out loss ELS − ULS (> 0: ULS better)")
    axs[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    args = ap.parse_args()
    done = load(args.results)
    tab, rows = table(done, cells("main,trend"))
    text = (f"Held-out loss after {STEPS} steps (mean ± sd over seeds {', '.join(map(str, REPORT_SEEDS))}); "
            f"ELS − ULS paired over the same seeds (± standard error; > 0: ULS better); "
            f"grid k {GRID['k']}, C {GRID['C']}, lr {GRID['lr']}, two points per axis; ✓ after a choice: one run "
            f"past its lr edge (on the tuning seed) did worse, ✗: better.\n\n{tab}\n\n"
            f"Per axis (N = 100,000 cells):\n\n{axes(rows)}\n\nNo noise (σ = 0, seed 0, k 4, C 1, lr 0.02):\n\n"
            f"{references(done)}\n")
    longer = long_runs(done)
    if longer:
        text += f"\nLonger runs (`run.py --long T`: each mode's T = 20 tuned k, C, lr; σ recalibrated for T):\n\n{longer}\n"
    (HERE / "results.md").write_text(text)
    if rows:
        figure(rows, HERE / "loss.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
