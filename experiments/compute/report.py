#!/usr/bin/env python
"""The large-compute study's tests, tables and figure (reads only the result and prediction files).

    python experiments/compute/report.py [FOLDER]   # -> results.md, elsvsuls.png, docs/results/compute.md
                                                    # (FOLDER: read another copy's files, write there)

Implements PREREGISTERED.md (with its amendments): per cell the gap ELS − ULS of the final held-out loss,
paired by seed; H1a/H1b (slope of the gap against log₂ T, per ε), H2 (mean over T of gap(ε = 1) − gap(ε = 8)),
H3a/H3b (gap(independent) − gap(near-copies) per T) — one-sample t-tests over seeds, Holm over the family at
α = 0.05. A test runs on the seeds complete for it; the count is printed. Then the advisor's calls
(predictions.jsonl) against the decided cells (cell p < 0.05), per mode, with two baselines.
"""
from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.results_log import load  # noqa: E402

HERE = Path(__file__).resolve().parent
PAGE = HERE.parents[1] / "docs" / "results" / "compute.md"
ALPHA = 0.05


def report_rows(*paths: Path) -> dict:
    """{(corpus, eps, T): {mode: {seed: row}}} of the reporting runs."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        for key, row in load(path).items():
            if not key.startswith("report|"):
                continue
            _, corpus, mode, eps, steps, seed = key.split("|")
            out[corpus, float(eps[3:]), int(steps[1:])][mode][int(seed[4:])] = row
    return out


def gaps(cell: dict) -> dict[int, float]:
    """{seed: loss(ELS) − loss(ULS)} over the seeds both modes finished."""
    return {s: cell["els"][s]["eval_loss"] - cell["uls"][s]["eval_loss"] for s in sorted(cell["els"])
            if s in cell.get("uls", {})}


def ttest(values) -> dict:
    v = np.asarray(list(values), dtype=float)
    n = v.size
    if n < 2:
        return {"n": int(n), "mean": float(v.mean()) if n else math.nan, "se": math.nan, "t": math.nan,
                "p": math.nan, "df": n - 1}
    se = float(v.std(ddof=1) / math.sqrt(n))
    if se > 0:
        t = float(v.mean() / se)
        p = float(2 * stats.t.sf(abs(t), n - 1))
    else:                                       # no spread: decided only by a nonzero mean
        t = 0.0 if v.mean() == 0 else math.copysign(math.inf, v.mean())
        p = 1.0 if v.mean() == 0 else 0.0
    return {"n": int(n), "mean": float(v.mean()), "se": se, "t": t, "p": p, "df": n - 1}


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone) over the whole family: a test that could not run counts
    with p = 1."""
    pvalues = {k: (1.0 if math.isnan(v) else v) for k, v in pvalues.items()}
    names = sorted(pvalues, key=lambda k: pvalues[k])
    out, running, m = {}, 0.0, len(names)
    for i, k in enumerate(names):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        out[k] = running
    return out


def complete_seeds(cells: dict, keys: list[tuple]) -> list[int]:
    """Seed-complete seeds (PREREGISTERED.md; amendment 6): both modes finished in every cell of `keys`."""
    sets = [set(cells.get(k, {}).get(m, {})) for k in keys for m in ("uls", "els")]
    return sorted(set.intersection(*sets)) if sets else []


def family(cells: dict, steps=(25, 400), eps=(1.0, 8.0), div_steps=(25, 100), corpus: str = "shakespeare",
           diversity: bool = True) -> dict[str, dict]:
    """The pre-registered tests (amendment 4: T ∈ {25, 400}) on seed-complete seeds (every T and ε of the arm,
    both modes; for H3 both diversity levels at both T); Holm over the family's five (amendment 4: a test that
    cannot run — H3 on an arm without diversity cells — counts with p = 1)."""
    tests = {}
    seeds = complete_seeds(cells, [(corpus, e, t) for e in eps for t in steps])

    def gap(e, t, s):
        c = cells[(corpus, e, t)]
        return c["els"][s]["eval_loss"] - c["uls"][s]["eval_loss"]

    x = np.log2(steps)
    for label, e in (("H1a", eps[0]), ("H1b", eps[1])):
        slopes = [float(np.polyfit(x, [gap(e, t, s) for t in steps], 1)[0]) for s in seeds]
        tests[label] = {"what": f"slope of ELS − ULS against log2 T, ε = {e:g}", **ttest(slopes), "values": slopes}
    diffs = [float(np.mean([gap(eps[0], t, s) - gap(eps[1], t, s) for t in steps])) for s in seeds]
    tests["H2"] = {"what": "mean over T of gap(ε = 1) − gap(ε = 8)", **ttest(diffs), "values": diffs}
    div_seeds = complete_seeds(cells, [(d, 8.0, t) for d in ("independent", "near-copies") for t in div_steps])
    for label, t in zip(("H3a", "H3b"), div_steps):
        if not diversity:
            tests[label] = {"what": f"gap(independent) − gap(near-copies), T = {t}: not part of this arm",
                            **ttest([]), "values": []}
            continue
        gi, gn = gaps(cells[("independent", 8.0, t)]) if div_seeds else {}, \
            gaps(cells[("near-copies", 8.0, t)]) if div_seeds else {}
        d = [gi[s] - gn[s] for s in div_seeds]
        tests[label] = {"what": f"gap(independent) − gap(near-copies), T = {t}", **ttest(d), "values": d}
    adjusted = holm({k: v["p"] for k, v in tests.items()})
    for k, v in tests.items():
        v["p_holm"] = adjusted.get(k, math.nan)
        v["decided"] = bool(v["p_holm"] < ALPHA)
    return tests


BANDMF_ARM = "shakespeare-bmf16"      # amendment 5a


def bandmf_family(cells: dict, steps=(25, 400), eps=(1.0, 8.0)) -> dict[str, dict]:
    """Amendment 5a: H1a/H1b/H2 on the BandMF arm (both modes banded, b = 16) and, per mode, the mean over ε
    of loss(BandMF) − loss(independent, the matched-cap arm) at the largest T, paired by seed; Holm over the five."""
    tests = family(cells, steps, eps, corpus=BANDMF_ARM, diversity=False)
    tests = {f"{k}-bmf": v for k, v in tests.items() if not k.startswith("H3")}   # amendment 5a: five tests
    t = max(steps)
    seeds = complete_seeds(cells, [(a, e, tt) for a in (BANDMF_ARM, "shakespeare-cap4") for e in eps for tt in steps])
    for mode in ("uls", "els"):
        d = [float(np.mean([cells[(BANDMF_ARM, e, t)][mode][s]["eval_loss"]
                            - cells[("shakespeare-cap4", e, t)][mode][s]["eval_loss"] for e in eps])) for s in seeds]
        tests[f"M-{mode}"] = {"what": f"{mode.upper()}: loss(BandMF b 16) − loss(independent), T = {t}, mean over ε",
                              **ttest(d), "values": d}
    adjusted = holm({k: v["p"] for k, v in tests.items()})
    for k, v in tests.items():
        v["p_holm"] = adjusted[k]
        v["decided"] = bool(v["p_holm"] < ALPHA)
    return tests


def call_of(prediction: dict) -> str:
    """The advisor's call from a stored prediction, by the advisor's own rule (`too_close`; one algorithm when
    both best caps are 1)."""
    from fl_userdp.study.advisor import too_close
    interval = tuple(prediction["interval"]) if prediction.get("interval") else None
    same = prediction["els"]["cap"] == 1 and prediction["uls"]["cap"] == 1
    if too_close(prediction["margin"], interval, same):
        return "close"
    return "els" if prediction["margin"] > 1 else "uls"


def baseline_epochs(prediction: dict) -> str:
    return "uls" if prediction["uls_epochs_at_cap4"] >= 1 else "els"


CONSTRUCTED = ("few-users", "few-users-alike")   # cells built from the advisor's own model: consistency checks


def one_algorithm(cell: dict) -> bool:
    """Both modes' runs at cap 1: the same privacy event and step distribution (amendment 4)."""
    caps = {m: next(iter(cell[m].values()))["config"]["privacy.max-examples-per-user"] for m in ("els", "uls")}
    return caps["els"] == 1 and caps["uls"] == 1


def hit_rates(cells: dict, predictions: dict, constructed: bool = False) -> dict:
    """On the decided cells (cell p < ALPHA; one-algorithm cells left out), each caller's firm calls per mode:
    (right, made), and how many decided cells it abstained on. `constructed`: only the cells built for the
    advisor, else only the others."""
    callers = {"advisor": call_of, "uls once q·T ≥ 1": baseline_epochs, "always uls": lambda p: "uls"}
    out = {name: {"els": [0, 0], "uls": [0, 0], "abstained": 0, "decided": 0} for name in callers}
    for (corpus, e, t), cell in cells.items():
        if (corpus in CONSTRUCTED) != constructed or corpus.endswith(("-cap4", "-bmf16")) or one_algorithm(cell):
            continue
        pred = predictions.get(f"predict|{corpus}|eps{e:g}|T{t}")
        stat = ttest(gaps(cell).values())
        if pred is None or not stat["p"] < ALPHA:
            continue
        truth = "els" if stat["mean"] < 0 else "uls"
        for name, caller in callers.items():
            call = caller(pred)
            out[name]["decided"] += 1
            if call in ("els", "uls"):
                out[name][call][1] += 1
                out[name][call][0] += int(call == truth)
            else:
                out[name]["abstained"] += 1
    return out


def rate_text(right: int, made: int) -> str:
    if not made:
        return "0 / 0"
    ci = stats.binomtest(right, made).proportion_ci(0.95)
    return f"{right} / {made} (95% CI {ci.low:.2f}–{ci.high:.2f})"


def main(folder: Path = HERE) -> int:
    results = [folder / "results.jsonl", folder / "diversity.jsonl", folder / "advisor_cells.jsonl",
               folder / "bandmf.jsonl"]
    cells = report_rows(*[p for p in results if p.exists()])
    predictions = load(folder / "predictions.jsonl") if (folder / "predictions.jsonl").exists() else {}
    refs = {k: v for p in results if p.exists() for k, v in load(p).items() if k.startswith("reference|")}
    warm = json.loads((HERE / "warm_base.json").read_text())
    start = json.loads((HERE / "start_loss.json").read_text()) if (HERE / "start_loss.json").exists() else {}
    tests = family(cells)
    matched = family(cells, corpus="shakespeare-cap4", diversity=False)
    banded = bandmf_family(cells)
    lines = ["# ELS or ULS under large compute — results", "",
             "Generated by `python experiments/compute/report.py` from results.jsonl, advisor_cells.jsonl and "
             "predictions.jsonl; the design and tests are in PREREGISTERED.md.", "",
             f"Starting model: the warm start on the poems ({warm['public_tokens']:,} tokens); held-out loss as the runs "
             f"measure it {start.get('0', math.nan):.4f} (split 0, reporting) and {start.get('1', math.nan):.4f} (split 1, "
             f"tuning), {warm['heldout_loss_random']:.3f} from random weights (`warm_start.py --start-loss`).", ""]
    for title, fam in (("Pre-registered tests, tuned arm (Holm over the five, α = 0.05)", tests),
                       ("The same tests, matched-cap arm k = G = 4 (Holm over its five, α = 0.05; H3 does not run here)", matched),
                       ("The BandMF arm (b = 16, matched caps; Holm over its five, α = 0.05; amendment 5a)", banded)):
        lines += [f"## {title}", "", "| test | statistic | seeds | mean | se | t (df) | p | p (Holm) | outcome |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k, v in fam.items():
            way = (("independent better" if v["mean"] > 0 else "BandMF better") if k.startswith("M-") else
                   ("positive (as the claim predicts)" if v["mean"] > 0 else "negative (against the claim)"))
            outcome = ("decided: " + way) if v["decided"] else ("not run" if v["n"] < 2 else "not decided")
            if v["n"] < 2:
                lines.append(f"| {k} | {v['what']} | {v['n']} | — | — | — | — | {v['p_holm']:.3g} | {outcome} |")
                continue
            lines.append(f"| {k} | {v['what']} | {v['n']} | {v['mean']:+.4f} | {v['se']:.4f} | {v['t']:.2f} ({v['df']}) | "
                         f"{v['p']:.3g} | {v['p_holm']:.3g} | {outcome} |")
        lines.append("")
    lines += ["## Cells (gap = ELS − ULS held-out loss, paired by seed; positive: ULS better; "
              "\"one algorithm\": both modes at cap 1)", "",
              "| corpus | ε | T | ULS loss | ELS loss | gap | se | p (df) | ULS cap / lr / C | ELS cap / lr / C | "
              "epochs ULS / ELS | advisor (ELS/ULS score, interval) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (corpus, e, t), cell in sorted(cells.items()):
        g = gaps(cell)
        st = ttest(g.values())
        u = [cell["uls"][s]["eval_loss"] for s in g]
        el = [cell["els"][s]["eval_loss"] for s in g]

        def knobs(mode):
            c = next(iter(cell[mode].values()))["config"]
            return f"{c['privacy.max-examples-per-user']} / {c['train.server-lr']:g} / {c['privacy.clip-norm']:g}"

        def epochs(mode):
            return next(iter(cell[mode].values()))["epochs"]

        pred = predictions.get(f"predict|{corpus}|eps{e:g}|T{t}")
        ptxt = "—" if pred is None else (f"{call_of(pred)} ({pred['margin']:.3g}"
                                          + (f", [{pred['interval'][0]:.3g}, {pred['interval'][1]:.3g}]" if pred["interval"] else "") + ")")
        name = corpus + (" (one algorithm)" if one_algorithm(cell) else "")
        lines.append(f"| {name} | {e:g} | {t} | {np.mean(u):.4f} | {np.mean(el):.4f} | {st['mean']:+.4f} | {st['se']:.4f} | "
                     f"{st['p']:.3g} ({st['df']}) | {knobs('uls')} | {knobs('els')} | {epochs('uls'):.3g} / {epochs('els'):.3g} | {ptxt} |")
    if refs:
        lines += ["", "σ = 0 references (seed 0, ε = 8's choices): " + ", ".join(
            f"{k.split('|')[2].upper()} T = {k.split('|')[3][1:]}: {v['eval_loss']:.4f}" for k, v in sorted(refs.items()))]
    for label, constructed in (("cells not built for it", False), ("cells built from its own model (consistency checks)", True)):
        rates = hit_rates(cells, predictions, constructed)
        lines += ["", f"## The advisor on decided cells (cell p < 0.05, one-algorithm cells left out): {label}", "",
                  "| caller | decided cells | firm ELS calls right / made | firm ULS calls right / made | abstained |",
                  "|---|---|---|---|---|"]
        for name, d in rates.items():
            lines.append(f"| {name} | {d['decided']} | {rate_text(*d['els'])} | {rate_text(*d['uls'])} | {d['abstained']} |")
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    plot(cells, predictions, folder)
    if folder.resolve() == Path(__file__).resolve().parent:     # the study's own files: its docs page too
        PAGE.write_text(page(tests, matched, cells, lines, banded, hit_rates(cells, predictions, False)))
    print("\n".join(lines))
    return 0


CLAIMS = {"H1a": "ULS gains on ELS with more steps (ε = 1)", "H1b": "ULS gains on ELS with more steps (ε = 8)",
          "H2": "ULS gains on ELS at stronger privacy", "H3a": "ULS gains on ELS with diverse users (T = 25)",
          "H3b": "ULS gains on ELS with diverse users (T = 100)",
          "H1a-bmf": "with banded noise, ULS gains on ELS with more steps (ε = 1)",
          "H1b-bmf": "with banded noise, ULS gains on ELS with more steps (ε = 8)",
          "H2-bmf": "with banded noise, ULS gains on ELS at stronger privacy",
          "M-uls": "ULS: banded noise (b = 16) changes the loss against independent noise at T = 400",
          "M-els": "ELS: banded noise (b = 16) changes the loss against independent noise at T = 400"}


def verdict(name: str, v: dict) -> str:
    """One sentence per test, whichever way it went."""
    claim = CLAIMS[name]
    if v["n"] < 2:
        return f"**{name}** — {claim}: not run (fewer than 2 complete seeds)."
    stat = f"mean {v['mean']:+.4f} ± {v['se']:.4f} (se), t = {v['t']:.2f}, df {v['df']}, Holm p = {v['p_holm']:.3g}"
    if not v["decided"]:
        return f"**{name}** — {claim}: not decided ({stat})."
    way = "in the direction the paper's claim predicts" if v["mean"] > 0 else "against the paper's claim"
    if name.startswith("M-"):
        way = "independent noise better" if v["mean"] > 0 else "banded noise better"
    return f"**{name}** — {claim}: decided, {way} ({stat})."


def page(tests: dict, matched: dict, cells: dict, tables: list[str], banded: dict | None = None,
         rates: dict | None = None) -> str:
    """docs/results/compute.md: regime, verdicts generated from the tests, the tables and the figure."""
    seeds = min((v["n"] for k, v in tests.items() if k.startswith(("H1", "H2"))), default=0)
    div_seeds = min((v["n"] for k, v in tests.items() if k.startswith("H3")), default=0)
    one = sorted(f"{c} ε {e:g} T {t}" for (c, e, t), cell in cells.items()
                 if c in ("shakespeare", "independent", "near-copies") and one_algorithm(cell))
    m400 = {e: ttest(gaps(cells[("shakespeare-cap4", e, 400)]).values())["mean"] for e in (1.0, 8.0)
            if ("shakespeare-cap4", e, 400) in cells}
    m_all = [ttest(gaps(cell).values())["mean"] for (c, e, t), cell in cells.items() if c == "shakespeare-cap4"]
    advisor = (rates or {}).get("advisor", {})
    out = ["# ELS or ULS under large compute (experiments/compute)", "",
           "> **Regime.** Shakespeare's users (1,289 training users, fixed across seeds) on the tiny LM + LoRA "
           "warm-started on Shakespeare's poems, B = 32 expected examples per step, T ∈ {25, 400} steps (up to 2.7 "
           f"epochs at cap 4), ε = 1 and 8 at δ = 1e-6, each mode tuned on a separate split; {seeds} seed-complete "
           f"reporting seeds (diversity contrast: {div_seeds}). Far from the paper's regime (cohorts of thousands, large batches): at B = 32 the "
           "tuning chose cap 1 for both modes in most cells, where the two modes are one algorithm.", "",
           "Generated by `python experiments/compute/report.py`; the design, the tests and every amendment were "
           "committed before the reporting rows they govern: [the pre-registration](compute-preregistered.md). "
           "Epochs count passes over the capped examples (Σ min(n_u, k)); for BandMF runs q is the rate within "
           "the round's cyclic group.", "",
           "## Verdicts (tuned arm: the pre-registered family)", ""]
    out += [f"- {verdict(k, v)}" for k, v in tests.items()]
    out += ["", "## Verdicts (matched-cap arm, k = G = 4)", ""]
    out += [f"- {verdict(k, v)}" for k, v in matched.items() if v["n"] >= 2]
    if m400:
        out += [f"- Sign of the matched arm's gap (ELS − ULS) at T = 400: " + ", ".join(
            f"ε = {e:g}: {g:+.4f} ({'ULS' if g > 0 else 'ELS'} better)" for e, g in m400.items())
            + f"; ELS has the lower loss in {sum(g < 0 for g in m_all)} of its {len(m_all)} cells, so a positive "
            "H2 means ELS's lead shrinks at ε = 1, not that ULS wins."]
    if banded:
        out += ["", "## Verdicts (BandMF arm, b = 16, matched caps: amendment 5a)", "",
                "The matched-cap arm's runs with banded noise over 16 cyclic groups (within-group rate 16× the "
                "independent one, the same B): the σ a target ε needs is that of ⌈T/16⌉ participations at that rate.",
                ""]
        out += [f"- {verdict(k, v)}" for k, v in banded.items()]
        out += ["- The BandMF arm reuses the learning rates tuned for independent noise, at T ≤ 400 and b = 16 (at "
                "most 25 participations of a group, within-group rate 0.109 against 0.0068): its verdicts hold for "
                "this regime and learning rate, not for correlated noise in general (the utility table "
                "of `experiments/bandmf/utility.py` tunes the lr per mechanism and runs to 10 epochs)."]
    out += ["", "## Limitations", "",
            "Written after the first results (commit 422dac6) and revised after a referee's review of the study.", "",
            f"- Tests run on seed-complete seeds only ({seeds} of the 6 planned for the Shakespeare arms, "
            f"{div_seeds} for the diversity contrast), never a seed dropped for its result.",
            f"- One algorithm (both modes at cap 1) in: {', '.join(one) or 'none'}. There the tuned arm's H1b, H2 "
            "and H3 do not test the paper's claims; H3 compares ELS at the cap its tuning chose with ULS at cap 1 "
            "where those differ, not only how alike a user's examples are.",
            "- ELS's cap 1 against cap 4 at T = 400 was decided by 0.001–0.002 nats on one tuning seed, below the "
            "seed-to-seed standard deviation (0.001–0.004 nats): the tuned arm's cap choices are close calls.",
            "- T ≤ 400 (at most 2.7 epochs at cap 4, 9.9 at cap 1); H1 is the contrast (gap(400) − gap(25)) / 4.",
            "- The diversity and few-users cells start from random weights and tune only the cap; their losses stay "
            "near or above ln 128, so they say little about fine-tuning. The pre-registered few-users cell "
            "(amendment 1) has a prediction but was not run (cut for CPU).",
            "- The advisor's Shakespeare predictions were made after the tuning rows existed (not blind); the "
            "few-users-alike prediction was made after its reporting seeds 0–4 had run. The held-out corpus gives "
            "one cell that can be scored (its ε = 8 cell is one algorithm), with 3 seeds. On the decided cells not "
            f"built for it the advisor made {advisor.get('els', [0, 0])[1] + advisor.get('uls', [0, 0])[1]} firm "
            f"call(s) and abstained on {advisor.get('abstained', 0)} of {advisor.get('decided', 0)}; its interval "
            "covers pilot noise only.",
            "", "![ELS − ULS against steps](../figures/compute/elsvsuls.png)", ""]
    out += [line.replace("# ELS or ULS under large compute — results", "## Tables") if line.startswith("# ") else
            ("#" + line if line.startswith("## ") else line) for line in tables]
    return "\n".join(out) + "\n"


def plot(cells: dict, predictions: dict, folder: Path = HERE) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax2 = ax.twinx()
    for e, color in ((1.0, "tab:red"), (8.0, "tab:blue")):
        ts = sorted(t for (c, ee, t) in cells if c == "shakespeare" and ee == e)
        if not ts:
            continue
        st = [ttest(gaps(cells["shakespeare", e, t]).values()) for t in ts]
        ax.errorbar(ts, [s["mean"] for s in st], yerr=[1.96 * s["se"] if s["n"] > 1 else 0 for s in st], color=color,
                    marker="o", capsize=3, label=f"measured ELS − ULS, ε = {e:g}")
        preds = [predictions.get(f"predict|shakespeare|eps{e:g}|T{t}") for t in ts]
        pts = [(t, p) for t, p in zip(ts, preds) if p]
        if pts:
            ax2.plot([t for t, _ in pts], [-math.log(p["margin"]) for _, p in pts], color=color, ls="--",
                     label=f"advisor −ln(score ELS/ULS), ε = {e:g}")
            band = [(t, p["interval"]) for t, p in pts if p["interval"]]
            if band:
                ax2.fill_between([t for t, _ in band], [-math.log(i[1]) for _, i in band],
                                 [-math.log(i[0]) for _, i in band], color=color, alpha=0.12)
    ax.axhline(0, color="grey", lw=0.8)
    for a in (ax, ax2):                       # both axes symmetric about 0: the zeros line up (only signs compare)
        lo, hi = a.get_ylim()
        m = max(abs(lo), abs(hi), 1e-9)
        a.set_ylim(-m, m)
    ax.set_xscale("log")
    ax.set_xlabel("steps T (B = 32, the same 1,289 users)")
    ax.set_ylabel("held-out loss ELS − ULS (> 0: ULS better)")
    ax2.set_ylabel("advisor: −ln(score ELS / ULS) (> 0: ULS)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    ax.set_title("Shakespeare, warm start: ELS − ULS against steps")
    fig.tight_layout()
    fig.savefig(folder / "elsvsuls.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
