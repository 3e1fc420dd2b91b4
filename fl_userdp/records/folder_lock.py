"""One run per output folder: an exclusive lock on `<out>/.lock` for the run's life.

Two runs writing into one folder would interleave two release logs in one file, or replace one's log
with the other's, and each would report the ε of its own releases only. So every run holds its folder:

* `hold(out, run_id)` takes an exclusive, non-blocking `fcntl.flock` on `<out>/.lock` and keeps that file
  open until `release()` (or the end of its `with` block); while held, the file names the holder as one
  JSON line: pid, host, run id, start time (UTC). A second run, in this process or another, is refused
  with a ConfigError naming `--out` and that holder.
* flock belongs to the open file, so the kernel drops it when the holding process ends in any way (exit,
  exception, SIGKILL, a crash): a dead run never leaves its folder locked. The file itself stays (its
  content is cleared on release); it is not a lock by being there, so it is never deleted (deleting
  would let a third run lock a fresh file while the second still holds the old one).
* Inside one process the held folders are also kept in a registry (by real path), so a second run in
  another thread is refused even where flock is emulated with POSIX record locks (some network file
  systems), which do not exclude each other within one process. The registry also gives the run's own
  code running in other threads (an engine's server thread) the run id the folder is held under
  (`held_run_id`): only one run can hold it.
* The thread that holds a folder may `hold` it again (the command line holds it before its checks, then
  runs the simulation, which holds it too): that joins the outer hold, under its run id, and releasing
  it leaves the outer hold in place. Any other thread is refused.

Where `fcntl` does not exist (Windows) only the in-process registry guards the folder.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_REGISTRY: dict[str, dict[str, Any]] = {}
_GUARD = threading.Lock()


def _key(out: str | Path) -> str:
    return os.path.realpath(out)


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another run (its lock file names no holder yet)"
    return (f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


def _refuse(out: str | Path, holder: dict[str, Any] | None) -> ConfigError:
    return ConfigError("--out", str(out), f"is in use by {_describe(holder)}: one run per folder; wait for it to "
                       "end or choose another --out")


class FolderLock:
    """A held folder; `release()` (idempotent) or leaving the `with` block lets it go."""

    def __init__(self, out: Path, key: str, holder: dict[str, Any], fh: Any) -> None:
        self.out, self.run_id, self.holder = out, holder["run_id"], holder
        self._key, self._fh = key, fh   # fh None: a hold joined by the holding thread (nothing to let go)

    def release(self) -> None:
        with _GUARD:
            if self._fh is None:
                return
            try:
                self._fh.seek(0)
                self._fh.truncate()     # cleared while still held: a later holder's line is never cut
                self._fh.flush()
            except OSError:
                pass
            finally:
                self._fh.close()        # closing the last descriptor of the open file drops the flock
                self._fh = None
                _REGISTRY.pop(self._key, None)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold(out: str | Path, run_id: str) -> FolderLock:
    """Hold `out` (created if missing) for the run `run_id`; ConfigError naming the holder when another
    run, in this process or another, holds it. In the thread that holds it already: that hold, joined (its
    run id, not `run_id`)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("--out", str(out), f"cannot be used as the run's folder ({err.strerror})") from None
    key = _key(out)
    with _GUARD:
        if key in _REGISTRY:
            if _REGISTRY[key]["thread"] == threading.get_ident():
                return FolderLock(out, key, _REGISTRY[key], None)
            raise _refuse(out, _REGISTRY[key])
        try:
            fh = open(out / LOCK_NAME, "a+")
        except OSError as err:
            raise ConfigError("--out", str(out), f"cannot hold its lock file ({err.strerror})") from None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    fh.close()
                    raise ConfigError("--out", str(out), f"cannot be locked ({err.strerror})") from None
                fh.seek(0)
                text = fh.read()
                fh.close()
                try:
                    holder = json.loads(text) if text.strip() else None
                except ValueError:
                    holder = None
                raise _refuse(out, holder if isinstance(holder, dict) else None) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(holder) + "\n")
        fh.flush()
        _REGISTRY[key] = {**holder, "thread": threading.get_ident()}
    return FolderLock(out, key, holder, fh)


def held_run_id(out: str | Path) -> str | None:
    """The run id under which this process holds `out` (None when it does not hold it)."""
    with _GUARD:
        holder = _REGISTRY.get(_key(out))
    return holder["run_id"] if holder else None
