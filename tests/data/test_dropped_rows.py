"""Loaders say what they dropped: rows with a null or empty user or text, users left with no text, and a
data.num-users above the population — in the reader's result, `fl-userdp data-stats`, the run's console and
summary.json."""
import json

import pytest

from fl_userdp.cli import main
from fl_userdp.data.files import read_users

ROWS = [{"user": "alice", "text": "hello there"}, {"user": "", "text": "no user"}, {"user": None, "text": "null"},
        {"user": "bob", "text": ""}, {"user": "bob", "text": "   "}, {"user": "carol", "text": None},
        {"user": "carol", "text": "kept"}, {"user": "dave", "text": "x"}, {"user": "erin", "text": "y"}]
KEPT = {"alice": ["hello there"], "carol": ["kept"], "dave": ["x"], "erin": ["y"]}
DROPPED = {"rows": 5, "users": 1, "reasons": {"null or empty user": 2, "null or empty text": 3}}


def write_jsonl(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows=ROWS):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["user", "text"])
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})  # CSV has no null: an empty cell
    return path


def write_parquet(path, rows=ROWS):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"user": [r["user"] for r in rows], "text": [r["text"] for r in rows]}), path)
    return path


@pytest.mark.parametrize("writer,name", [(write_jsonl, "d.jsonl"), (write_csv, "d.csv"),
                                         (write_parquet, "d.parquet")])
def test_reader_records_what_it_dropped(tmp_path, writer, name):
    users = read_users(writer(tmp_path / name))
    assert users == KEPT and "" not in users
    assert users.dropped.to_dict() == DROPPED


def stats(capsys, *args):
    assert main(["data-stats", *args]) == 0
    return capsys.readouterr().out


def test_data_stats_counts_only_what_a_run_uses_and_says_what_it_dropped(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl")
    payload = json.loads(stats(capsys, "--source", str(path), "--heldout-users", "1", "--num-users", "3", "--json"))
    assert payload["available_users"] == 4 and payload["training_users"] == 3 and payload["heldout_users"] == 1
    assert payload["dropped"] == DROPPED and payload["num_users_capped"] is None
    text = stats(capsys, "--source", str(path), "--heldout-users", "1")
    assert "dropped 5 rows (2 with a null or empty user, 3 with a null or empty text) and 1 user with no text " \
           "left" in text


def test_num_users_above_the_population_is_said(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl")
    payload = json.loads(stats(capsys, "--source", str(path), "--heldout-users", "1", "--num-users", "5000",
                               "--json"))
    assert payload["num_users_capped"] == "data.num-users 5000 > 3 users in the source (after 1 held out): using 3"
    assert payload["training_users"] == 3


def run_args(tmp_path, source, *extra):
    return ["run", "--mode", "uls", "--backend", "inprocess", "--no-progress", "--rounds", "1",
            "--out", str(tmp_path / "run"), "--set", f"data.source={source}", "--set", "data.heldout-users=1",
            "--set", "data.num-users=5000", "--set", "model.seq-len=8", "--set", "model.hidden-size=8",
            "--set", "model.num-layers=1", "--set", "privacy.noise-multiplier=1", "--set", "train.eval-every=0",
            *extra]


def test_run_console_and_summary_say_what_was_dropped_and_capped(tmp_path, capsys):
    source = write_jsonl(tmp_path / "d.jsonl")  # users' own data: diagnostics only when asked for
    assert main(run_args(tmp_path, source, "--set", "privacy.publish-diagnostics=true")) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip().startswith("data ")]
    cap = "data.num-users 5000 > 3 users in the source (after 1 held out): using 3"
    assert len(err) == 1 and "dropped 5 rows" in err[0] and cap in err[0]
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert data["training_users"] == 3 and data["num_users_capped"] == cap
    assert data["diagnostics"]["dropped"] == DROPPED  # counted from the files without noise: a diagnostic
    assert "dropped 5 rows" in (tmp_path / "run" / "summary.md").read_text()


@pytest.mark.parametrize("publish", ["false", "auto"])  # auto: off for users' own data
def test_unpublished_diagnostics_leave_the_dropped_counts_out(tmp_path, capsys, publish):
    source = write_jsonl(tmp_path / "d.jsonl")
    assert main(run_args(tmp_path, source, "--set", f"privacy.publish-diagnostics={publish}")) == 0
    err = capsys.readouterr().err
    assert "dropped" not in err and "using 3" in err
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert "diagnostics" not in data and data["num_users_capped"].endswith("using 3")
