"""`fl-userdp assets`, `fl-userdp data-stats` and `fl-userdp plan` (real assets, users' data, budget planner).

`data-stats` and `plan` read the run's config exactly as `fl-userdp run` does (`--config FILE.toml`,
`--set key=value`, the same defaults), with the dedicated options (`--source`, `--model`, `--seq-len`, ...)
on top, so the examples they count are the run's examples: rows of `model.seq-len` tokens.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from .common import emit
from ..errors import ConfigError

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
OUTSIDE = ("outside the DP guarantee: these statistics of the users' data (counts, quantiles, p100 = one user's "
           "count, and what is derived from them) are computed without noise; keep them out of what you publish")


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
            from ..local.pretrained import export_hf_folder

            payload["hf_folder"] = str(export_hf_folder(ModelConfig(name=payload["gguf"]), hf_model_dir(a.cache)))
    if "shakespeare" in names:
        payload["shakespeare"] = str(shakespeare_dir(a.cache))
    payload["seconds"] = round(time.perf_counter() - t0, 2)
    emit(payload, a.json, "\n".join(f"{k}: {v}" for k, v in payload.items()))
    return 0


# -- shared: the run's config, and a corpus from it ------------------------------------
# Dedicated option (argparse dest) -> run-config key. The options override --config/--set;
# unset, the run config (defaults < --config < --set) decides, so k is counted in the run's units.
_OPTION_KEYS = {"source": "data.source", "model": "model.name", "seq_len": "model.seq-len",
                "vocab_size": "model.vocab-size", "num_users": "data.num-users",
                "heldout_users": "data.heldout-users", "user_column": "data.user-column",
                "text_column": "data.text-column", "seed": "seed"}


def source_options(p: argparse.ArgumentParser) -> None:
    from ..config import DataConfig, ModelConfig, RunConfig

    d, m = DataConfig(), ModelConfig()
    p.add_argument("--config", metavar="FILE.toml",
                   help="the run's TOML config (as for `fl-userdp run`): data source, model/tokenizer, seq-len, "
                        "users, columns and seed come from it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one run-config key (repeatable), as for `fl-userdp run`")
    p.add_argument("--source", help=f"data.source: synthetic | shakespeare | a .txt (NAME: speech) file | "
                                    f".jsonl/.csv/.parquet/LEAF .json file | a datasets folder (default {d.source})")
    p.add_argument("--model", help=f"model.name, the tokenizer: tiny (bytes) or a local model folder / .gguf file "
                                   f"(default {m.name})")
    p.add_argument("--seq-len", type=int, help=f"model.seq-len: tokens per example row, the unit k caps "
                                               f"(default {m.seq_len}, as for a run)")
    p.add_argument("--vocab-size", type=int, help=f"model.vocab-size: byte tokenizer size for model tiny "
                                                  f"(default {m.vocab_size})")
    p.add_argument("--num-users", type=int, help=f"data.num-users: cap on training users (default {d.num_users})")
    p.add_argument("--heldout-users", type=int, help=f"data.heldout-users: held-out users drawn first "
                                                     f"(default {d.heldout_users})")
    p.add_argument("--user-column", help=f"data.user-column (default {d.user_column})")
    p.add_argument("--text-column", help=f"data.text-column (default {d.text_column})")
    p.add_argument("--seed", type=int, help=f"seed (default {RunConfig().seed})")


def source_given(a: argparse.Namespace) -> bool:
    """Whether the user named a data source: --source, or --config / --set (then the config's data.source)."""
    return a.source is not None or a.config is not None or bool(a.set)


def run_config(a: argparse.Namespace):
    """The run's config, as `fl-userdp run` builds it, with the dedicated options on top.

    An error from a value a dedicated option gave names that option (`--seq-len`, not `model.seq-len`).
    """
    from .sim import config_from_args

    given = {dest: getattr(a, dest) for dest in _OPTION_KEYS if getattr(a, dest) is not None}
    sets = [*a.set, *(f"{_OPTION_KEYS[dest]}={value}" for dest, value in given.items() if dest != "seed")]
    try:
        return config_from_args(argparse.Namespace(config=a.config, set=sets, rounds=None, out=None,
                                                   seed=given.get("seed"), ray_address=None))
    except ConfigError as err:
        option = {_OPTION_KEYS[dest]: dest for dest in given}.get(err.key)
        if option is None:
            raise
        raise ConfigError("--" + option.replace("_", "-"), err.value, err.requirement) from None


def row_len(cfg) -> int | None:
    """Tokens per example row (None for the linear task, whose examples are feature rows)."""
    return None if cfg.model.name == "linear" else int(cfg.model.seq_len)


def corpus(cfg):
    """The corpus a run of `cfg` trains on: your own task's (its factory's corpus, when it has one) or the
    config's data source."""
    from ..config import is_task_spec
    from ..data import load_corpus

    if is_task_spec(cfg.model.name):
        from ..local.task import cached_task

        return cached_task(cfg).corpus
    return load_corpus(cfg.data, cfg.model, cfg.seed)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {f"p{round(100 * q)}": float(np.quantile(values, q)) for q in QUANTILES}


# -- data-stats ---------------------------------------------------------------------
def configure_data_stats(p: argparse.ArgumentParser) -> None:
    source_options(p)
    p.add_argument("--json", action="store_true")


def data_stats_cmd(a: argparse.Namespace) -> int:
    from ..data.inventory import data_report, dropped_text

    cfg = run_config(a)
    c = corpus(cfg)
    seq_len = row_len(cfg) if getattr(c, "seq_len", None) is not None else None  # token rows, or a task's own
    counts = np.asarray(c.counts, dtype=np.int64)
    held = getattr(c, "heldout_counts", None)  # a task's own corpus may only have heldout()
    held_rows = int(np.sum(held)) if held is not None else len(np.asarray(c.heldout()))
    held_users = None if held is None else len(held)
    used = data_report(c, cfg.data)
    source = cfg.data.source if seq_len or cfg.model.name == "linear" else f"{cfg.model.name} (its corpus)"
    payload = {"source": source, "seq_len": seq_len, "vocab_size": getattr(c, "vocab_size", None),
               "training_users": int(c.num_users), "heldout_users": held_users,
               "available_users": int(getattr(c, "available_users", c.num_users + (held_users or 0))),
               "examples": int(counts.sum()), "heldout_examples": held_rows,
               "examples_per_user": _quantiles(counts), "mean_examples_per_user": float(counts.mean()),
               "dropped": used["dropped"], "num_users_capped": used["num_users_capped"], "guarantee": OUTSIDE}
    unit = f"rows of {seq_len} tokens, model.seq-len" if seq_len else "feature rows (linear task)" \
        if cfg.model.name == "linear" else "rows of your task's corpus"
    notes = [t for t in (dropped_text(used["dropped"]), used["num_users_capped"]) if t]
    text = (f"source {source}: {payload['available_users']} users with text -> "
            f"{payload['training_users']} training, {'?' if held_users is None else held_users} held-out\n"
            + "".join(f"{note}\n" for note in notes)
            + f"examples ({unit}): {payload['examples']} training, {payload['heldout_examples']} held-out\n"
            "examples per user: " + " ".join(f"{k}={v:g}" for k, v in payload["examples_per_user"].items())
            + f" mean={payload['mean_examples_per_user']:.3g}\n{OUTSIDE}")
    emit(payload, a.json, text)
    return 0


def budget_options(p: argparse.ArgumentParser) -> None:
    """--examples-per-step, --steps, --epsilon, --delta (plan and advise)."""
    p.add_argument("--examples-per-step", type=float, required=True, metavar="B",
                   help="compute budget: expected examples processed per step")
    p.add_argument("--steps", type=int, required=True, metavar="T")
    p.add_argument("--epsilon", type=float, required=True, metavar="E")
    p.add_argument("--delta", type=float, required=True, metavar="D")
    p.add_argument("--bands", type=int, default=None, metavar="B",
                   help="banded correlated noise over B cyclic groups (default: the run config's privacy.bands, 1)")
    p.add_argument("--bandmf-coefficients", choices=["sqrt", "optimized"], default=None,
                   help="the banded strategy (default: the run config's privacy.bandmf-coefficients, sqrt)")


def banded_options(a: argparse.Namespace, cfg) -> dict:
    """bands= and coefficients= for the planner and the advisor: the options, else the run config's."""
    bands = cfg.privacy.bands if a.bands is None else a.bands
    if bands < 1:
        raise ConfigError("--bands", bands, "must be >= 1")
    return {"bands": bands, "coefficients": a.bandmf_coefficients or cfg.privacy.bandmf_coefficients}


# -- plan -----------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None


def configure_plan(p: argparse.ArgumentParser) -> None:
    source_options(p)
    p.add_argument("--counts-file", metavar="FILE", help="examples per user, in rows of model.seq-len tokens (JSON "
                                                         "list or one integer a line), instead of a data source "
                                                         "(--source, --config, --set)")
    budget_options(p)
    p.add_argument("--clip-norm", type=float, default=1.0, metavar="C")
    p.add_argument("--els-quantiles", type=_floats, default=None, help="quantiles of n_u tried as ELS k "
                                                                       "(default 0.5,0.75,0.9)")
    p.add_argument("--uls-quantiles", type=_floats, default=None, help="quantiles of n_u tried as ULS k "
                                                                       "(default 0.25,0.5,0.75,0.9)")
    p.add_argument("--pilot", metavar="FILE.json", help="score per unit of measured signal with a pilot saved by "
                                                        "`fl-userdp advise --save-pilot` (the averaging gain)")
    p.add_argument("--json", action="store_true")


def plan_cmd(a: argparse.Namespace) -> int:
    from ..study.planner import ELS_QUANTILES, ULS_QUANTILES, format_plan, make_plan, read_counts

    if a.counts_file is not None and source_given(a):
        raise ConfigError("--counts-file", a.counts_file, "replaces the data source: give either it or "
                                                          "--source/--config/--set, not both")
    if a.counts_file is None and not source_given(a):
        raise ConfigError("--source", a.source, "(or --config/--set naming the run's data) or --counts-file "
                                                "(exactly one) is required")
    cfg = run_config(a)
    counts = read_counts(a.counts_file) if a.counts_file else corpus(cfg).counts

    plan = make_plan(counts, a.examples_per_step, a.steps, a.epsilon, a.delta, a.clip_norm,
                     a.els_quantiles or ELS_QUANTILES, a.uls_quantiles or ULS_QUANTILES, seq_len=row_len(cfg),
                     pilot=read_pilot(a.pilot) if a.pilot else None, **banded_options(a, cfg))
    payload = plan.to_dict()
    payload["source"] = a.counts_file or cfg.data.source
    payload["guarantee"] = OUTSIDE
    if a.json:
        print(json.dumps(payload, sort_keys=True))
    else:
        print(format_plan(plan))
        print(OUTSIDE)
    return 0


def read_pilot(path: str):
    from pathlib import Path

    from ..study.advisor import Pilot

    from .. import json_input

    try:
        data = json_input.loads(Path(path).read_text(encoding="utf-8"))
    except json_input.BadJson as err:
        raise ConfigError("--pilot", path, f"is not usable JSON ({err})") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError("--pilot", path, f"is not a readable JSON file ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError("--pilot", path, "must hold a JSON object (as --save-pilot writes)")
    return Pilot.from_dict(data.get("pilot", data), "--pilot")
