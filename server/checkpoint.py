"""Atomic checkpoints: weights, optimizer state, the privacy ledger and the round.

One `.npz` file per mode; the metadata (round, σ, ledger, config identity)
is a JSON string stored inside it, so weights and ledger can never come from
different writes. Writes go to a temporary file in the same folder and are
moved into place with `os.replace`. Loading refuses a checkpoint without a
ledger, or whose ledger has a different number of releases than its round:
resuming must never reset or skew the privacy budget. Generators need no
state: every draw comes from `rng_for(seed, stream, round)`.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fl_userdp.errors import ConfigError

VERSION = 2  # 2: checkpoints are a speed-up over the release log (fl_userdp.records.release_log)


def checkpoint_path(out: str | Path, mode: str) -> Path:
    return Path(out) / f"checkpoint-{mode}.npz"


def save_checkpoint(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write `meta` (JSON-able, must hold 'round' and 'ledger') and `arrays` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {f"a/{k}": np.asarray(v) for k, v in arrays.items()}
    payload["meta"] = np.frombuffer(json.dumps({**meta, "version": VERSION}).encode(), dtype=np.uint8)
    with open(tmp, "wb") as fh:
        np.savez(fh, **payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a checkpoint; raise ConfigError('--resume', path, why) when it cannot be trusted."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            arrays = {k[2:]: data[k] for k in data.files if k.startswith("a/")}
    except FileNotFoundError:
        raise ConfigError("--resume", str(path), "has no checkpoint") from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError("--resume", str(path), f"is not a readable checkpoint ({err})") from None
    if meta.get("version") != VERSION:
        raise ConfigError("--resume", str(path), f"has checkpoint version {meta.get('version')!r}, expected {VERSION}")
    ledger = meta.get("ledger")
    if not isinstance(ledger, dict) or not ledger:
        raise ConfigError("--resume", str(path), "has no privacy ledger; refusing to resume (the budget would reset)")
    # a built-in ledger says how many releases it holds; a plug-in's is checked against the release log
    steps = sum(int(r.get("count", 0)) for r in ledger["runs"]) if "runs" in ledger else int(meta.get("round", -1))
    if steps != int(meta.get("round", -1)):
        raise ConfigError("--resume", str(path),
                          f"has a ledger with {steps} releases but round {meta.get('round')}; refusing to resume")
    return meta, arrays
