"""The documentation is checked without building it (CI builds it with `mkdocs build --strict` in .ci/run):

* the generated reference pages (docs/reference/cli.md, config.md) are what docs/gen_reference.py writes from the
  code now — change a command, an option or a config key and this fails until the pages are regenerated;
* every page mkdocs.yml's nav names exists (in docs/, or served from experiments/ by docs/hooks.py), and every
  page under docs/ is in the nav;
* every relative link and image in docs/**/*.md, README.md and experiments/README.md points at a file that
  exists, and every #anchor at a heading of that page (slugs as MkDocs' toc extension makes them).
"""
from __future__ import annotations

import importlib.util
import os
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def served() -> dict[str, Path]:
    """docs path -> file, for what the hook adds (without importing mkdocs: the hook's own tables)."""
    source = (DOCS / "hooks.py").read_text()
    scope: dict = {"__file__": str(DOCS / "hooks.py")}
    exec(compile(source.replace("from mkdocs.structure.files import File\n", ""), "docs/hooks.py", "exec"), scope)
    return scope["served"]()


def nav_pages() -> list[str]:
    """The .md paths named in mkdocs.yml's nav (read as text: PyYAML is not a test dependency)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:"):]
    return re.findall(r"([\w./-]+\.md)\s*$", nav, re.M)


def slug(heading: str) -> str:
    """Python-Markdown's toc slugify (MkDocs' default): ASCII-folded, word characters and hyphens, lower case."""
    value = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for heading in re.findall(r"(?m)^#{1,6} +(.+?)\s*#*\s*$", text):
        base, n = slug(re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading)), 1
        name = base
        while name in out:
            name, n = f"{base}_{n}", n + 1
        out.add(name)
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


def test_the_generated_reference_pages_match_the_code():
    gen = load("gen_reference", DOCS / "gen_reference.py")
    stale = [str(p.relative_to(ROOT)) for p in gen.stale()]
    assert not stale, f"{stale} differ from the code: run `python docs/gen_reference.py`"


def test_the_reference_names_every_command_option_and_config_key():
    from fl_userdp.cli import COMMANDS, build_parser
    from fl_userdp.config import SCHEMA

    cli = (DOCS / "reference" / "cli.md").read_text()
    config = (DOCS / "reference" / "config.md").read_text()
    for name in COMMANDS:
        assert f"\n## {name}\n" in cli, name
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"`{opt}" in cli, (name, opt)
    for key in SCHEMA:
        assert f"| `{key}` |" in config, key
    described = [line for line in config.splitlines() if line.startswith("| `")]
    assert all(not line.rstrip().endswith("|  |") for line in described), "a config key without a comment"


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    pages = nav_pages()
    extra = served()
    assert pages and len(pages) == len(set(pages)), pages
    for page in pages:
        assert (DOCS / page).is_file() or page in extra, f"mkdocs.yml names {page}, which does not exist"
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk - set(pages) == set(), f"pages missing from mkdocs.yml's nav: {sorted(on_disk - set(pages))}"


MARKDOWN = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md", ROOT / "experiments" / "README.md"]


def resolve(path: Path, target: str, extra: dict[str, Path]) -> Path:
    """The file a relative link of `path` names: under docs/, what the hook serves there, if it does."""
    dest = Path(os.path.normpath(path.parent / target)) if target else path
    try:
        return extra.get(dest.relative_to(DOCS).as_posix(), dest)
    except ValueError:
        return dest


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(path):
    extra = served()
    for link in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        dest = resolve(path, target, extra)
        assert dest.exists(), f"{path.relative_to(ROOT)}: broken link {link}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{path.relative_to(ROOT)}: no heading #{anchor} in {dest.name}"


def test_the_anchor_slugs_are_mkdocs_own():
    assert slug("Benchmark: the device path (`experiments/bench_gpu.py`)".replace("`", "")) == \
        "benchmark-the-device-path-experimentsbench_gpupy"
    assert slug("What the guarantee covers") == "what-the-guarantee-covers"
