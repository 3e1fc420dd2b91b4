"""Users' own data: JSONL, CSV, Parquet, LEAF JSON, datasets folder; clear errors naming file and column."""
import importlib.util
import json
import sys

import pytest

from fl_userdp.config import DataConfig, ModelConfig
from fl_userdp.data import load_corpus
from fl_userdp.data.files import read_users
from fl_userdp.errors import ConfigError

ROWS = [{"user": "alice", "text": "hello there"}, {"user": "bob", "text": "good day"},
        {"user": "alice", "text": "again"}, {"user": 7, "text": "numeric user"}]
EXPECTED = {"alice": ["hello there", "again"], "bob": ["good day"], "7": ["numeric user"]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path, rows, cols=("user", "text")):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(cols))
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"user": [str(r["user"]) for r in rows], "text": [r["text"] for r in rows]}), path)
    return path


def test_jsonl_round_trip(tmp_path):
    assert read_users(write_jsonl(tmp_path / "d.jsonl", ROWS)) == EXPECTED


def test_csv_round_trip(tmp_path):
    assert read_users(write_csv(tmp_path / "d.csv", ROWS)) == EXPECTED


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_parquet_round_trip(tmp_path):
    assert read_users(write_parquet(tmp_path / "d.parquet", ROWS)) == EXPECTED


def test_custom_column_names(tmp_path):
    rows = [{"author": "a", "body": "x y"}, {"author": "b", "body": "z"}]
    assert read_users(write_jsonl(tmp_path / "d.jsonl", rows), "author", "body") == {"a": ["x y"], "b": ["z"]}


def test_leaf_json(tmp_path):
    doc = {"users": ["u1", "u2"], "num_samples": [2, 1],
           "user_data": {"u1": {"x": ["to be", "or not"], "y": ["!", "?"]}, "u2": {"x": [["a", "b"]], "y": [0]}}}
    (tmp_path / "train.json").write_text(json.dumps(doc))
    assert read_users(tmp_path / "train.json") == {"u1": ["to be", "or not"], "u2": ["a b"]}


def test_leaf_without_user_data_names_file(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"users": []}))
    with pytest.raises(ConfigError, match=r"user_data.*bad\.json"):
        read_users(tmp_path / "bad.json")


def test_datasets_folder(tmp_path):  # `datasets` is in the test extras: the real save_to_disk round trip
    import datasets
    datasets.Dataset.from_list([{"user": str(r["user"]), "text": r["text"]} for r in ROWS]).save_to_disk(tmp_path / "ds")
    assert read_users(tmp_path / "ds") == EXPECTED


def test_datasets_folder_without_package_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: `import datasets` fails
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text("{}")
    with pytest.raises(ConfigError, match="pip install datasets"):
        read_users(tmp_path / "ds")


@pytest.mark.parametrize("writer,name", [(write_jsonl, "d.jsonl"), (write_csv, "d.csv"), (write_parquet, "d.parquet")])
def test_missing_text_column_names_file_and_column(tmp_path, writer, name):
    if name.endswith("parquet") and importlib.util.find_spec("pyarrow") is None:
        pytest.skip("pyarrow not installed")
    path = writer(tmp_path / name, ROWS)
    with pytest.raises(ConfigError) as err:
        read_users(path, "user", "body")
    assert err.value.key == "data.text-column" and "body" in str(err.value) and name in str(err.value)
    with pytest.raises(ConfigError) as err:
        read_users(path, "author", "text")
    assert err.value.key == "data.user-column" and "author" in str(err.value) and name in str(err.value)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.parquet", "empty.json"])
def test_empty_file_is_a_clear_error(tmp_path, name):
    (tmp_path / name).write_text("")
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        read_users(tmp_path / name)


def test_only_empty_texts_means_no_users(tmp_path):
    path = write_csv(tmp_path / "d.csv", [{"user": "a", "text": ""}, {"user": "b", "text": "  "}])
    with pytest.raises(ConfigError, match="no users"):
        read_users(path)


def test_unreadable_files(tmp_path):
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match=r"bin\.jsonl"):
        read_users(tmp_path / "bin.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"user": "a", "text": "x"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"broken\.jsonl.*line 2|line 2.*broken\.jsonl"):
        read_users(tmp_path / "broken.jsonl")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match=r"x\.parquet"):
        read_users(tmp_path / "x.parquet")
    (tmp_path / "d.xlsx").write_text("")
    with pytest.raises(ConfigError, match="extension"):
        read_users(tmp_path / "d.xlsx")
    with pytest.raises(ConfigError, match="does not exist"):
        read_users(tmp_path / "nope.csv")


def test_load_corpus_dispatches_by_extension(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS * 3)
    c = load_corpus(DataConfig(source=str(path), num_users=10, heldout_users=1), ModelConfig(seq_len=16), 0)
    assert c.num_users == 2 and c.heldout_counts.size == 1
    assert c.examples(0).shape[1] == 16
