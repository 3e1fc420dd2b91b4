"""Process helpers for the Ray and Flower CLI tests: ClientApp actors under a process, the superlinks a test's
`flwr run` started (by their FLWR_HOME); everything found and stopped by PID, never by name."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def actor_pids(pid: int) -> list[int]:
    found = []
    for p in descendants(pid):
        try:
            if b"ClientAppActor" in Path(f"/proc/{p}/cmdline").read_bytes():
                found.append(p)
        except OSError:
            pass
    return found


def superlinks_of(home: Path) -> list[int]:
    """PIDs of flower-superlink processes whose command line names our FLWR_HOME."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"flower-superlink" in c for c in cmd) and any(str(home).encode() in c for c in cmd):
                found.append(int(entry))
    return found


def stop_superlinks(home: Path, wait: float = 30.0) -> None:
    """SIGTERM the superlinks of `home`, SIGKILL what is left after `wait` seconds."""
    import signal
    import time

    for pid in superlinks_of(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while superlinks_of(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in superlinks_of(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while superlinks_of(home) and time.monotonic() < deadline:  # a killed process leaves /proc a moment later
        time.sleep(0.1)
