"""Table and plots of the LLM sweep, from `experiments/llm/runs/*/metrics.jsonl` only.

    python experiments/llm/report.py [--runs experiments/llm/runs]

Writes `experiments/llm/results.md` (the table), `experiments/llm/eval_loss.png`
(held-out loss vs round, one panel per ε, ULS and ELS, with the non-private and
no-fine-tuning baselines) and replaces the generated part of the "LLM
fine-tuning (SmolLM2-135M, Shakespeare users)" results page, docs/results/llm.md
(between the `llm-table` markers; the rest of the file is left as it is).
A run that has not finished yet is shown with the rounds it has.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "docs" / "results" / "llm.md"  # the study's results page
SECTION = "# LLM fine-tuning (SmolLM2-135M, Shakespeare users)"
START, END = "<!-- llm-table:start -->", "<!-- llm-table:end -->"
ORDER = ["base_model", "nonprivate", "uls_eps1", "els_eps1", "uls_eps4", "els_eps4", "uls_eps16", "els_eps16"]


def read(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill mid-write
    return out


def load_runs(runs: Path) -> dict[str, list[dict]]:
    found = {p.parent.name: read(p) for p in sorted(runs.glob("*/metrics.jsonl"))}
    names = [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]
    return {n: sorted(found[n], key=lambda r: r["round"]) for n in names if found[n]}


def target_eps(name: str) -> float | None:
    m = re.search(r"eps([0-9.]+)$", name)
    return float(m.group(1)) if m else None


def summarize(name: str, recs: list[dict]) -> dict:
    evals = [r for r in recs if r.get("eval_loss") is not None]
    last = recs[-1]
    final = evals[-1] if evals else None
    eps = last.get("epsilon")
    return {"name": name, "mode": last.get("mode"), "rounds": last["round"],
            "epsilon": eps if eps is not None else math.inf, "delta": last.get("delta"),
            "sigma": last.get("noise_multiplier"), "eval_round": final["round"] if final else None,
            "eval_loss": final["eval_loss"] if final else None,
            "examples": sum(int(r.get("examples_processed") or 0) for r in recs),
            "clipped": [r.get("clipped_fraction") for r in recs if r.get("clipped_fraction") is not None],
            "curve": [(r["round"], r["eval_loss"]) for r in evals]}


def fmt(x, spec=".4f") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return format(x, spec)


def table(rows: list[dict], base: float | None) -> str:
    lines = ["| config | mode | rounds | ε (δ = 1e-5) | σ | examples seen | held-out loss | perplexity | Δ loss vs base |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = r["eval_loss"]
        delta = None if (loss is None or base is None or r["name"] == "base_model") else loss - base
        mode = "–" if r["mode"] == "none" else r["mode"].upper()
        eps = "0 (no training)" if r["name"] == "base_model" else fmt(r["epsilon"], ".3g")
        lines.append(f"| {r['name']} | {mode} | {r['rounds']} | {eps} | {fmt(r['sigma'], '.3g')} | {r['examples']} | "
                     f"{fmt(loss)} | {fmt(None if loss is None else math.exp(loss), '.1f')} | "
                     f"{fmt(delta, '+.4f')} |")
    return "\n".join(lines)


def seed_table(runs: Path, main_rows: list[dict]) -> str:
    """Configs re-run under other seeds (`run.py --set seed=S --runs runs/seedS`): Δ loss vs that seed's base model.

    The seed also draws the held-out users, so losses are compared with the same seed's base model only.
    """
    per_seed = {"seed0": main_rows}
    for d in sorted(runs.glob("seed*/")):
        per_seed[d.name] = [summarize(n, recs) for n, recs in load_runs(d).items()]
    if len(per_seed) < 2:
        return ""
    names = [n for n in ORDER if any(r["name"] == n for rows in list(per_seed.values())[1:] for r in rows)
             and n != "base_model"]
    lines = ["| config | " + " | ".join(f"{s}: loss (Δ vs base)" for s in per_seed) + " |",
             "|---|" + "---|" * len(per_seed)]
    for n in names:
        cells = []
        for rows in per_seed.values():
            by = {r["name"]: r for r in rows}
            r, b = by.get(n), by.get("base_model")
            if r is None or r["eval_loss"] is None:
                cells.append("–")
                continue
            d = f" ({r['eval_loss'] - b['eval_loss']:+.4f})" if b and b["eval_loss"] is not None else ""
            cells.append(f"{r['eval_loss']:.4f}{d}" + ("" if r["rounds"] >= max(x["rounds"] for x in main_rows)
                                                        else f" [r{r['rounds']}]"))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], base: float | None, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["name"]: r for r in rows}
    epss = sorted({target_eps(n) for n in by if target_eps(n) is not None})
    fig, axes = plt.subplots(1, max(1, len(epss)), figsize=(4.2 * max(1, len(epss)), 3.6), sharey=True, squeeze=False)
    for ax, eps in zip(axes[0], epss or [None]):
        for mode, color in (("uls", "tab:blue"), ("els", "tab:orange")):
            r = by.get(f"{mode}_eps{eps:g}") if eps is not None else None
            if r and r["curve"]:
                pts = ([(0, base)] if base is not None else []) + r["curve"]
                ax.plot(*zip(*pts), "o-", color=color, label=f"{mode.upper()} ε={eps:g}")
        if "nonprivate" in by and by["nonprivate"]["curve"]:
            pts = ([(0, base)] if base is not None else []) + by["nonprivate"]["curve"]
            ax.plot(*zip(*pts), "s--", color="tab:green", label="non-private (σ=0)")
        if base is not None:
            ax.axhline(base, color="gray", ls=":", label="no fine-tuning")
        ax.set_title(f"ε = {eps:g}, δ = 1e-5" if eps is not None else "")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("held-out loss (nats/token)")
    fig.suptitle("SmolLM2-135M + LoRA on Shakespeare users: ULS vs ELS at matched compute", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def update_readme(body: str) -> None:
    text = README.read_text() if README.exists() else "# Experiments\n"
    block = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    elif SECTION in text:
        at = text.index(SECTION) + len(SECTION)
        text = text[:at] + "\n\n" + block + text[at:]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    README.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(HERE / "runs"))
    ap.add_argument("--no-readme", action="store_true")
    a = ap.parse_args(argv)
    runs = load_runs(Path(a.runs))
    rows = [summarize(n, recs) for n, recs in runs.items()]
    base = next((r["eval_loss"] for r in rows if r["name"] == "base_model"), None)
    tab = table(rows, base)
    png = plot(rows, base, HERE / "eval_loss.png")
    seeds = seed_table(Path(a.runs), rows)
    if seeds:
        tab += "\n\nOther seeds (the seed also draws the 64 held-out users; Δ is against that seed's base model):\n\n" + seeds
    (HERE / "results.md").write_text("# LLM sweep results (generated by report.py)\n\n" + tab + "\n")
    print(tab)
    print(f"wrote {HERE / 'results.md'}, {png}")
    if not a.no_readme:
        update_readme("Generated by `python experiments/llm/report.py` from `runs/*/metrics.jsonl` "
                      "(loss at the last evaluated round):\n\n" + tab + "\n\n![held-out loss vs round](../figures/llm/eval_loss.png)")
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
