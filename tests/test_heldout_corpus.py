"""The held-out corpus builder (experiments/compute/heldout_corpus.py) at its smallest setting: 20 users of
the standard library's prose, written as the JSONL that `data.source=<file>.jsonl` reads, the same bytes
on every build."""
import importlib.util
import json
from pathlib import Path

from fl_userdp.data.files import read_users

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "compute" / "heldout_corpus.py"


def load():
    spec = importlib.util.spec_from_file_location("heldout_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twenty_users_as_the_loader_reads_them(tmp_path, capsys):
    hc = load()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert hc.main(["--max-users", "20", "--out", str(a), "--no-stats"]) == 0
    assert "20 users" in capsys.readouterr().out
    hc.build(b, max_users=20)
    assert a.read_bytes() == b.read_bytes()                      # deterministic
    lines = [json.loads(line) for line in a.read_text(encoding="ascii").splitlines()]
    assert all(set(r) == {"user", "text"} and r["text"].strip() and r["text"].isascii() for r in lines)
    users = read_users(a)
    assert len(users) == 20 and not users.dropped.rows
    names = list(dict.fromkeys(r["user"] for r in lines))
    assert names == sorted(names) and not any(n.startswith(("test", "encodings")) for n in names)
    for texts in users.values():                                 # no text repeated within a user
        assert len(texts) == len(set(texts))


def test_comments_that_are_not_prose_are_left_out():
    hc = load()
    src = ("#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n# Copyright 2001 Someone, all rights reserved here.\n"
           "x = 1\n# ======================== Value conversion methods ========================\n\n"
           "# The parser keeps the longest match it has seen so far and\n# backs off to it when the input ends.\n")
    assert [t for _, t in hc.comment_blocks(src)] == [
        "The parser keeps the longest match it has seen so far and backs off to it when the input ends."]
