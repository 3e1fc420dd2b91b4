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

Every log names its run: a run draws a random id (`new_run_id`, 128 bits from the OS) that its modes'
logs share; every entry carries it, as do the run's checkpoints, metrics records and summary. `open`
refuses a log whose entries name another run, and the runner refuses a folder whose files name different
runs, so a log copied from another run (even one with the same config) is not replayed as this one's.

Framing of an entry: b"FLRL", header length (uint32 LE), payload length
(uint64 LE), the JSON header, the payload bytes, SHA-256 of header + payload.
An append is one write of one entry, so a crash can leave only one kind of
damage: the file ends inside its last entry (before the end that entry's
frame declares, with what is there a plausible start of an entry: the marker,
lengths a release can have, a header of this run). That torn tail is the one
damage a resume repairs, and only once every check of the resume has passed
(`ReleaseLog.drop_torn_tail`, the last step before appending). Everything
else is corruption and the log is refused with the byte offset and entry
index, the file left byte for byte as it was: a checksum that fails (in any
entry, the last included), bytes that are not an entry, a header that is not
this run's, a length field pointing past the end while an intact entry (or a
complete entry of another length) sits in the bytes it covers. Cutting there
would forget releases that were made and published, and a resume would then
release those rounds again.
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


def new_run_id() -> str:
    """A run's id: 128 random bits from the OS, as 32 hex digits."""
    import secrets

    return secrets.token_hex(16)


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
    torn: bool = False        # the file ends inside its last entry (a write the crash interrupted)
    damage: str = ""          # why the log cannot be trusted past valid_bytes (empty: it can)

    @property
    def corrupt(self) -> bool:
        return bool(self.damage)

    @property
    def last_round(self) -> int:
        return int(self.releases[-1]["round"]) if self.releases else 0


MAX_HEADER = 1 << 20  # bytes; a header is a few hundred


def _intact_at(data: bytes, pos: int) -> bool:
    """An entry with a matching checksum starts at `pos`."""
    if len(data) - pos < _FRAME.size + 32:
        return False
    magic, hlen, plen = _FRAME.unpack_from(data, pos)
    end = pos + _FRAME.size + hlen + plen + 32
    return magic == MAGIC and end <= len(data) and \
        hashlib.sha256(data[pos + _FRAME.size: end - 32]).digest() == data[end - 32: end]


def _not_torn(data: bytes, pos: int, index: int, run: dict[str, Any] | None) -> str:
    """Why the bytes from `pos` to the end are not a cut-short last entry ('' when they are one)."""
    rest = data[pos:]
    if rest[:4] != MAGIC[: len(rest[:4])]:
        return "holds bytes that are not an entry"
    if index == 0:
        return "is cut short (the run entry is written whole, never appended)"
    if len(rest) < _FRAME.size:
        return ""
    _, hlen, plen = _FRAME.unpack_from(data, pos)
    later = data.find(MAGIC, pos + 1)
    while later != -1 and not _intact_at(data, later):
        later = data.find(MAGIC, later + 1)
    if later != -1:
        return f"declares a length past the end of the file but an intact entry follows at byte {later}"
    if len(rest) >= _FRAME.size + 32 and \
            hashlib.sha256(rest[_FRAME.size: -32]).digest() == rest[-32:]:
        return "is a complete entry whose length fields are damaged"
    payloads = {0, 8 * int((run or {}).get("size", 0))}
    if hlen > MAX_HEADER or plen not in payloads:
        return f"has length fields no entry of this log can have (header {hlen}, payload {plen} bytes)"
    head = rest[_FRAME.size: _FRAME.size + hlen]
    if len(head) == hlen:
        try:
            header = json.loads(head)
        except (ValueError, RecursionError):
            return "has a header that is not JSON"
        if not isinstance(header, dict) or header.get("kind") != "release" or \
                header.get("run_id") != (run or {}).get("run_id"):
            return "has a header that is not a release of this run"
    return ""


def read_log(path: str | Path) -> LogContents:
    """Parse a log (read only). Reading stops at the first damaged entry: a cut-short last entry sets
    `torn`; any other damage sets `damage` (one line: byte offset, entry index, what is wrong)."""
    out = LogContents()
    p = Path(path)
    if not p.exists():
        return out
    data = p.read_bytes()
    pos = index = 0
    while pos < len(data):
        what = "entry 0 (the run entry)" if index == 0 else \
            f"entry {index} (the release after round {out.last_round})" if out.releases else "entry 1 (the first release)"
        if len(data) - pos < _FRAME.size:
            why = _not_torn(data, pos, index, out.run)
            out.torn, out.damage = not why, why and f"{what} at byte {pos} {why}"
            break
        magic, hlen, plen = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + hlen + plen + 32
        if magic != MAGIC:
            out.damage = f"{what} at byte {pos} holds bytes that are not an entry"
            break
        if end > len(data):
            why = _not_torn(data, pos, index, out.run)
            out.torn, out.damage = not why, why and f"{what} at byte {pos} {why}"
            break
        body = data[pos + _FRAME.size: end - 32]
        if hashlib.sha256(body).digest() != data[end - 32: end]:
            out.damage = f"{what} at byte {pos} fails its checksum"
            break
        try:
            header = json.loads(body[:hlen])
        except (ValueError, RecursionError):
            header = None
        kind = "run" if index == 0 else "release"
        if not isinstance(header, dict) or header.get("kind") != kind or \
                (kind == "release" and not isinstance(header.get("round"), int)):
            out.damage = f"{what} at byte {pos} is not a {kind} entry"
            break
        if kind == "run":
            out.run = header
        else:
            out.releases.append(header)
            if plen:
                out.updates[int(header["round"])] = np.frombuffer(body[hlen:], dtype="<f8").copy()
        pos, index = end, index + 1
    out.valid_bytes = pos
    return out


def refuse_damage(path: str | Path, contents: LogContents) -> None:
    """ConfigError (one line) when the log is damaged anywhere but a cut-short last entry."""
    if contents.damage:
        what = "is damaged" if contents.run is not None else "is not a readable release log"
        raise ConfigError("--resume", str(path), f"{what}: {contents.damage}; refusing to resume (the file is left "
                          "as it is: cutting it would forget releases that were made)")


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

    def start(self, run: dict[str, Any], run_id: str | None = None) -> None:
        """Begin a fresh log holding only the run entry (replaces any old one), under `run_id` (the run's,
        shared by its modes' logs; default: a new one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id or new_run_id()
        _write_atomic(self.path, _frame({**run, "kind": "run", "version": VERSION, "run_id": self.run_id}, b""))

    def open(self) -> LogContents:
        """Read and check the log for continuing it, without changing it (ConfigError when it cannot be
        trusted); a torn tail is left in place until `drop_torn_tail`."""
        contents = read_log(self.path)
        refuse_damage(self.path, contents)
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
        return contents

    def drop_torn_tail(self, contents: LogContents) -> None:
        """Cut the torn tail `open` found (a release nobody saw): the last step of a resume that goes on,
        after every check passed. Refuses (ConfigError) if the file changed since it was read."""
        if not contents.torn:
            return
        now = read_log(self.path)
        if not now.torn or now.valid_bytes != contents.valid_bytes:
            raise ConfigError("--resume", str(self.path), "changed while the resume was checked; refusing to resume")
        with open(self.path, "r+b") as fh:
            fh.truncate(contents.valid_bytes)
            fh.flush()
            os.fsync(fh.fileno())

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
        if contents.torn or contents.damage:  # rewriting the readable prefix would drop what follows it
            why = contents.damage or "its last entry is cut short"
            raise ConfigError("--out", str(self.path), f"was damaged during the run ({why}); it is left as it is")
        blobs = [_frame({k: v for k, v in contents.run.items()}, b"")] if contents.run else []
        for header in contents.releases:
            rnd = int(header["round"])
            payload = b"" if rnd <= upto_round or rnd not in contents.updates else \
                contents.updates[rnd].astype("<f8").tobytes()
            blobs.append(_frame(header, payload))
        _write_atomic(self.path, b"".join(blobs))
