#!/usr/bin/env python
"""A held-out, user-partitioned text corpus built offline from the Python standard library's own prose.

    python experiments/compute/heldout_corpus.py                       # -> ~/.cache/fl-userdp/heldout/corpus.jsonl
    python experiments/compute/heldout_corpus.py --max-users 20 --out /tmp/small.jsonl

**What it is for.** Validating `fl-userdp advise` on users nobody tuned anything on: no test, no tuning
run and no default reads it, and the corpus is written outside the repository. It is the format
`data.source=<file>.jsonl` reads (`fl_userdp/data/files.py`): one `{"user": ..., "text": ...}` object per line.

**Where the text comes from.** The `.py` files of the standard library of the Python running this script
(`sysconfig.get_paths()["stdlib"]`; CPython 3.11.7 for the figures below), parsed with `ast` and `tokenize`,
never imported. One **user** is one module (its dotted name, e.g. `email.mime.text`): a file written and
maintained by its own authors on its own subject. Its **examples** are its prose, in source order:

* every docstring (module, class, function, method; `inspect.cleandoc`-dedented), and
* every block of consecutive `#` comment lines (joined by spaces, `#` stripped) of at least 40 characters
  and 5 words with letters, unless it starts with `!` (a shebang) or mentions copyright, licence or a
  coding declaration (file headers).

Left out: test code (any path part starting with `test`, `idle_test`), `site-packages`, and generated
modules (`encodings/`, `pydoc_data/`, `_sysconfigdata*`, `*_parsetab`). Text is folded to ASCII (NFKD,
then any non-ASCII character dropped; 132 characters in the whole corpus), whitespace inside a line is
kept, and within a user an example identical to an earlier one is dropped. Users are sorted by name; the
file is byte-identical for the same Python build and standard library (its SHA-256 is printed).

**Licence.** The Python standard library is distributed under the PSF License Agreement (the Python
Software Foundation License, version 2), which permits copying and derived works with its notice; the
corpus is derived from it, kept on this machine only, and not redistributed.

**What it yields** (CPython 3.11.7 on this project's machines; the counts from `fl-userdp data-stats
--source <file> --json --num-users <users> --heldout-users 0`, rows of model.seq-len 32 byte tokens,
every user counted): 609 modules read, 580 users with text, 15,548 texts (3.3 MB), 84,759 rows; rows per
user median 60.5, p10 5, p90 373, largest 2,922 (`_pydecimal`; `tkinter` has the most texts, 501), mean
146; SHA-256 03c65e38df1491e39eefb610e417e204f43bfc69ebf70e5af216a533c61a504c. With data-stats' defaults
(32 users held out, data.num-users 1024) the same file gives 548 training users with 79,701 rows
(median 59.5) and 5,058 held-out rows. `--max-users N` keeps the first N users (by name) for a quick check.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import io
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tokenize
import unicodedata
from pathlib import Path

OUT = Path.home() / ".cache" / "fl-userdp" / "heldout" / "corpus.jsonl"
GENERATED = ("encodings", "pydoc_data")
MIN_COMMENT_CHARS, MIN_COMMENT_WORDS = 40, 5
HEADER_WORDS = ("copyright", "license", "licence", "-*- coding", "coding:", "coding=")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_files(root: Path) -> list[tuple[str, Path]]:
    """(dotted module name, path) of every non-test, non-generated .py file of the standard library, by name."""
    out = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        top = here == root
        dirs[:] = [d for d in dirs if not (d.startswith("test") or d in ("idle_test", "__pycache__")
                                           or (top and d in ("site-packages", "dist-packages", *GENERATED)))]
        for f in files:
            if not f.endswith(".py") or f.startswith(("test", "_sysconfigdata")) or f.endswith("_parsetab.py"):
                continue
            parts = (here / f).relative_to(root).parts
            names = list(parts[:-1]) + ([] if f == "__init__.py" else [f[:-3]])
            out.append((".".join(names), here / f))
    return sorted(out)


def ascii_text(text: str) -> str:
    """NFKD-folded, non-ASCII characters dropped, trailing spaces of each line and blank ends stripped."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "\n".join(line.rstrip() for line in folded.splitlines()).strip()


def docstrings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, docstring) of the module and every class and function in it."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append((0 if isinstance(node, ast.Module) else node.lineno, doc))
    return out


def comment_blocks(source: str) -> list[tuple[int, str]]:
    """(first line, text) of each run of consecutive comment lines that reads as prose."""
    blocks: list[tuple[int, list[str]]] = []
    last = -2
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        text = tok.string.lstrip("#").strip()
        if line == last + 1 and blocks:
            blocks[-1][1].append(text)
        else:
            blocks.append((line, [text]))
        last = line
    out = []
    for line, lines in blocks:
        text = " ".join(t for t in lines if t)
        low = text.lower()
        words = [w for w in text.split() if any(ch.isalpha() for ch in w)]
        if (len(text) >= MIN_COMMENT_CHARS and len(words) >= MIN_COMMENT_WORDS
                and not text.startswith("!") and not any(w in low for w in HEADER_WORDS)):
            out.append((line, text))
    return out


def examples(path: Path) -> tuple[list[str], int]:
    """A module's prose in source order, ASCII, without repeats (empty when it does not parse), and the
    number of non-ASCII characters it had before folding."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        found = docstrings(tree) + comment_blocks(source)
    except (SyntaxError, UnicodeDecodeError, tokenize.TokenError, ValueError):
        return [], 0
    seen: set[str] = set()
    out, non_ascii = [], 0
    for _, raw in sorted(found, key=lambda item: item[0]):
        text = ascii_text(inspect.cleandoc(raw))
        if text and text not in seen:
            seen.add(text)
            out.append(text)
            non_ascii += sum(ord(ch) > 127 for ch in raw)
    return out, non_ascii


def build(out: Path, max_users: int | None = None) -> tuple[int, int, int, str]:
    """Write the corpus; (users, lines, non-ASCII characters folded or dropped, sha256 of the file)."""
    users = lines = folded = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="ascii", newline="\n") as f:
        for name, path in module_files(stdlib_root()):
            if max_users is not None and users >= max_users:
                break
            texts, non_ascii = examples(path)
            if not texts:
                continue
            users += 1
            folded += non_ascii
            for text in texts:
                f.write(json.dumps({"user": name, "text": text}, ensure_ascii=True) + "\n")
                lines += 1
    tmp.replace(out)
    return users, lines, folded, hashlib.sha256(out.read_bytes()).hexdigest()


def data_stats(path: Path, users: int, seq_len: int = 32) -> dict:
    """`fl-userdp data-stats --json` over every user (none held out), in rows of `seq_len` byte tokens."""
    cmd = [sys.executable, "-m", "fl_userdp", "data-stats", "--source", str(path), "--seq-len", str(seq_len),
           "--num-users", str(users), "--heldout-users", "0", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"data-stats failed ({' '.join(cmd)}): {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT, help=f"where to write the JSONL corpus (default {OUT})")
    ap.add_argument("--max-users", type=int, default=None, help="keep only the first N users (by name)")
    ap.add_argument("--no-stats", action="store_true", help="do not run fl-userdp data-stats on the result")
    args = ap.parse_args(argv)
    if args.max_users is not None and args.max_users < 1:
        ap.error(f"--max-users must be at least 1, got {args.max_users}")
    users, lines, folded, digest = build(args.out, args.max_users)
    size = args.out.stat().st_size
    print(f"corpus: {args.out} ({users} users, {lines} texts, {size:,} bytes, {folded} non-ASCII characters "
          f"folded; python {sys.version.split()[0]}; sha256 {digest})")
    if not args.no_stats:
        s = data_stats(args.out, users)
        q = s["examples_per_user"]
        print(f"data-stats (model.seq-len {s['seq_len']} byte rows): users {s['available_users']}, "
              f"rows {s['examples'] + s['heldout_examples']}, median rows per user {q['p50']:g} "
              f"(p10 {q['p10']:g}, p90 {q['p90']:g}, max {q['p100']:g}, mean {s['mean_examples_per_user']:.1f})")
        print(json.dumps({"users": s["available_users"], "rows": s["examples"] + s["heldout_examples"],
                          "median_rows_per_user": q["p50"], "sha256": digest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
