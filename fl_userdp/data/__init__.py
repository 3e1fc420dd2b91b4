"""User-partitioned datasets (pure numpy: importing this never imports torch).

`load_corpus(data_cfg, model_cfg, seed)` returns a `UserCorpus` for
`data.source`: currently only "synthetic" (`SyntheticTextCorpus`).
"""
from __future__ import annotations

from ..config import DataConfig, ModelConfig
from ..errors import ConfigError
from .base import UserCorpus
from .synthetic_text import SyntheticTextCorpus

__all__ = ["UserCorpus", "SyntheticTextCorpus", "load_corpus"]


def load_corpus(data_cfg: DataConfig, model_cfg: ModelConfig, seed: int) -> UserCorpus:
    """The corpus named by `data_cfg.source`, seeded by `seed`."""
    if data_cfg.source != "synthetic":
        raise ConfigError("data.source", data_cfg.source, "must be 'synthetic' (file loaders are not implemented yet)")
    if data_cfg.num_users < 1:
        raise ConfigError("data.num-users", data_cfg.num_users, "must be >= 1 (the corpus is empty)")
    return SyntheticTextCorpus(data_cfg, model_cfg, seed)
