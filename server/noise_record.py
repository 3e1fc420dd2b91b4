"""The secret record of banded noise: each round's w_t = (C⁻¹z)_t, durable before the round's release is logged.

With privacy.mechanism "bandmf" and b > 1 bands, round t's noise depends on the last b − 1 rounds' w, so a
resume needs them. The checkpoint holds the stream's buffer at its round; the rounds the release log holds
after it are replayed from this record: folder `secret-noise-<mode>/` in the run's output folder, one
`w-<round>.npy` per round (written atomically and fsynced before the release log's entry, so a logged round
always has its w), and `run.json` (the run id, so another run's record is never replayed). A checkpoint at
round r drops the files of rounds ≤ r. A file for a round the log does not hold (a crash between the two
writes) is ignored and overwritten when that round is run again.

Secret: the files are past noise — with a release they give back the clipped sum. Nothing here is ever
published (the summary, metrics and plot never read it); keep the folder with the checkpoint, private.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np

from fl_userdp.errors import ConfigError
from fl_userdp.records.release_log import write_atomic


def record_path(out: str | Path, mode: str) -> Path:
    return Path(out) / f"secret-noise-{mode}"


def _npy(w: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(w, np.float64))
    return buf.getvalue()


class NoiseRecord:
    """One mode's secret noise record (see the module docstring)."""

    FILE = re.compile(r"^w-(\d+)\.npy$")

    def __init__(self, out: str | Path, mode: str) -> None:
        self.path = record_path(out, mode)

    def start(self, run_id: str) -> None:
        """A fresh record for run `run_id` (files left by an earlier run in this folder are removed)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for f in self.path.iterdir():
            if self.FILE.match(f.name) or f.name == "run.json":
                f.unlink()
        write_atomic(self.path / "run.json", json.dumps({"run_id": run_id}).encode())

    def open(self, run_id: str) -> None:
        """Check the record belongs to run `run_id` (ConfigError: one line)."""
        try:
            saved = json.loads((self.path / "run.json").read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            raise ConfigError("--resume", str(self.path), "is missing or unreadable: the banded noise stream's "
                              "secret state is lost; refusing to resume") from None
        if saved != run_id:
            raise ConfigError("--resume", str(self.path), f"belongs to another run ({saved}); refusing to resume")

    def write(self, rnd: int, w: np.ndarray) -> None:
        """Round `rnd`'s w, durable on return."""
        write_atomic(self.path / f"w-{int(rnd)}.npy", _npy(w))

    def read(self, rnd: int) -> np.ndarray | None:
        """Round `rnd`'s w, or None when it is not recorded (or unreadable)."""
        try:
            return np.load(self.path / f"w-{int(rnd)}.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None

    def compact(self, upto_round: int) -> None:
        """Drop the rounds ≤ `upto_round` (a checkpoint holds the stream's state there)."""
        for f in self.path.iterdir():
            m = self.FILE.match(f.name)
            if m and int(m.group(1)) <= upto_round:
                f.unlink()
