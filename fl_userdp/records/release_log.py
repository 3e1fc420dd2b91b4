"""The write-ahead release log: every release a run makes, durable before anything uses it.

One append-only file per mode (`releases-<mode>.log` in the run's folder). Its
first entry describes the run (mode, σ, the budget, the config identity, the
number of weights); then one entry per released round, in order: the ledger
entry (the round's privacy event), the accounting numbers, and the released
noisy update itself (float64). The server appends a round's entry and fsyncs
it *before* the update is applied to the weights, composed into the reported
ledger or written anywhere else. So:

* a release that reached any output is in the log; a crash can lose only a
  release nobody saw (its entry is cut short and dropped on reading);
* `--resume` rebuilds the ledger from the log's entries and the weights as
  checkpoint + replay of the logged updates after it: no data touched, no new
  noise, every release counted exactly once and never recomputed;
* checkpoints are a speed-up, not the source of truth: `compact(r)` (after a
  checkpoint at round r) drops the updates of rounds ≤ r and keeps every
  ledger entry, so a long run's log stays small.

Every log names its run: `start` draws a random run id (128 bits from the OS) and every entry carries
it, as does the run's checkpoint; `open` refuses a log whose entries name another run, and the runner
refuses a checkpoint of another run, so a log copied from another run (even one with the same config)
is not replayed as this one's.

Framing of an entry: b"FLRL", header length (uint32 LE), payload length
(uint64 LE), the JSON header, the payload bytes, SHA-256 of header + payload.
A last entry that is cut short (or, being last, fails its checksum: a write
the crash interrupted) is a torn tail, dropped on reading; a damaged entry
with data after it is corruption, and the log is refused rather than cut
(cutting would forget releases that were made and published).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

MAGIC = b"FLRL"
VERSION = 2   # 2: every entry carries the run's id
_FRAME = struct.Struct("<4sIQ")


def log_path(out: str | Path, mode: str) -> Path:
    return Path(out) / f"releases-{mode}.log"


def _frame(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return _FRAME.pack(MAGIC, len(head), len(payload)) + head + payload + hashlib.sha256(head + payload).digest()


@dataclass
class LogContents:
    """What a log holds: the run entry, the release entries (in round order) and the updates still kept."""

    run: dict[str, Any] | None = None
    releases: list[dict[str, Any]] = field(default_factory=list)
    updates: dict[int, np.ndarray] = field(default_factory=dict)
    valid_bytes: int = 0      # length of the readable prefix
    torn: bool = False        # the last entry was cut short (a write the crash interrupted)
    corrupt: bool = False     # a damaged entry with more data after it

    @property
    def last_round(self) -> int:
        return int(self.releases[-1]["round"]) if self.releases else 0


def read_log(path: str | Path) -> LogContents:
    """Parse a log; entries after the first damaged one are ignored (`torn`)."""
    out = LogContents()
    p = Path(path)
    if not p.exists():
        return out
    data = p.read_bytes()
    pos = 0
    while pos < len(data):
        if len(data) - pos < _FRAME.size:
            out.torn = True
            break
        magic, hlen, plen = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + hlen + plen + 32
        if magic != MAGIC:
            out.corrupt = True
            break
        if end > len(data):
            out.torn = True
            break
        body = data[pos + _FRAME.size: end - 32]
        if hashlib.sha256(body).digest() != data[end - 32: end]:
            out.torn, out.corrupt = end == len(data), end < len(data)
            break
        header = json.loads(body[:hlen])
        if header.get("kind") == "run":
            out.run = header
        else:
            out.releases.append(header)
            if plen:
                out.updates[int(header["round"])] = np.frombuffer(body[hlen:], dtype="<f8").copy()
        pos = end
    out.valid_bytes = pos
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, blob: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_atomic(path: str | Path, blob: bytes) -> None:
    """Write `blob` to `path` atomically and durably (a temporary file, fsync, rename, fsync of the folder)."""
    _write_atomic(Path(path), blob)


class ReleaseLog:
    """Appends releases durably to one mode's log (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.run_id: str | None = None

    def start(self, run: dict[str, Any]) -> None:
        """Begin a fresh log holding only the run entry (replaces any old one), under a new random run id."""
        import secrets

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = secrets.token_hex(16)
        _write_atomic(self.path, _frame({**run, "kind": "run", "version": VERSION, "run_id": self.run_id}, b""))

    def open(self) -> LogContents:
        """Read the log for continuing it; a damaged tail (a release nobody saw) is cut off."""
        contents = read_log(self.path)
        if contents.corrupt:
            raise ConfigError("--resume", str(self.path), f"is damaged after {len(contents.releases)} releases "
                              "(an entry with data after it fails its checksum); refusing to resume")
        if contents.run is None:
            raise ConfigError("--resume", str(self.path), "is not a readable release log (no run entry)")
        if contents.run.get("version") != VERSION:
            raise ConfigError("--resume", str(self.path),
                              f"has release-log version {contents.run.get('version')!r}, expected {VERSION}")
        run_id = contents.run.get("run_id")
        foreign = next((r for r in contents.releases if r.get("run_id") != run_id), None)
        if not run_id or foreign is not None:
            raise ConfigError("--resume", str(self.path), f"holds an entry of another run (round "
                              f"{foreign['round'] if foreign else '-'}); refusing to resume")
        self.run_id = run_id
        rounds = [int(r["round"]) for r in contents.releases]
        if rounds != list(range(1, len(rounds) + 1)):
            raise ConfigError("--resume", str(self.path), "has releases out of order; refusing to resume")
        if contents.torn:
            with open(self.path, "r+b") as fh:
                fh.truncate(contents.valid_bytes)
                fh.flush()
                os.fsync(fh.fileno())
        return contents

    def append(self, header: dict[str, Any], update: np.ndarray) -> None:
        """Append one release and fsync it; returns only once it is durable."""
        if self.run_id is None:
            raise RuntimeError("start() or open() the log before appending to it")
        blob = _frame({**header, "kind": "release", "run_id": self.run_id},
                      np.ascontiguousarray(update, dtype="<f8").tobytes())
        with open(self.path, "ab") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())

    def compact(self, upto_round: int) -> None:
        """Drop the updates of rounds ≤ `upto_round` (a checkpoint holds their effect); keep every entry."""
        contents = read_log(self.path)
        blobs = [_frame({k: v for k, v in contents.run.items()}, b"")] if contents.run else []
        for header in contents.releases:
            rnd = int(header["round"])
            payload = b"" if rnd <= upto_round or rnd not in contents.updates else \
                contents.updates[rnd].astype("<f8").tobytes()
            blobs.append(_frame(header, payload))
        _write_atomic(self.path, b"".join(blobs))
