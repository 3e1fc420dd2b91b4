"""What a run's data loading kept and dropped: the rows and users left out, and the data.num-users cap.

`Dropped` counts what a reader of users' files (`files.read_users`) left out
and why: rows with a null or empty user id, rows with a null or empty text,
and users none of whose rows had text. `data_report(corpus, data_cfg)` is the
corpus as a run uses it — training and held-out users, what was dropped, and
whether `data.num-users` asked for more users than the source holds — as a
JSON-able dict; `data_line(report)` says it in one line. `fl-userdp
data-stats`, the run's console and `summary.json` ("data") all show it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import DataConfig

NO_USER = "null or empty user"
NO_TEXT = "null or empty text"


@dataclass
class Dropped:
    """Rows left out by reason, and users left with no row (their every row was dropped)."""

    reasons: dict[str, int] = field(default_factory=dict)
    users: int = 0

    @property
    def rows(self) -> int:
        return sum(self.reasons.values())

    def add_row(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "users": self.users, "reasons": dict(self.reasons)}

    def __bool__(self) -> bool:
        return bool(self.rows or self.users)


def dropped_text(dropped: dict[str, Any]) -> str:
    """"dropped 3 rows (2 with a null or empty user, 1 with ...) and 1 user with no text" ('' when nothing)."""
    parts = []
    if dropped.get("rows"):
        why = ", ".join(f"{n} with a {reason}" for reason, n in dropped.get("reasons", {}).items() if n)
        parts.append(f"{dropped['rows']} row{'s' if dropped['rows'] != 1 else ''} ({why})")
    if dropped.get("users"):
        parts.append(f"{dropped['users']} user{'s' if dropped['users'] != 1 else ''} with no text left")
    return "dropped " + " and ".join(parts) if parts else ""


def cap_text(data_cfg: DataConfig, corpus: Any) -> str | None:
    """"data.num-users 5000 > 1289 users in the source: using 1289" when the cap exceeds the source (else None)."""
    available = getattr(corpus, "trainable_users", None)
    if available is None or data_cfg.num_users <= available:
        return None
    held = len(getattr(corpus, "heldout_counts", ()))
    after = f" (after {held} held out)" if held else ""
    return f"data.num-users {data_cfg.num_users} > {available} users in the source{after}: using {available}"


def data_report(corpus: Any, data_cfg: DataConfig) -> dict[str, Any]:
    """The corpus as a run uses it: its users, what loading dropped, the num-users cap (JSON-able)."""
    held = getattr(corpus, "heldout_counts", None)
    dropped = getattr(corpus, "dropped", None) or Dropped()
    return {"source": data_cfg.source, "training_users": int(corpus.num_users),
            "heldout_users": None if held is None else int(len(held)),
            "num_users_capped": cap_text(data_cfg, corpus), "dropped": dropped.to_dict()}


def data_line(report: dict[str, Any]) -> str:
    """One line: the source, its users, and what loading dropped (when the report holds it) or capped."""
    held = "" if report.get("heldout_users") is None else f", {report['heldout_users']} held-out"
    notes = [t for t in (dropped_text(report.get("dropped") or {}), report.get("num_users_capped")) if t]
    return f"data {report['source']}: {report['training_users']} training users{held}" \
        + (f"; {'; '.join(notes)}" if notes else "")


__all__ = ["Dropped", "NO_USER", "NO_TEXT", "data_report", "data_line", "dropped_text", "cap_text"]
