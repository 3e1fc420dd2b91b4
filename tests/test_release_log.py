"""The write-ahead release log: framing, a torn tail, damage anywhere else, compaction
(fl_userdp.records.release_log, pure)."""
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


@pytest.mark.parametrize("damage", ["cut", "frame-cut"])
def test_a_torn_tail_is_cut_off_only_when_the_resume_goes_on(tmp_path, damage):
    log = filled(tmp_path)
    data = log.path.read_bytes()
    # the last entry was being written when the process died: cut inside it, or inside the next one's frame
    data = data[:-7] if damage == "cut" else data + b"FLRL\x00\x01"
    log.path.write_bytes(data)
    c = log.open()
    want = [1, 2, 3, 4] if damage == "frame-cut" else [1, 2, 3]
    assert c.torn and not c.corrupt and [e["round"] for e in c.releases] == want
    assert log.path.read_bytes() == data               # reading and checking change nothing
    log.drop_torn_tail(c)                               # the resume's last step
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
    with pytest.raises(ConfigError, match=r"is damaged: entry 1 \(the first release\) at byte \d+ fails its"):
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


def _entries(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, header length, payload length) of each entry of an intact log."""
    import struct

    spans, pos = [], 0
    while pos < len(data):
        _, hlen, plen = struct.unpack_from("<4sIQ", data, pos)
        spans.append((pos, hlen, plen))
        pos += 16 + hlen + plen + 32
    return spans


def _resume_log(path) -> tuple[str, object]:
    """What a resume does with the log at `path`: ("refused", message) with the file unchanged, or
    ("accepted", contents) after the torn tail (if any) was cut."""
    before = path.read_bytes()
    log = ReleaseLog(path)
    try:
        contents = log.open()
    except ConfigError as err:
        assert path.read_bytes() == before, "a refused log must be left byte for byte as it was"
        assert "\n" not in str(err)
        return "refused", str(err)
    assert path.read_bytes() == before   # checking reads only
    log.drop_torn_tail(contents)
    return "accepted", contents


def test_damage_anywhere_but_a_cut_short_last_entry_is_refused_and_left_as_it_was(tmp_path):
    """A real log (run entry, 4 releases; rounds 1-2 compacted to ledger entries, 3-4 with their updates)
    damaged at every entry boundary and inside every field of every entry, the first and the last included:
    only a file that ends inside its last entry is a torn tail (accepted, exactly the complete entries kept);
    everything else is refused with one line naming the byte offset and the entry, the file unchanged."""
    log = filled(tmp_path / "src")
    log.compact(2)
    good = log.path.read_bytes()
    spans = _entries(good)
    assert len(spans) == 5 and [p for _, _, p in spans] == [0, 0, 0, 40, 40]
    bounds = [off for off, _, _ in spans] + [len(good)]
    path = tmp_path / "releases-uls.log"
    cases: dict[str, bytes] = {}
    for i, (off, hlen, plen) in enumerate(spans):
        fields = {"marker": (off, 4), "header-length": (off + 4, 4), "payload-length": (off + 8, 8),
                  "header": (off + 16, hlen), "payload": (off + 16 + hlen, plen),
                  "checksum": (off + 16 + hlen + plen, 32)}
        for name, (at, n) in fields.items():
            for k in sorted({0, n // 2, n - 1}) if n else []:      # a flipped byte at each field's ends and middle
                cases[f"entry {i} {name} byte {k} flipped"] = good[:at + k] + bytes([good[at + k] ^ 0xFF]) + good[at + k + 1:]
        for name, at, width in (("header", off + 4, 4), ("payload", off + 8, 8)):
            value = int.from_bytes(good[at:at + width], "little")
            for new in (value + 1, value - 1, value + 10 ** 6, 0, value + 8, 2 ** (8 * width) - 1):
                if 0 <= new < 2 ** (8 * width) and new != value:
                    cases[f"entry {i} {name} length {value} -> {new}"] = \
                        good[:at] + new.to_bytes(width, "little") + good[at + width:]
    for j, at in enumerate(bounds):
        for junk in (b"\x00" * 7, b"garbage between entries", b"FLRL\x00\x01"):
            if at == len(good) and junk.startswith(b"FLRL"):
                continue                                            # a cut-short next entry: a torn tail (below)
            cases[f"{junk[:8]!r} at boundary {j}"] = good[:at] + junk + good[at:]
    for i, (off, hlen, plen) in enumerate(spans[1:-1], start=1):
        end = bounds[i + 1]
        cases[f"entry {i} removed"] = good[:off] + good[end:]
        cases[f"entry {i} twice"] = good[:end] + good[off:end] + good[end:]
    checked = 0
    for name, data in cases.items():
        path.write_bytes(data)
        verdict, why = _resume_log(path)
        assert verdict == "refused", f"{name}: accepted"
        if "removed" not in name and "twice" not in name:
            assert "byte" in why and "entry" in why, f"{name}: {why}"
        checked += 1
    assert checked > 150
    # cut at each boundary, one byte either side of it, and at each end and the middle of every field:
    # refused inside the run entry; otherwise exactly the complete entries are kept
    cuts = {c for b in bounds for c in (b - 1, b, b + 1)} | {
        at + k for off, hlen, plen in spans
        for at, n in ((off, 4), (off + 4, 4), (off + 8, 8), (off + 16, hlen), (off + 16 + hlen, plen),
                      (off + 16 + hlen + plen, 32)) for k in (0, n // 2, n - 1) if n}
    for cut in sorted(c for c in cuts if 0 <= c <= len(good)):
        path.write_bytes(good[:cut])
        verdict, got = _resume_log(path)
        if cut < bounds[1]:
            assert verdict == "refused", cut
            continue
        assert verdict == "accepted", (cut, got)
        keep = max(b for b in bounds if b <= cut)
        assert path.read_bytes() == good[:keep], cut
        assert [e["round"] for e in got.releases] == list(range(1, bounds.index(keep))), cut
    # the same for a cut-short next entry after the last one (its frame, its header)
    path.write_bytes(good + b"FLRL\x00\x01")
    assert _resume_log(path)[0] == "accepted" and path.read_bytes() == good
