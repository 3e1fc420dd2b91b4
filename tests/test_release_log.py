"""The write-ahead release log: framing, a torn tail, compaction (fl_userdp.records.release_log, pure)."""
from __future__ import annotations

import numpy as np
import pytest

from fl_userdp.errors import ConfigError
from fl_userdp.records.release_log import ReleaseLog, read_log

RUN = {"mode": "uls", "identity": {"seed": 0}, "noise_multiplier": 1.5, "size": 5}


def entry(r: int) -> dict:
    return {"round": r, "mode": "uls", "epsilon": 0.1 * r,
            "event": {"mode": "uls", "sampling_rate": 0.1, "noise_multiplier": 1.5}}


def filled(tmp_path, rounds: int = 4) -> ReleaseLog:
    log = ReleaseLog(tmp_path / "releases-uls.log")
    log.start(RUN)
    for r in range(1, rounds + 1):
        log.append(entry(r), np.full(5, float(r)))
    return log


def test_round_trip(tmp_path):
    log = filled(tmp_path)
    c = log.open()
    assert c.run["noise_multiplier"] == 1.5 and c.run["version"] == 2 and not c.torn
    assert len(c.run["run_id"]) == 32 and all(e["run_id"] == c.run["run_id"] for e in c.releases)
    assert [e["round"] for e in c.releases] == [1, 2, 3, 4] and c.last_round == 4
    for r in range(1, 5):
        np.testing.assert_array_equal(c.updates[r], np.full(5, float(r)))
        assert c.releases[r - 1]["epsilon"] == pytest.approx(0.1 * r)


@pytest.mark.parametrize("damage", ["cut", "flip", "garbage"])
def test_a_damaged_tail_ends_the_log_and_is_cut_off(tmp_path, damage):
    log = filled(tmp_path)
    data = log.path.read_bytes()
    if damage == "cut":
        data = data[:-7]                              # the last entry was being written when the process died
    elif damage == "flip":
        data = data[:-40] + bytes([data[-40] ^ 1]) + data[-39:]   # a flipped bit in the last payload
    else:
        data = data + b"FLRL\x00\x01"
    log.path.write_bytes(data)
    c = log.open()
    want = [1, 2, 3, 4] if damage == "garbage" else [1, 2, 3]
    assert c.torn and [e["round"] for e in c.releases] == want
    assert log.path.stat().st_size == c.valid_bytes   # cut off: appending continues a valid log
    log.append(entry(want[-1] + 1), np.zeros(5))
    again = read_log(log.path)
    assert not again.torn and [e["round"] for e in again.releases] == want + [want[-1] + 1]


def test_compaction_keeps_every_ledger_entry_and_drops_old_updates(tmp_path):
    log = filled(tmp_path, 6)
    before = log.path.stat().st_size
    log.compact(4)
    c = log.open()
    assert [e["round"] for e in c.releases] == [1, 2, 3, 4, 5, 6] and c.run["noise_multiplier"] == 1.5
    assert sorted(c.updates) == [5, 6] and log.path.stat().st_size < before
    assert [e["epsilon"] for e in c.releases] == pytest.approx([0.1 * r for r in range(1, 7)])


def test_refuses_logs_it_cannot_trust(tmp_path):
    log = ReleaseLog(tmp_path / "x.log")
    log.path.write_bytes(b"not a log")
    with pytest.raises(ConfigError, match="not a readable release log"):
        log.open()
    log = filled(tmp_path / "gap")
    data = read_log(log.path)
    log.start(RUN)
    for r in (1, 3):  # round 2 missing
        log.append(entry(r), data.updates[r])
    with pytest.raises(ConfigError, match="out of order"):
        log.open()


def test_a_damaged_entry_with_data_after_it_is_refused_not_cut(tmp_path):
    """Cutting there would forget releases that were made: the log is refused and left as it is."""
    log = filled(tmp_path)
    data = bytearray(log.path.read_bytes())
    data[len(data) // 3] ^= 1          # inside an early entry
    log.path.write_bytes(bytes(data))
    assert read_log(log.path).corrupt
    with pytest.raises(ConfigError, match="damaged after"):
        log.open()
    assert log.path.read_bytes() == bytes(data)


def test_entries_of_another_run_are_refused(tmp_path):
    """Two runs of one config have different run ids; a log spliced from both is refused on resume."""
    a, b = filled(tmp_path / "a", 2), filled(tmp_path / "b", 3)
    assert a.run_id != b.run_id
    from fl_userdp.records.release_log import _frame

    theirs = read_log(b.path)
    assert theirs.releases[2]["run_id"] == b.run_id           # an entry carries its run's id...
    with open(a.path, "ab") as fh:                            # ...so b's round 3 spliced onto a's log shows
        fh.write(_frame(theirs.releases[2], theirs.updates[3].tobytes()))
    with pytest.raises(ConfigError, match="another run"):
        ReleaseLog(a.path).open()
    other = ReleaseLog(tmp_path / "fresh.log")
    with pytest.raises(RuntimeError):
        other.append(entry(1), np.zeros(5))                  # a log must be started or opened first
