"""Users' own data: {user: [text, ...]} from JSONL, CSV, Parquet, LEAF JSON or a `datasets` folder.

Formats (chosen by `read_users(path, user_column, text_column)` from the path):

* `.jsonl` / `.ndjson`: one JSON object per line, with the user and text keys.
* `.csv` / `.tsv`: a header row naming the columns (stdlib `csv`).
* `.parquet` / `.pq`: read with `pyarrow` (only the two columns are loaded).
* `.json`: LEAF format, `{"users": [...], "num_samples": [...],
  "user_data": {u: {"x": [...], "y": [...]}}}`; a text is an `x` entry (a
  string, or a list joined with spaces), the column names are not used.
* a folder saved with `datasets`' `save_to_disk` (needs `pip install datasets`);
  a `DatasetDict` uses its "train" split (or its only split).

User ids are turned into strings. Rows with a null or empty (blank) user id
or text are left out, and so are users with no text left; the returned
`UserTexts` (a dict) records them in `.dropped` (`inventory.Dropped`: rows by
reason, users), which the run and `fl-userdp data-stats` report. Every
problem (unreadable file, missing column, no users) raises `ConfigError`
keyed `data.source` or `data.user-column` / `data.text-column`, naming the file.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable

from .. import json_input
from ..errors import ConfigError
from .inventory import NO_TEXT, NO_USER, Dropped

EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
              ".pq": "parquet", ".json": "leaf"}


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError("data.source", str(path), why)


def _missing(path: Path, key: str, column: str, available: Iterable[str]) -> ConfigError:
    avail = sorted(str(a) for a in available)
    return ConfigError(key, column, f"is not a column of {path} (columns: {', '.join(avail[:20]) or 'none'})")


class UserTexts(dict):
    """{user: [text, ...]}, with what reading left out in `.dropped`."""

    def __init__(self, users: dict[str, list[str]], dropped: Dropped) -> None:
        super().__init__(users)
        self.dropped = dropped


def _blank(value: Any) -> bool:
    """None, NaN (a missing cell read as a float) or a string of whitespace."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _group(path: Path, pairs: Iterable[tuple[Any, Any]]) -> UserTexts:
    users: dict[str, list[str]] = {}
    seen: set[str] = set()
    dropped = Dropped()
    for user, text in pairs:
        if _blank(user):
            dropped.add_row(NO_USER)
            continue
        seen.add(str(user))
        if _blank(text):
            dropped.add_row(NO_TEXT)
            continue
        users.setdefault(str(user), []).append(str(text))
    dropped.users = len(seen - users.keys())
    if not users:
        raise _bad(path, "holds no users with text (empty file or empty text column)")
    return UserTexts(users, dropped)


def _check_columns(path: Path, columns: Iterable[str], user_column: str, text_column: str) -> None:
    cols = set(columns)
    if user_column not in cols:
        raise _missing(path, "data.user-column", user_column, cols)
    if text_column not in cols:
        raise _missing(path, "data.text-column", text_column, cols)


def read_jsonl(path: Path, user_column: str, text_column: str) -> UserTexts:
    rows: list[dict] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json_input.loads(line)
                except json.JSONDecodeError as err:
                    raise _bad(path, f"is not valid JSONL (line {lineno}: {err.msg})") from None
                except json_input.BadJson as err:
                    raise _bad(path, f"is not valid JSONL (line {lineno}: {err})") from None
                if not isinstance(row, dict):
                    raise _bad(path, f"is not valid JSONL (line {lineno} is not an object)")
                rows.append(row)
    except (OSError, UnicodeDecodeError) as err:
        raise _bad(path, f"is not readable ({err.__class__.__name__})") from None
    if not rows:
        raise _bad(path, "holds no rows (empty file)")
    for row in rows:
        _check_columns(path, row.keys(), user_column, text_column)
    return _group(path, ((r[user_column], r[text_column]) for r in rows))


def read_csv(path: Path, user_column: str, text_column: str) -> UserTexts:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if reader.fieldnames is None:
                raise _bad(path, "holds no header row (empty file)")
            _check_columns(path, reader.fieldnames, user_column, text_column)
            rows = [(r[user_column], r[text_column]) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise _bad(path, f"is not readable as CSV ({err.__class__.__name__})") from None
    return _group(path, rows)


def read_parquet(path: Path, user_column: str, text_column: str) -> UserTexts:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _bad(path, "needs pyarrow to read Parquet (pip install pyarrow)") from None
    try:
        schema = pq.read_schema(path)
        _check_columns(path, schema.names, user_column, text_column)
        table = pq.read_table(path, columns=[user_column, text_column])
    except ConfigError:
        raise
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
        raise _bad(path, f"is not readable as Parquet ({err.__class__.__name__})") from None
    return _group(path, zip(table.column(user_column).to_pylist(), table.column(text_column).to_pylist()))


def _leaf_text(x: Any) -> str | None:
    if x is None:
        return None
    if isinstance(x, str):
        return x
    if isinstance(x, (list, tuple)):
        return " ".join(t for t in (_leaf_text(v) for v in x) if t is not None)
    return str(x)


def read_leaf(path: Path) -> UserTexts:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json_input.loads(f.read())
    except (OSError, UnicodeDecodeError) as err:
        raise _bad(path, f"is not readable ({err.__class__.__name__})") from None
    except json.JSONDecodeError as err:
        raise _bad(path, f"is not valid JSON (line {err.lineno}: {err.msg})") from None
    except json_input.BadJson as err:
        raise _bad(path, f"is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("user_data"), dict):
        raise _missing(path, "data.source", "user_data", doc.keys() if isinstance(doc, dict) else [])
    users = doc.get("users") or list(doc["user_data"])
    pairs = []
    for u in users:
        record = doc["user_data"].get(u)
        if not isinstance(record, dict) or "x" not in record:
            raise _missing(path, "data.text-column", f"user_data[{u!r}].x", record.keys() if isinstance(record, dict) else [])
        try:
            pairs.extend((u, _leaf_text(x)) for x in record["x"])
        except RecursionError:
            raise _bad(path, f"is not valid LEAF JSON (user_data[{u!r}].x nests lists too deeply)") from None
    return _group(path, pairs)


def read_hf_folder(path: Path, user_column: str, text_column: str) -> UserTexts:
    try:
        import datasets
    except ImportError:
        raise _bad(path, "is a Hugging Face datasets folder; reading it needs `pip install datasets`") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise _bad(path, f"is not readable with datasets.load_from_disk ({err.__class__.__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise _bad(path, f"is a DatasetDict without a 'train' split (splits: {sorted(ds)})")
    _check_columns(path, ds.column_names, user_column, text_column)
    return _group(path, zip(ds[user_column], ds[text_column]))


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json"))


def read_users(path: str | Path, user_column: str = "user", text_column: str = "text") -> UserTexts:
    """{user: [text, ...]} of a user-partitioned file or `datasets` folder (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise _bad(p, "does not exist")
    if p.is_dir():
        if is_hf_folder(p):
            return read_hf_folder(p, user_column, text_column)
        raise _bad(p, "is a folder but not a `datasets` save_to_disk folder (no dataset_info.json/state.json)")
    kind = EXTENSIONS.get(p.suffix.lower())
    if kind == "jsonl":
        return read_jsonl(p, user_column, text_column)
    if kind == "csv":
        return read_csv(p, user_column, text_column)
    if kind == "parquet":
        return read_parquet(p, user_column, text_column)
    if kind == "leaf":
        return read_leaf(p)
    raise _bad(p, f"has an unknown extension (use one of {', '.join(sorted(EXTENSIONS))}, .txt, or a datasets folder)")
