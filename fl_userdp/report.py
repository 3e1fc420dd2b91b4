"""Per-round records (JSONL), summaries, the compare plot and the side-by-side table.

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

METRICS = "metrics.jsonl"


# -- records -------------------------------------------------------------------
def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return _clean(value.item())
    return value


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line (non-finite floats become null)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=False) + "\n")
        fh.flush()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All records; a last line cut short by a crash mid-write (no newline, not JSON) is skipped."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text(encoding="utf-8").split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    records = [json.loads(line) for line in lines if line.strip()]
    if tail.strip():
        try:
            records.append(json.loads(tail))
        except json.JSONDecodeError:
            pass
    return records


def _write_records(p: Path, records: Iterable[dict[str, Any]]) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def keep_records(path: str | Path, mode: str, up_to_round: int) -> list[dict[str, Any]]:
    """Drop `mode`'s records after `up_to_round` (a fresh start keeps none) and any line cut short by a
    crash; rewrite atomically. On resume this leaves exactly one record per round up to the checkpoint."""
    p = Path(path)
    records = read_records(p)
    kept = [r for r in records if r.get("mode") != mode or int(r.get("round", 0)) <= up_to_round]
    _write_records(p, kept)
    return [r for r in kept if r.get("mode") == mode]


def replace_mode_records(path: str | Path, mode: str, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite the file with `mode`'s records replaced by `records` (other modes kept, in order)."""
    p = Path(path)
    others = [r for r in read_records(p) if r.get("mode") != mode]
    _write_records(p, [*others, *({k: _clean(v) for k, v in r.items()} for r in records)])


def by_mode(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["mode"], []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["round"])
    return out


# -- summary ---------------------------------------------------------------------
def summarize(records: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per mode: rounds, final/best eval loss, final ε at δ, σ, wall time, mean clipped fraction."""
    modes = {}
    for mode, rows in by_mode(records).items():
        evals = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
        trains = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
        clipped = [r["clipped_fraction"] for r in rows if r.get("clipped_fraction") is not None]
        last = rows[-1]
        modes[mode] = {
            "rounds": len(rows), "final_eval_loss": evals[-1] if evals else None,
            "best_eval_loss": min(evals) if evals else None, "final_train_loss": trains[-1] if trains else None,
            "epsilon": last.get("epsilon"), "delta": last.get("delta"),
            "noise_multiplier": last.get("noise_multiplier"), "clip_norm": last.get("clip_norm"),
            "mean_users_sampled": sum(r["users_sampled"] for r in rows) / len(rows),
            "mean_examples_processed": sum(r["examples_processed"] for r in rows) / len(rows),
            "mean_clipped_fraction": sum(clipped) / len(clipped) if clipped else None,
            "failures": sum(r.get("failures", 0) for r in rows), "rejected": sum(r.get("rejected", 0) for r in rows),
            "wall_time": sum(r.get("wall_time", 0.0) for r in rows),
            "stop_reason": last.get("stop_reason"),
        }
    return {"modes": modes, **(extra or {})}


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    cols = ["rounds", "final_eval_loss", "best_eval_loss", "final_train_loss", "epsilon", "delta",
            "noise_multiplier", "mean_users_sampled", "mean_examples_processed", "mean_clipped_fraction",
            "failures", "wall_time"]
    lines = ["# fl-userdp run summary", ""]
    for key in ("command", "commit", "seed", "stop_reasons"):
        if summary.get(key):
            lines.append(f"- {key}: {summary[key]}")
    lines += ["", "| mode | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for mode, row in summary["modes"].items():
        lines.append(f"| {mode} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: str | Path, summary: dict[str, Any]) -> None:
    out = Path(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))


# -- plot and table ------------------------------------------------------------------
def plot(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss vs round (train dashed, eval solid) and ε vs round, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eps) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, rows in by_mode(records).items():
        r = [row["round"] for row in rows]
        ev = [(row["round"], row["eval_loss"]) for row in rows if row.get("eval_loss") is not None]
        tr = [(row["round"], row["train_loss"]) for row in rows if row.get("train_loss") is not None]
        if ev:
            line, = ax_loss.plot(*zip(*ev), marker="o", ms=3, label=f"{mode.upper()} eval")
            color = line.get_color()
        else:
            color = None
        if tr:
            ax_loss.plot(*zip(*tr), ls="--", color=color, alpha=0.7, label=f"{mode.upper()} train")
        ax_eps.plot(r, [row.get("epsilon") if row.get("epsilon") is not None else math.nan for row in rows],
                    marker="o", ms=3, color=color, label=mode.upper())
    delta = next((row.get("delta") for row in records), None)
    ax_loss.set(xlabel="round", ylabel="loss", title="loss vs round")
    ax_eps.set(xlabel="round", ylabel="user-level ε" + (f" (δ={delta:g})" if delta else ""), title="ε vs round")
    for ax in (ax_loss, ax_eps):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def side_by_side(records: Sequence[dict[str, Any]]):
    """A rich Table: one row per round, train/eval loss and ε of each mode side by side."""
    from rich.table import Table

    modes = by_mode(records)
    table = Table(title="ULS vs ELS per round" if len(modes) > 1 else "per round")
    table.add_column("round", justify="right")
    for mode in modes:
        for col in ("train", "eval", "ε", "users", "ex."):
            table.add_column(f"{mode.upper()} {col}", justify="right")
    rounds = sorted({r["round"] for rows in modes.values() for r in rows})
    index = {(r["mode"], r["round"]): r for r in records}
    for rnd in rounds:
        cells = [str(rnd)]
        for mode in modes:
            r = index.get((mode, rnd), {})
            cells += [_fmt(r.get("train_loss"), ".3f"), _fmt(r.get("eval_loss"), ".3f"), _fmt(r.get("epsilon"), ".3f"),
                      _fmt(r.get("users_replied")), _fmt(r.get("examples_processed"))]
        table.add_row(*cells)
    return table
