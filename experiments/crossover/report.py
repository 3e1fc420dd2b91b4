#!/usr/bin/env python
"""Tables, figure and the advisor's hit rate for the crossover study, from its two logs only.

    python experiments/crossover/report.py

Reads results.jsonl and predictions.jsonl (written by run.py), writes results.md and elsvsuls.png
next to this file and replaces the block between `<!-- crossover:start -->` and `<!-- crossover:end -->`
in its results page, docs/results/crossover.md, with results.md. Per cell: each mode's tuning choice (replayed from the
tuning runs with run.py's own search, so the lr and cap edges it checked are listed), held-out loss
over the reporting seeds, ELS − ULS paired by seed with a two-sided paired t-test (n − 1 degrees of
freedom), the advisor's prediction (written before the cell's runs) and whether it matched. A cell
is decided when p < 0.05; the hit rate counts decided cells only, and only where the prediction names a
mode (`call`: not where both modes' best options are cap 1, nor a margin within rounding of 1).

A cell's compute in epochs is computed from its own runs (each run's logged sampling rate, cap, steps
and users), never from a study-wide constant: the SmolLM2 cells ran at B = 16, the others at B = 64.
The starting point of each population (the held-out loss of the initial weights, step 0, evaluated by
the same worker code and held-out rows as the runs) is measured once per population and reporting seed
and cached in start_loss.json, as the advisor's curve is in advisor_curve.json.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402
from run import REPORT_SEEDS, cell_name, cells, load  # noqa: E402

README = HERE.parents[1] / "docs" / "results" / "crossover.md"  # the study's results page
ALPHA = 0.05
ROUNDING = 1e-6   # |margin − 1| below this: the two scores are equal up to floating-point rounding


def call(pred: dict | None) -> str | None:
    """The mode a prediction names, or None where it names none: no prediction; both modes' best options at
    cap 1 (ELS k = 1 and ULS G = 1: one example per sampled user, nearly one algorithm, equal scores up to
    the accountants' σ); or a margin within ROUNDING of 1. A None is "no call", never a hit or a miss."""
    if pred is None or (pred["els"]["cap"] == 1 and pred["uls"]["cap"] == 1) or abs(pred["margin"] - 1) <= ROUNDING:
        return None
    return pred["winner"]


def budget(row: dict, counts: np.ndarray) -> float:
    """A run's expected examples per step, from its own log: its sampling rate × Σ min(n_u, its cap) over
    its training users (run.py sets q = B / Σ min(n_u, cap), so this is the run's B unless q was cut to 1)."""
    return float(row["q"]) * float(np.minimum(counts, int(row["config"]["privacy.max-examples-per-user"])).sum())


def epochs_at_cap(row: dict, counts: np.ndarray, cap: int = 4) -> float:
    """B·T / Σ min(n_u, cap) with the run's own B (`budget`) and T (its train.rounds)."""
    return budget(row, counts) * int(row["config"]["train.rounds"]) / float(np.minimum(counts, cap).sum())


def replay(done: dict, cell: dict, mode: str):
    """run.py's tuning search replayed on the logged losses: ((cap, lr), tried points) or None if unfinished."""
    gen = run.tuning(cell, mode)
    tried: dict = {}
    reply = None
    try:
        while True:
            points = gen.send(reply)
            rows = [done.get(run.tune_key(cell, mode, c, lr)) for c, lr in points]
            if any(r is None for r in rows):
                return None
            reply = {p: r["eval_loss"] for p, r in zip(points, rows)}
            tried.update(reply)
    except StopIteration as stop:
        return stop.value, tried


def seeds(done: dict, cell: dict, mode: str) -> list[dict] | None:
    which = run.SMOLLM2_SEEDS if cell["sim"] == "smollm2" else REPORT_SEEDS
    rows = [done.get(f"report|{cell_name(cell)}|{mode}|seed{s}") for s in which]
    return None if any(r is None for r in rows) else rows


def edges(choice, tried) -> str:
    """The lr and cap neighbours of the choice that were run (each did worse, by construction)."""
    cap, lr = choice
    lrs = sorted(l for c, l in tried if c == cap)
    caps = sorted(c for c, l in tried if l == lr)
    return f"lr {'/'.join(f'{x:g}' for x in lrs)}; cap {'/'.join(map(str, caps))}"


def analyse(done: dict, predicted: dict, cell: dict) -> dict | None:
    out = {"cell": cell, "name": cell_name(cell)}
    first: dict[str, dict] = {}
    for mode in ("uls", "els"):
        tuned, rows = replay(done, cell, mode), seeds(done, cell, mode)
        if tuned is None or rows is None:
            return None
        choice, tried = tuned
        first[mode] = rows[0]
        out[mode] = {"cap": choice[0], "lr": choice[1], "edges": edges(choice, tried),
                     "loss": np.array([r["eval_loss"] for r in rows]), "sigma": rows[0]["sigma"],
                     "epochs": rows[0]["epochs"], "q": rows[0]["q"],
                     "clipped_min": min(r["clipped_fraction_min"] for r in rows
                                        if r.get("clipped_fraction_min") is not None)}
    d = out["els"]["loss"] - out["uls"]["loss"]
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))
    t = m / se if se > 0 else math.copysign(math.inf, m)
    p = float(2 * stats.t.sf(abs(t), d.size - 1))
    out.update(diff=m, se=se, t=t, df=d.size - 1, p=p,
               outcome=("tie" if p >= ALPHA else ("uls" if m > 0 else "els")))
    pred = predicted.get(f"predict|{cell_name(cell)}")
    out["pred"] = pred
    seed = int(first["uls"]["config"]["seed"])           # both modes' first reporting run: the same seed
    counts = run.counts_of(cell, seed)
    budgets = {mode: budget(row, counts) for mode, row in first.items()}
    if not math.isclose(budgets["uls"], budgets["els"], rel_tol=1e-6) and max(r["q"] for r in first.values()) < 1:
        raise ValueError(f"{out['name']}: the modes' logged budgets differ ({budgets}); the epochs are not one number")
    out["budget"], out["steps"] = budgets["uls"], int(first["uls"]["config"]["train.rounds"])
    out["epochs4"] = epochs_at_cap(first["uls"], counts, 4)
    return out


def fmt(x: np.ndarray) -> str:
    return f"{x.mean():.4f} ± {x.std(ddof=1):.4f}"


def label(cell: dict) -> str:
    if cell["sim"] == "shakespeare":
        return "Shakespeare (1,289)"
    if cell["sim"] == "smollm2":
        return f"SmolLM2, Shakespeare ({cell['N']:,})"
    return f"{cell['N']:,}"


def main_table(rows: list[dict]) -> str:
    head = ("| users | ε | within-user share | epochs (cap 4) | ULS loss | ULS G, lr | ELS loss | ELS k, lr | "
            "q·T ULS / ELS | σ ULS / ELS | ELS − ULS (± SE) | t (df) | p | outcome | advisor (ELS/ULS SNR) | hit |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        u, e, pr = r["uls"], r["els"], r["pred"]
        share = pr["pilot"]["within_user_share"] if pr else None
        guess = "—" if pr is None else (
            f"{pr['winner'].upper()}{' (close)' if pr['close'] else ''} {pr['margin']:.2f}" if call(pr) else
            f"no call (k {pr['els']['cap']} / G {pr['uls']['cap']}, {pr['margin']:.2f})")
        lines.append(
            f"| {label(r['cell'])} | {r['cell']['eps']:g} | {share:.2f} | {r['epochs4']:.3g} | {fmt(u['loss'])} | "
            f"{u['cap']}, {u['lr']:g} | {fmt(e['loss'])} | {e['cap']}, {e['lr']:g} | {u['epochs']:.3g} / {e['epochs']:.3g} | "
            f"{u['sigma']:.3f} / {e['sigma']:.3f} | {r['diff']:+.4f} ± {r['se']:.4f} | {r['t']:+.2f} ({r['df']}) | "
            f"{r['p']:.3f} | {r['outcome'].upper() if r['outcome'] != 'tie' else 'tie'} | {guess} | {hit_mark(r)} |")
    return "\n".join(lines)


def hit_mark(r: dict) -> str:
    if call(r["pred"]) is None or r["outcome"] == "tie":
        return "—"
    return "✓" if call(r["pred"]) == r["outcome"] else "✗"


def edges_table(rows: list[dict]) -> str:
    lines = ["| cell | ULS choice (neighbours run) | ELS choice (neighbours run) | min clipped fraction ULS / ELS |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | G {r['uls']['cap']}, lr {r['uls']['lr']:g} ({r['uls']['edges']}) | "
                     f"k {r['els']['cap']}, lr {r['els']['lr']:g} ({r['els']['edges']}) | "
                     f"{r['uls']['clipped_min']:.3f} / {r['els']['clipped_min']:.3f} |")
    return "\n".join(lines)


def pilot_table(predicted: dict) -> str:
    lines = ["| pilot (tuning seed) | within-user share | c_E (k = 1) | c_U(4) | c_U(16) | c_U(32) | a(4) | a(16) |",
             "|---|---|---|---|---|---|---|---|"]
    seen = set()
    for key, p in sorted(predicted.items()):
        c = p["cell"]
        name = label(c) if c["sim"] in ("shakespeare", "smollm2") else f"N {c['N']:,}, {c['sim']}"
        if name in seen:
            continue
        seen.add(name)
        ex, us = p["pilot"]["example_cosine"], p["pilot"]["user_cosine"]

        def cell(d: dict, k: str) -> str:
            return f"{d[k]:.4f}" if k in d else "—"

        def gain(k: str) -> str:
            return f"{us[k] / ex[k]:.2f}" if k in us and k in ex else "—"
        extra = f" (c_U(8) {us['8']:.4f}, a(8) {gain('8')})" if "8" in us and "4" not in us else ""
        lines.append(f"| {name}{extra} | {p['pilot']['within_user_share']:.3f} | {cell(ex, '1')} | {cell(us, '4')} | "
                     f"{cell(us, '16')} | {cell(us, '32')} | {gain('4')} | {gain('16')} |")
    return "\n".join(lines)


START = HERE / "start_loss.json"


def population_name(cell: dict) -> str:
    """The name of a cell's population in the σ = 0 reference keys (reference|<name>|<mode>)."""
    return "shakespeare" if cell["sim"] == "shakespeare" else f"N{cell['N']}-{cell['sim']}"


def starting_loss(cell: dict, seed: int) -> float:
    """The held-out loss of the initial weights (step 0) of the cell's runs at `seed`: the worker's own
    evaluation, on the same corpus, held-out rows and model initialisation as run.py's runs."""
    from fl_userdp.clients.compute import Worker
    from fl_userdp.config import parse_config
    from fl_userdp.local.model import build_model, get_trainable

    cfg = parse_config(run.run_config(cell, "uls", 4, 0.02, seed))
    return float(Worker(cfg).evaluate(cfg, get_trainable(build_model(cfg.model, cfg.seed))))


def starting_losses(populations: dict[str, dict]) -> dict[str, dict[int, float]]:
    """{population: {seed: step-0 held-out loss}} over the reporting seeds (cached in start_loss.json: a pure
    function of the configuration)."""
    import json

    cache = json.loads(START.read_text()) if START.exists() else {}
    out: dict[str, dict[int, float]] = {}
    for name, cell in sorted(populations.items()):
        for seed in REPORT_SEEDS:
            key = f"{name}|seed{seed}"
            if key not in cache:
                cache[key] = starting_loss(cell, seed)
                START.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            out.setdefault(name, {})[seed] = cache[key]
    return out


def references(done: dict, start: dict[str, dict[int, float]]) -> str:
    keys = sorted({k.split("|")[1] for k in done if k.startswith("reference|")})
    lines = ["| population | start (step 0), seed 0 | start, seeds 0–4 | ULS loss (σ = 0) | ELS loss (σ = 0) |",
             "|---|---|---|---|---|"]
    for name in keys:
        u, e = done.get(f"reference|{name}|uls"), done.get(f"reference|{name}|els")
        s0 = start.get(name, {})
        first = f"{s0[REPORT_SEEDS[0]]:.4f}" if REPORT_SEEDS[0] in s0 else "—"
        every = fmt(np.array([s0[s] for s in REPORT_SEEDS])) if len(s0) == len(REPORT_SEEDS) else "—"
        lines.append(f"| {name} | {first} | {every} | {u['eval_loss']:.4f} | {e['eval_loss']:.4f} |" if u and e
                     else f"| {name} | {first} | {every} | … | … |")
    return "\n".join(lines)


def hit_rate(rows: list[dict]) -> tuple[str, list[str]]:
    """The advisor's hits on decided cells where it named a mode (`call`); cells where it named none are
    counted apart, never as hits."""
    decided = [r for r in rows if r["outcome"] != "tie" and call(r["pred"]) is not None]
    hits = [r for r in decided if call(r["pred"]) == r["outcome"]]
    sure = [r for r in decided if not r["pred"]["close"]]
    sure_hits = [r for r in sure if call(r["pred"]) == r["outcome"]]
    uncalled = [r for r in rows if r["pred"] is not None and call(r["pred"]) is None]
    uncalled_decided = [r for r in uncalled if r["outcome"] != "tie"]
    misses = [f"{r['name']}: predicted {r['pred']['winner'].upper()} (SNR ratio {r['pred']['margin']:.3f}"
              f"{', close' if r['pred']['close'] else ''}), measured {r['outcome'].upper()} "
              f"({r['diff']:+.4f} ± {r['se']:.4f}, p {r['p']:.3f})" for r in decided if r not in hits]
    ties = sum(r["outcome"] == "tie" for r in rows)
    calls = [r for r in rows if call(r["pred"]) is not None and not r["pred"]["close"]]
    signs = sum((r["diff"] > 0) == (call(r["pred"]) == "uls") for r in calls)
    close = [r for r in rows if call(r["pred"]) is not None and r["pred"]["close"]]

    def spread(sel: list[dict]) -> str:
        return (f"{np.median([abs(r['diff']) for r in sel]):.3f} nats at the median, at most "
                f"{max(abs(r['diff']) for r in sel):.3f}" if sel else "—")
    text = (f"Advisor: **{len(hits)} of {len(decided)}** decided cells where it named a mode predicted right"
            f" ({len(sure_hits)} of {len(sure)} where it did not call the cell close); {ties} of {len(rows)} cells "
            f"undecided (p ≥ {ALPHA}). **No call** in {len(uncalled)} cells ({len(uncalled_decided)} of them decided, "
            f"not counted): both modes' best options at cap 1 (one example per sampled user: nearly one algorithm) "
            f"or an SNR ratio within {ROUNDING:g} of 1 (the named mode is floating-point rounding). Where it made a "
            f"call (not close), the measured difference has "
            f"the predicted sign in **{signs} of {len(calls)}** cells, decided or not; where it called the cell "
            f"*too close* ({len(close)} cells) the measured |ELS − ULS| is {spread(close)}; where it made no call, "
            f"{spread(uncalled)}.")
    return text, misses


def checks(done: dict) -> list[str]:
    """Re-runs of one mode at another (cap, lr) on the reporting seeds (keys check|cell|mode|capC|lrL|seedS),
    each paired with the other mode's reporting runs: is a decided gap the mechanism or the tuning?"""
    groups: dict[tuple, dict[int, float]] = {}
    for key, row in done.items():
        if key.startswith("check|"):
            _, cname, mode, cap, lr, seed = key.split("|")
            groups.setdefault((cname, mode, cap, lr), {})[int(seed[4:])] = row["eval_loss"]
    out = []
    for (cname, mode, cap, lr), losses in sorted(groups.items()):
        other = "els" if mode == "uls" else "uls"
        theirs = {s: done.get(f"report|{cname}|{other}|seed{s}") for s in losses}
        if any(v is None for v in theirs.values()):
            continue
        seeds_ = sorted(losses)
        mine = np.array([losses[s] for s in seeds_])
        ref = np.array([theirs[s]["eval_loss"] for s in seeds_])
        d = (ref - mine) if mode == "uls" else (mine - ref)          # always ELS − ULS
        se = float(d.std(ddof=1) / math.sqrt(d.size))
        p = float(stats.ttest_rel(d, np.zeros_like(d)).pvalue)
        out.append(f"{cname}: {mode.upper()} re-run at {cap.replace('cap', 'cap ')}, {lr.replace('lr', 'lr ')} on the "
                   f"reporting seeds: ELS − ULS {d.mean():+.4f} ± {se:.4f} (p {p:.2f}, df {d.size - 1})")
    return out


def sign_tests(rows: list[dict]) -> str:
    """Pooled over cells: how often ULS came out ahead below and above one epoch (a one-sided sign test)."""
    out = []
    for name, sel in (("below 0.5 epochs", [r for r in rows if r["epochs4"] < 0.5]),
                      ("at 0.5 epochs or more", [r for r in rows if r["epochs4"] >= 0.5])):
        if not sel:
            continue
        k = sum(r["diff"] > 0 for r in sel)
        p = float(stats.binomtest(k, len(sel), 0.5, alternative="greater").pvalue)
        out.append(f"{name}: ULS ahead in {k} of {len(sel)} cells (one-sided sign test p = {p:.2g}; mean "
                   f"ELS − ULS {np.mean([r['diff'] for r in sel]):+.4f})")
    return "Pooled over the synthetic cells (independent and similar examples, every ε) — " + "; ".join(out) + "."


CURVE = HERE / "advisor_curve.json"
CURVE_N = (100_000, 50_000, 20_000, 10_000, 5_000, 2_000, 1_000, 500, 300, 150)


def advisor_curve(predicted: dict) -> dict[float, list[tuple[float, float]]]:
    """The advisor's ELS/ULS SNR ratio over populations 100,000 → 150 (same B, T), per ε, with the pilot of
    the N = 2,000 cell (cached in advisor_curve.json: a pure function of its inputs)."""
    import json

    from fl_userdp.study.advisor import Pilot, advise

    cache = json.loads(CURVE.read_text()) if CURVE.exists() else {}
    pilot_row = predicted.get("predict|N2000-eps1-independent")
    if pilot_row is None:
        return {}
    pilot = Pilot.from_dict(pilot_row["pilot"])
    out: dict[float, list[tuple[float, float]]] = {}
    for eps in (1.0, 4.0, 16.0):
        for n in CURVE_N:
            key = f"{eps:g}|{n}"
            if key not in cache:
                cell = {"N": n, "eps": eps, "sim": "independent"}
                counts = run.counts_of(cell, run.TUNE_SEED)
                adv = advise(counts, run.B, run.STEPS, eps, run.DELTA, pilot)
                cache[key] = {"epochs4": run.B * run.STEPS / float(np.minimum(counts, 4).sum()),
                              "margin": adv.margin}
                CURVE.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            out.setdefault(eps, []).append((cache[key]["epochs4"], cache[key]["margin"]))
    return out


def crossing(points: list[tuple[float, float]], level: float) -> float | None:
    """The first epochs (log-interpolated) where the SNR ratio falls below `level`."""
    pts = sorted(points)
    for (x0, m0), (x1, m1) in zip(pts, pts[1:]):
        if m0 >= level > m1:
            f = (math.log(m0) - math.log(level)) / (math.log(m0) - math.log(m1))
            return math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0)))
    return None


def figure(rows: list[dict], curve: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fl_userdp.study.advisor import CLOSE

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    colours = {1.0: "tab:blue", 4.0: "tab:orange", 16.0: "tab:green"}
    for eps, colour in colours.items():
        sel = sorted((r for r in rows if r["cell"]["eps"] == eps and r["cell"]["sim"] == "independent"),
                     key=lambda r: r["epochs4"])
        if sel:
            ax.errorbar([r["epochs4"] for r in sel], [r["diff"] for r in sel], yerr=[2 * r["se"] for r in sel],
                        marker="o", color=colour, capsize=3, label=f"ε = {eps:g}: measured (± 2 SE)")
        pts = curve.get(eps)
        if pts:
            ax2.plot(*zip(*sorted(pts)), color=colour, marker=".", label=f"ε = {eps:g}")
            cross = crossing(pts, 1 / CLOSE)
            if cross is not None:
                for a in (ax, ax2):
                    a.axvline(cross, color=colour, linestyle="--", alpha=0.7)
                ax.plot([], [], color=colour, linestyle="--", label=f"ε = {eps:g}: advisor calls ULS from ≈ {cross:.2g} epochs")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylabel("held-out loss ELS − ULS\n(> 0: ULS better)")
    plotted = [r for r in rows if r["cell"]["sim"] == "independent"]
    ax.set_title(f"ELS vs ULS, tiny LM + LoRA, {setting(plotted)}, each mode tuned", fontsize=10)
    ax.legend(fontsize=7)
    ax2.axhline(1, color="black", lw=0.8)
    ax2.axhspan(1 / CLOSE, CLOSE, color="grey", alpha=0.15, label="too close to call")
    ax2.set_yscale("log")
    ax2.set_ylabel("advisor: ELS / ULS\nupdate SNR")
    ax2.set_xlabel("compute in epochs (B·T / Σ min(n_u, 4))")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def setting(rows: list[dict]) -> str:
    """"B = …, T = …" of these cells, from their runs (every distinct value)."""
    bs = sorted({round(r["budget"], 6) for r in rows})
    ts = sorted({r["steps"] for r in rows})
    return f"B = {' / '.join(f'{b:g}' for b in bs)}, T = {' / '.join(map(str, ts))}"


def main() -> int:
    done, predicted = load(run.RESULTS), load(run.PREDICTIONS)
    rows = [r for r in (analyse(done, predicted, c) for c in cells("main,diversity,shakespeare,smollm2"))
            if r is not None]
    populations = {population_name(c): c for c in cells("main,diversity,shakespeare")}
    main_rows = [r for r in rows if r["cell"]["sim"] == "independent"]
    div_rows = [r for r in rows if r["cell"]["sim"] in ("mixed", "near-copies")]
    div_rows += [r for r in main_rows if r["cell"]["eps"] == 4.0 and r["cell"]["N"] in (2_000, 150)]
    div_rows.sort(key=lambda r: (r["cell"]["N"], r["pred"]["pilot"]["within_user_share"] if r["pred"] else 0))
    real = [r for r in rows if r["cell"]["sim"] in ("shakespeare", "smollm2")]
    rate, misses = hit_rate(rows)
    parts = [
        f"Held-out loss after the run (mean ± sd over seeds {', '.join(map(str, REPORT_SEEDS))}); ELS − ULS "
        f"paired by seed (> 0: ULS better), two-sided paired t-test with n − 1 = {len(REPORT_SEEDS) - 1} degrees of "
        f"freedom, outcome = the better mode where p < {ALPHA}, else tie. *epochs (cap 4)* = B·T / Σ min(n_u, 4); "
        "q·T = each mode's own passes at its chosen cap. Advisor: its prediction, written before the cell's runs "
        "(ELS/ULS = ratio of the update SNRs of each mode's best cap; *close* = within 1.25×).",
        "", "**Compute (epochs) × ε** (synthetic users, independent examples):", "", main_table(main_rows)]
    if div_rows:
        parts += ["", "**Within-user similarity** (`data.example-similarity` 0 / 0.8 / 0.95; ε = 4):", "",
                  main_table(div_rows)]
    if real:
        shakes, smol = ([r for r in real if r["cell"]["sim"] == s] for s in ("shakespeare", "smollm2"))
        parts += ["", f"**Real users** (Shakespeare: byte-level tiny LM, {setting(shakes)}; SmolLM2-135M + LoRA, "
                  f"{setting(smol)}, lr fixed at 0.02, caps 1 / 8, seeds 0–1 (df = 1)):", "", main_table(real)]
    synth = [r for r in rows if r["cell"]["sim"] in ("independent", "mixed", "near-copies")]
    parts += ["", sign_tests(synth), "", rate, ""]
    parts += [f"- miss: {m}" for m in misses] or ["- no misses"]
    found = checks(done)
    if found:
        parts += ["", "Checks of decided gaps (the other mode's tuned configuration kept):", ""]
        parts += [f"- {c}" for c in found]
    parts += ["", "Pilot cosines to the mean gradient at the starting weights (c_E: one example; c_U(G): a user's "
              "mean over G examples; a(G) = c_U(G) / c_E(G), the averaging gain):", "", pilot_table(predicted),
              "", "Tuning choices (the lrs run at the chosen cap and the caps run at the chosen lr; every other point did "
              "worse on the tuning seed), and the smallest clipped fraction of any round of the reporting runs:", "", edges_table(rows),
              "", "Where training starts and where it gets without noise: *start* = the held-out loss of the "
              "initial weights (step 0, the runs' own evaluation and held-out rows; seed 0, and mean ± sd over the "
              "reporting seeds, whose held-out users and initialisation differ); σ = 0 = a run without noise (cap 4, "
              f"lr 0.02, seed 0, the cell's T):", "", references(done, starting_losses(populations)),
              "", "![ELS − ULS against epochs](crossover/elsvsuls.png)"]
    text = "\n".join(parts) + "\n"
    (HERE / "results.md").write_text(text)
    curve = advisor_curve(predicted)
    figure(rows, curve, HERE / "elsvsuls.png")
    readme = README.read_text()
    start, end = "<!-- crossover:start -->", "<!-- crossover:end -->"
    if start in readme and end in readme:
        before, rest = readme.split(start, 1)
        page = text.replace("](crossover/elsvsuls.png)", "](../figures/crossover/elsvsuls.png)")  # docs/figures/
        README.write_text(before + start + "\n" + page + end + rest.split(end, 1)[1])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
