"""MkDocs hook: files the site serves from experiments/, where their scripts write them, without a copy in docs/.

* every figure (png, svg) as figures/<path under experiments>: a results page shows
  `../figures/llm/eval_loss.png`;
* the pages of `PAGES` (a study's own Markdown, e.g. its pre-registration) under the docs path given there.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PAGES = {"results/compute-preregistered.md": EXPERIMENTS / "compute" / "PREREGISTERED.md"}


def figures() -> dict[str, Path]:
    """figures/<relative path> -> the image file under experiments/."""
    return {f"figures/{p.relative_to(EXPERIMENTS).as_posix()}": p
            for p in sorted(EXPERIMENTS.rglob("*")) if p.suffix in (".png", ".svg") and p.is_file()}


def served() -> dict[str, Path]:
    """Every docs path this hook adds -> its file under experiments/."""
    return {**figures(), **PAGES}


def on_files(files, config):
    for uri, path in served().items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
