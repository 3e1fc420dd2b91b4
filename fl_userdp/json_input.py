"""JSON that users hand us (data files, --pilot, --counts-file), read strictly.

Python's `json` lets three things through that later go wrong far from their cause: a key given twice in
one object (the last one silently wins: a duplicated user column puts every row under one user), a string
with a lone surrogate escape such as "\\ud800" (valid JSON text, not Unicode: encoding it fails in the
tokenizer), and nesting deeper than the interpreter's recursion limit (a RecursionError). `loads` refuses
each with `BadJson`, a ValueError whose message says what and where; callers turn it into a one-line
`ConfigError` naming their key. Syntax errors stay `json.JSONDecodeError` (also a ValueError).
"""
from __future__ import annotations

import json
from typing import Any


class BadJson(ValueError):
    """JSON text that parses but cannot be used as it stands."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadJson(f"the key {_shown(key)} appears twice in one object")
        out[key] = value
    return out


def _shown(text: str) -> str:
    return ascii(text) if any("\ud800" <= ch <= "\udfff" for ch in text) else repr(text)


def _check_unicode(value: Any) -> None:
    """Every string (and key) encodes as UTF-8; walked without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                bad = text[err.start:err.end]
                raise BadJson(f"a string holds a lone surrogate ({ascii(bad)[1:-1]}), which is not Unicode") from None


def loads(text: str) -> Any:
    """json.loads, refusing duplicate keys, lone surrogates and nesting too deep to parse (`BadJson`)."""
    try:
        value = json.loads(text, object_pairs_hook=_object)
    except RecursionError:
        raise BadJson("nests arrays or objects too deeply to read") from None
    _check_unicode(value)
    return value
