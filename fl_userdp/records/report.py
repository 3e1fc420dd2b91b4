"""Per-round records (JSONL), summaries, the compare plot and the side-by-side table.

What the DP guarantee covers is labelled in every output. A round's record
has two parts:

* **the release** (`COVERED`): round, mode, ε, δ, σ, C, the expected count
  (a function of q and the population size, treated as public as in
  DP-SGD), the stop reason, and the held-out loss (the released weights
  evaluated on held-out users, who are not training users);
* **diagnostics** (everything else: training loss of the sampled users,
  cohort and reply counts, clipped fraction, failures, wall time) — computed
  from training users' data *without noise*, outside the guarantee.

`metrics.jsonl` nests the second part under `"diagnostics"`; `summary.json`
and `summary.md` carry a `guarantee` statement and per-mode diagnostics in
their own group; the plot and the console table show diagnostics only when
they are published. With `privacy.publish-diagnostics = false` no output holds
them. Keys not listed in `COVERED` are diagnostics by default.

Pure: the standard library and numpy only at import; `rich` and `matplotlib`
are imported inside the functions that draw. Plots and tables read only the
records (what `metrics.jsonl` holds), never live objects.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ConfigError

METRICS = "metrics.jsonl"
DIAGNOSTICS = "diagnostics"
COVERED = ("round", "mode", "epsilon", "delta", "noise_multiplier", "clip_norm", "expected_count", "eval_loss",
           "stop_reason", "unclipped_fraction", "next_clip_norm",  # these two: adaptive clipping's noised count
           "private_train_loss", "private_clipped_fraction",  # privacy.private-loss: noised and accounted
           "run_id")  # random (fl_userdp.records.release_log.new_run_id), names the run the record belongs to
GUARANTEE = ("user-level (epsilon, delta)-DP, each mode at its own epsilon (epsilon_all_modes: all modes of the "
             "folder together), covers the weights and checkpoints, the release log, and in "
             "metrics/summary/plot/console: round, mode, epsilon, delta, noise_multiplier, clip_norm, "
             "expected_count, stop_reason, eval_loss (held-out users) and, with privacy.private-loss, "
             "private_train_loss and private_clipped_fraction (noised, accounted); everything under 'diagnostics' is "
             "computed from training users' data without noise and is OUTSIDE the guarantee")
LIMITS = ("it protects the training users (after the held-out split and the data.num-users cap); the population "
          "size and n_k = sum min(n_u, k) are treated as public; when a run stops on node failures or restarts "
          "its engine, that point depends on failures and is outside the guarantee")
SEEDED = ("SEEDED run (reproducible): its cohorts and noise derive from the seed recorded in these outputs, so "
          "the guarantee holds only against someone who does not know that seed, and runs sharing a seed share "
          "cohorts; for outputs meant to be released use privacy.secure-mode=true")
SECURE = "secure mode: cohorts and noise were drawn from the operating system's CSPRNG, not from the seed"


BANDED = ("BANDED noise (privacy.mechanism 'bandmf'): the checkpoints (checkpoint-<mode>.npz) and "
          "secret-noise-<mode>/ hold past noise, which with the releases gives back the clipped sums: they are "
          "SECRET, not covered; keep them private and publish only the other outputs")


GUARANTEE_DOCS = "docs/concepts.md#what-the-guarantee-covers"  # where the statement is explained in full


def guarantee(publish_diagnostics: bool = True, secure_mode: bool = False, banded: bool = False) -> str:
    """The full guarantee statement: summary.json's `guarantee` and the end of summary.md."""
    head = GUARANTEE if publish_diagnostics else GUARANTEE.split("; everything")[0] + "; no diagnostics were published"
    if banded:
        head = head.replace("the weights and checkpoints,", "the weights,")
    return f"{head}. Limits: {LIMITS}. {SECURE if secure_mode else SEEDED}." + (f" {BANDED}." if banded else "")


def eps_up(value: float | None, digits: int = 4) -> str:
    """ε for a person to read, rounded *up* to `digits` significant digits (never below the ledger's value);
    None or infinite -> "inf"."""
    if value is None or not math.isfinite(value):
        return "inf"
    if value <= 0:
        return "0"
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return f"{math.ceil(value * scale) / scale:.{digits}g}"


def guarantee_line(epsilons: dict[str, float | None], delta: float | None, epsilon_all_modes: float | None = None,
                   publish_diagnostics: bool = True, secure_mode: bool = False, banded: bool = False,
                   seed: int | None = None) -> str:
    """The guarantee in one line, shown at the end of a run and at the top of summary.md: the modes and their ε
    (and all modes together), δ, what is covered, whether diagnostics are published outside it, seeded or
    secure, and where the full statement is (`guarantee`)."""
    eps = ", ".join(f"{mode.upper()} ε = {eps_up(e)}" for mode, e in epsilons.items()) or "no release"
    if epsilon_all_modes is not None and len(epsilons) > 1:
        eps += f", all modes together ε = {eps_up(epsilon_all_modes)}"
    at = "" if delta is None else f" at δ = {delta:g}"
    covered = ("the weights, release log and released fields (checkpoints and secret-noise-<mode>/ are SECRET)"
               if banded else "the weights, checkpoints, release log and released fields")
    diag = "diagnostics outside" if publish_diagnostics else "no diagnostics published"
    rand = "secure (OS randomness)" if secure_mode else \
        f"seeded{'' if seed is None else f' (seed {seed})'}: research only, the seed is the noise's key"
    return (f"guarantee: user-level (ε, δ)-DP{at} (add or remove one user): {eps}; covers {covered}; {diag}; "
            f"{rand}; full statement: summary.json 'guarantee', {GUARANTEE_DOCS}")


def split_record(record: dict[str, Any], publish_diagnostics: bool = True) -> dict[str, Any]:
    """A flat record as written: covered keys at the top, the rest under "diagnostics" (or dropped)."""
    top = {k: _clean(v) for k, v in record.items() if k in COVERED}
    diag = {k: _clean(v) for k, v in record.items() if k not in COVERED and k != DIAGNOSTICS}
    diag.update(record.get(DIAGNOSTICS) or {})
    if publish_diagnostics and diag:
        top[DIAGNOSTICS] = diag
    return top


def flat_record(line: dict[str, Any]) -> dict[str, Any]:
    """A record as read: the "diagnostics" group merged back into the top level (for tables and plots)."""
    out = {k: v for k, v in line.items() if k != DIAGNOSTICS}
    out.update(line.get(DIAGNOSTICS) or {})
    return out


# -- records -------------------------------------------------------------------
def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return _clean(value.item())
    return value


def append_record(path: str | Path, record: dict[str, Any], publish_diagnostics: bool = True) -> None:
    """Append one record as a JSON line, labelled (`split_record`; non-finite floats become null)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(split_record(record, publish_diagnostics), sort_keys=False) + "\n")
        fh.flush()


def _complete_record(path: Path, number: int, line: str) -> dict[str, Any]:
    """One complete line of metrics.jsonl; a damaged one is refused (ConfigError naming the folder, `out`)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError("out", str(path), f"holds a damaged {path.name} (line {number} is not JSON: {err.msg})") \
            from None
    if not isinstance(record, dict):
        raise ConfigError("out", str(path), f"holds a damaged {path.name} (line {number} is not a JSON object)")
    return record


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All records, flat (`flat_record`); a last line cut short by a crash mid-write is skipped."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text(encoding="utf-8").split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    records = [_complete_record(p, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if tail.strip():
        try:
            records.append(json.loads(tail))
        except json.JSONDecodeError:
            pass
    return [flat_record(r) for r in records]


def _write_records(p: Path, records: Iterable[dict[str, Any]], publish_diagnostics: bool = True) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(split_record(r, publish_diagnostics)) + "\n" for r in records)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def keep_records(path: str | Path, mode: str, up_to_round: int, publish_diagnostics: bool = True
                 ) -> list[dict[str, Any]]:
    """Drop `mode`'s records after `up_to_round` (a fresh start keeps none), duplicates of a round, and any
    line cut short by a crash; rewrite atomically. Leaves at most one record per round up to `up_to_round`."""
    p = Path(path)
    kept, seen = [], set()
    for r in read_records(p):
        if r.get("mode") == mode:
            rnd = int(r.get("round", 0))
            if rnd > up_to_round or rnd in seen:
                continue
            seen.add(rnd)
        kept.append(r)
    _write_records(p, kept, publish_diagnostics)
    return [r for r in kept if r.get("mode") == mode]


def replace_mode_records(path: str | Path, mode: str, records: Sequence[dict[str, Any]],
                         publish_diagnostics: bool = True) -> None:
    """Rewrite the file with `mode`'s records replaced by `records` (other modes kept, in order)."""
    p = Path(path)
    others = [r for r in read_records(p) if r.get("mode") != mode]
    _write_records(p, [*others, *records], publish_diagnostics)


def by_mode(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["mode"], []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["round"])
    return out


# -- summary ---------------------------------------------------------------------
def summarize(records: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None,
              publish_diagnostics: bool = True, secure_mode: bool = False, banded: bool = False) -> dict[str, Any]:
    """Per mode: rounds, final/best eval loss, final ε at δ, σ; diagnostics (train loss, counts, clipped
    fraction, failures, wall time) in their own group, or left out."""
    modes = {}
    for mode, rows in by_mode(records).items():
        evals = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
        trains = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
        clipped = [r["clipped_fraction"] for r in rows if r.get("clipped_fraction") is not None]
        last = rows[-1]
        modes[mode] = {
            "rounds": len(rows), "final_eval_loss": evals[-1] if evals else None,
            "best_eval_loss": min(evals) if evals else None,
            "epsilon": last.get("epsilon"), "delta": last.get("delta"),
            "noise_multiplier": last.get("noise_multiplier"), "clip_norm": last.get("clip_norm"),
            "stop_reason": last.get("stop_reason"),
        }
        private = [r["private_train_loss"] for r in rows if r.get("private_train_loss") is not None]
        if private:  # noised and accounted: covered
            modes[mode]["final_private_train_loss"] = private[-1]
        if publish_diagnostics:
            modes[mode][DIAGNOSTICS] = {
                "final_train_loss": trains[-1] if trains else None,
                "mean_users_sampled": _mean(r.get("users_sampled") for r in rows),
                "mean_examples_processed": _mean(r.get("examples_processed") for r in rows),
                "mean_clipped_fraction": sum(clipped) / len(clipped) if clipped else None,
                "failures": sum(r.get("failures") or 0 for r in rows),
                "rejected": sum(r.get("rejected") or 0 for r in rows),
                "wall_time": sum(r.get("wall_time") or 0.0 for r in rows),
            }
    extra = dict(extra or {})
    delta = next((row["delta"] for row in modes.values() if row.get("delta") is not None), None)
    line = guarantee_line({m: row["epsilon"] for m, row in modes.items()}, delta, extra.get("epsilon_all_modes"),
                          publish_diagnostics, secure_mode, banded, None if secure_mode else extra.get("seed"))
    return {"guarantee_line": line, "guarantee": guarantee(publish_diagnostics, secure_mode, banded),
            "modes": modes, **extra}


def data_entry(data: dict[str, Any] | None, publish_diagnostics: bool = True) -> dict[str, Any] | None:
    """The summary's "data" (`fl_userdp.data.inventory.data_report`): source, users, the data.num-users cap;
    what loading dropped (counted from the users' files, no noise) under "diagnostics", or left out."""
    if data is None:
        return None
    entry = {k: v for k, v in data.items() if k != "dropped"}
    if publish_diagnostics and data.get("dropped") is not None:
        entry[DIAGNOSTICS] = {"dropped": data["dropped"]}
    return entry


def _data_markdown(entry: dict[str, Any]) -> str:
    from ..data.inventory import data_line

    return data_line({**entry, "dropped": (entry.get(DIAGNOSTICS) or {}).get("dropped")})


def _mean(values: Iterable[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    cols = ["rounds", "final_eval_loss", "best_eval_loss", "epsilon", "delta", "noise_multiplier", "stop_reason"]
    if any("final_private_train_loss" in row for row in summary["modes"].values()):
        cols.insert(3, "final_private_train_loss")
    diag_cols = ["final_train_loss", "mean_users_sampled", "mean_examples_processed", "mean_clipped_fraction",
                 "failures", "wall_time"]
    line = summary.get("guarantee_line") or guarantee_line(
        {m: row.get("epsilon") for m, row in summary["modes"].items()},
        next((row.get("delta") for row in summary["modes"].values()), None), summary.get("epsilon_all_modes"))
    lines = ["# fl-userdp run summary", "", line, ""]
    for key in ("command", "commit", "seed", "epsilon_all_modes", "stop_reasons"):
        if summary.get(key) not in (None, [], ""):
            lines.append(f"- {key}: {summary[key]}")
    if summary.get("data"):
        lines.append(f"- {_data_markdown(summary['data'])}")
    lines += ["", "## Release (covered by the DP guarantee)", "",
              "| mode | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for mode, row in summary["modes"].items():
        lines.append(f"| {mode} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    if any(DIAGNOSTICS in row for row in summary["modes"].values()):
        lines += ["", "## Diagnostics (outside the DP guarantee: training users' data, no noise)", "",
                  "| mode | " + " | ".join(diag_cols) + " |", "|---" * (len(diag_cols) + 1) + "|"]
        for mode, row in summary["modes"].items():
            diag = row.get(DIAGNOSTICS, {})
            lines.append(f"| {mode} | " + " | ".join(_fmt(diag.get(c)) for c in diag_cols) + " |")
    lines += ["", "## The guarantee in full", "", summary.get("guarantee", guarantee())]
    return "\n".join(lines) + "\n"


def write_summary(out: str | Path, summary: dict[str, Any]) -> None:
    out = Path(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))


# -- plot and table ------------------------------------------------------------------
def plot(records: Sequence[dict[str, Any]], path: str | Path, publish_diagnostics: bool = True) -> Path:
    """Loss vs round (eval solid; train dashed, labelled a diagnostic, only when published) and ε vs round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eps) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, rows in by_mode(records).items():
        r = [row["round"] for row in rows]
        ev = [(row["round"], row["eval_loss"]) for row in rows if row.get("eval_loss") is not None]
        tr = [(row["round"], row["train_loss"]) for row in rows
              if publish_diagnostics and row.get("train_loss") is not None]
        if ev:
            line, = ax_loss.plot(*zip(*ev), marker="o", ms=3, label=f"{mode.upper()} eval")
            color = line.get_color()
        else:
            color = None
        if tr:
            ax_loss.plot(*zip(*tr), ls="--", color=color, alpha=0.7, label=f"{mode.upper()} train (diagnostic)")
        ax_eps.plot(r, [row.get("epsilon") if row.get("epsilon") is not None else math.nan for row in rows],
                    marker="o", ms=3, color=color, label=mode.upper())
    delta = next((row.get("delta") for row in records), None)
    ax_loss.set(xlabel="round", ylabel="loss", title="loss vs round")
    if publish_diagnostics and any(r.get("train_loss") is not None for r in records):
        fig.text(0.01, 0.005, "train loss (dashed): a diagnostic outside the DP guarantee", fontsize=7, alpha=0.7)
    ax_eps.set(xlabel="round", ylabel="user-level ε" + (f" (δ={delta:g})" if delta else ""), title="ε vs round")
    for ax in (ax_loss, ax_eps):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def side_by_side(records: Sequence[dict[str, Any]], publish_diagnostics: bool = True):
    """A rich Table: one row per round, eval loss and ε of each mode side by side (and, when published, the
    diagnostics train loss, users and examples, marked *)."""
    from rich.table import Table

    modes = by_mode(records)
    title = "ULS vs ELS per round" if len(modes) > 1 else "per round"
    table = Table(title=title, caption="* diagnostics: training users' data without noise, outside the DP "
                  "guarantee" if publish_diagnostics else None)
    cols = ("train*", "eval", "ε", "users*", "ex.*") if publish_diagnostics else ("eval", "ε")
    table.add_column("round", justify="right")
    for mode in modes:
        for col in cols:
            table.add_column(f"{mode.upper()} {col}", justify="right")
    rounds = sorted({r["round"] for rows in modes.values() for r in rows})
    index = {(r["mode"], r["round"]): r for r in records}
    for rnd in rounds:
        cells = [str(rnd)]
        for mode in modes:
            r = index.get((mode, rnd), {})
            if publish_diagnostics:
                cells += [_fmt(r.get("train_loss"), ".3f"), _fmt(r.get("eval_loss"), ".3f"),
                          _fmt(r.get("epsilon"), ".3f"), _fmt(r.get("users_replied")),
                          _fmt(r.get("examples_processed"))]
            else:
                cells += [_fmt(r.get("eval_loss"), ".3f"), _fmt(r.get("epsilon"), ".3f")]
        table.add_row(*cells)
    return table
