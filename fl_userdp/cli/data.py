"""`fl-userdp assets`, `fl-userdp data-stats` and `fl-userdp plan` (real assets, users' data, budget planner)."""
from __future__ import annotations

import argparse
import json

import numpy as np

from .common import emit
from ..errors import ConfigError

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


# -- assets -------------------------------------------------------------------
def configure_assets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="DIR", help="cache folder (default $FL_USERDP_CACHE or ~/.cache/fl-userdp)")
    p.add_argument("--only", choices=["smollm2", "shakespeare"], help="fetch one asset only")
    p.add_argument("--export-hf", action="store_true",
                   help="also convert the GGUF once into a plain HF folder (<cache>/smollm2-hf; loads in seconds)")
    p.add_argument("--json", action="store_true")


def assets_cmd(a: argparse.Namespace) -> int:
    import time

    from ..assets import ASSETS, cache_dir, fetch_assets, gguf_path, hf_model_dir, shakespeare_dir

    t0 = time.perf_counter()
    names = (a.only,) if a.only else tuple(ASSETS)
    fetch_assets(a.cache, names, log=(lambda s: None) if a.json else print)
    payload = {"cache": str(cache_dir(a.cache))}
    if "smollm2" in names:
        payload["gguf"] = str(gguf_path(a.cache))
        if a.export_hf:
            from ..config import ModelConfig
            from .local.pretrained import export_hf_folder

            payload["hf_folder"] = str(export_hf_folder(ModelConfig(name=payload["gguf"]), hf_model_dir(a.cache)))
    if "shakespeare" in names:
        payload["shakespeare"] = str(shakespeare_dir(a.cache))
    payload["seconds"] = round(time.perf_counter() - t0, 2)
    emit(payload, a.json, "\n".join(f"{k}: {v}" for k, v in payload.items()))
    return 0


# -- shared: a corpus from --source -----------------------------------------------
def _source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", help="synthetic | shakespeare | a .txt (NAME: speech) file | .jsonl/.csv/.parquet/"
                                    "LEAF .json file | a datasets folder")
    p.add_argument("--model", default="tiny", help="tokenizer: tiny (bytes) or a local model folder / .gguf file")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per example (default 128)")
    p.add_argument("--vocab-size", type=int, default=128, help="byte tokenizer size for --model tiny (default 128)")
    p.add_argument("--num-users", type=int, default=1_000_000, help="cap on training users (default: all)")
    p.add_argument("--heldout-users", type=int, default=0, help="held-out users drawn first (default 0)")
    p.add_argument("--user-column", default="user")
    p.add_argument("--text-column", default="text")
    p.add_argument("--seed", type=int, default=0)


def _corpus(a: argparse.Namespace):
    from pathlib import Path

    from ..config import DataConfig, ModelConfig
    from ..data import load_corpus

    if a.source not in ("synthetic", "shakespeare") and not Path(a.source).exists():
        raise ConfigError("--source", a.source, "must be 'synthetic', 'shakespeare' or an existing path")
    if a.model != "tiny" and not Path(a.model).exists():
        raise ConfigError("--model", a.model, "must be 'tiny' or an existing local path")
    data = DataConfig(source=a.source, num_users=a.num_users, heldout_users=a.heldout_users,
                      user_column=a.user_column, text_column=a.text_column)
    model = ModelConfig(name=a.model, seq_len=a.seq_len, vocab_size=a.vocab_size)
    return load_corpus(data, model, a.seed)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {f"p{round(100 * q)}": float(np.quantile(values, q)) for q in QUANTILES}


# -- data-stats ---------------------------------------------------------------------
def configure_data_stats(p: argparse.ArgumentParser) -> None:
    _source_options(p)
    p.set_defaults(source="shakespeare")
    p.add_argument("--json", action="store_true")


def data_stats_cmd(a: argparse.Namespace) -> int:
    c = _corpus(a)
    payload = {"source": a.source, "seq_len": c.seq_len, "vocab_size": c.vocab_size,
               "training_users": int(c.num_users), "heldout_users": int(getattr(c, "heldout_counts", np.zeros(0)).size),
               "available_users": int(getattr(c, "available_users", c.num_users)),
               "examples": int(c.counts.sum()), "heldout_examples": int(c.heldout().shape[0]),
               "examples_per_user": _quantiles(c.counts), "mean_examples_per_user": float(c.counts.mean())}
    text = (f"source {a.source}: {payload['available_users']} users with text -> {payload['training_users']} training, "
            f"{payload['heldout_users']} held-out\n"
            f"examples ({c.seq_len} tokens each): {payload['examples']} training, {payload['heldout_examples']} held-out\n"
            "examples per user: " + " ".join(f"{k}={v:g}" for k, v in payload["examples_per_user"].items())
            + f" mean={payload['mean_examples_per_user']:.3g}")
    emit(payload, a.json, text)
    return 0


# -- plan -----------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None


def configure_plan(p: argparse.ArgumentParser) -> None:
    _source_options(p)
    p.add_argument("--counts-file", metavar="FILE", help="examples per user (JSON list or one integer a line) "
                                                         "instead of --source")
    p.add_argument("--examples-per-step", type=float, required=True, metavar="B",
                   help="compute budget: expected examples processed per step")
    p.add_argument("--steps", type=int, required=True, metavar="T")
    p.add_argument("--epsilon", type=float, required=True, metavar="E")
    p.add_argument("--delta", type=float, required=True, metavar="D")
    p.add_argument("--clip-norm", type=float, default=1.0, metavar="C")
    p.add_argument("--els-quantiles", type=_floats, default=None, help="quantiles of n_u tried as ELS k "
                                                                       "(default 0.5,0.75,0.9)")
    p.add_argument("--uls-quantiles", type=_floats, default=None, help="quantiles of n_u tried as ULS k "
                                                                       "(default 0.25,0.5,0.75,0.9)")
    p.add_argument("--json", action="store_true")


def plan_cmd(a: argparse.Namespace) -> int:
    from ..planner import ELS_QUANTILES, ULS_QUANTILES, format_plan, make_plan, read_counts

    if (a.counts_file is None) == (a.source is None):
        raise ConfigError("--source", a.source, "or --counts-file (exactly one) is required")
    counts = read_counts(a.counts_file) if a.counts_file else _corpus(a).counts
    plan = make_plan(counts, a.examples_per_step, a.steps, a.epsilon, a.delta, a.clip_norm,
                     a.els_quantiles or ELS_QUANTILES, a.uls_quantiles or ULS_QUANTILES)
    payload = plan.to_dict()
    payload["source"] = a.counts_file or a.source
    if a.json:
        print(json.dumps(payload, sort_keys=True))
    else:
        print(format_plan(plan))
    return 0
