"""Run all rounds of one mode: resume, loop, log, checkpoint (no Flower here).

`prepare(cfg)` loads what the server needs before any engine starts (user
counts, initial trainable weights, σ per mode), so bad input fails fast with
a ConfigError. `run_mode` drives a `UserDPStrategy` over a transport and
writes `metrics.jsonl` and `checkpoint-<mode>.npz` in the output folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fl_userdp import report
from fl_userdp.accounting import calibrate_noise
from fl_userdp.config import RunConfig
from fl_userdp.errors import ConfigError

from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .strategy import Evaluator, Transport, UserDPStrategy


@dataclass
class Setup:
    counts: np.ndarray
    init_weights: list[np.ndarray]
    sigmas: dict[str, float] = field(default_factory=dict)


def noise_multiplier(cfg: RunConfig) -> float:
    """privacy.noise-multiplier, or σ calibrated for (target-epsilon, delta) over train.rounds."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    sigma, _ = calibrate_noise(p.mode, p.target_epsilon, p.delta, p.sampling_rate, cfg.train.rounds,
                               p.max_examples_per_user, p.accountant)
    return sigma


def prepare(cfg: RunConfig, modes: list[str] | None = None) -> Setup:
    """Corpus counts, initial weights (same seed as the nodes), σ for each mode."""
    from fl_userdp.data import load_corpus

    from .strategy import with_mode

    if cfg.model.name != "linear":  # the linear task is numpy only
        from fl_userdp.local.model import build_model, get_trainable

    corpus = load_corpus(cfg.data, cfg.model, cfg.seed)
    init = [np.zeros(cfg.model.dim)] if cfg.model.name == "linear" else get_trainable(build_model(cfg.model, cfg.seed))
    setup = Setup(np.asarray(corpus.counts, np.int64), init)
    for mode in modes or [cfg.privacy.mode]:
        setup.sigmas[mode] = noise_multiplier(with_mode(cfg, mode))
    return setup


@dataclass
class ModeResult:
    mode: str
    noise_multiplier: float
    records: list[dict[str, Any]]
    epsilon: float
    stop_reason: str | None
    resumed_from: int = 0
    strategy: UserDPStrategy | None = None


def check_resume(cfg: RunConfig, out: str | Path, modes: list[str]) -> None:
    """Before anything starts: every checkpoint `--resume` would load must be trustworthy.

    Raises ConfigError (one line) for a checkpoint without a ledger, with a ledger that does not match its
    round, written for another config, or missing while metrics.jsonl already holds rounds of that mode
    (a fresh start would reset the privacy budget).
    """
    from .strategy import check_identity, with_mode

    out = Path(out)
    for mode in modes:
        ckpt = checkpoint_path(out, mode)
        if ckpt.exists():
            meta, _ = load_checkpoint(ckpt)
            check_identity(meta, with_mode(cfg, mode))
        elif any(r.get("mode") == mode for r in report.read_records(out / report.METRICS)):
            raise ConfigError("--resume", str(ckpt), f"is missing but {out / report.METRICS} already holds {mode} "
                              "rounds; refusing to resume (the budget would reset); run without --resume to start over")


def run_mode(cfg: RunConfig, setup: Setup, transport: Transport, evaluate: Evaluator | None, out: str | Path,
             resume: bool = False, on_record: Callable[[dict[str, Any]], None] | None = None) -> ModeResult:
    """All rounds of cfg.privacy.mode (from a checkpoint when `resume` and one exists)."""
    out, mode = Path(out), cfg.privacy.mode
    out.mkdir(parents=True, exist_ok=True)
    ckpt, meta = checkpoint_path(out, mode), None
    if resume:
        check_resume(cfg, out, [mode])
    if resume and ckpt.exists():
        meta, arrays = load_checkpoint(ckpt)
    sigma = float(meta["noise_multiplier"]) if meta else setup.sigmas.get(mode, None)
    strategy = UserDPStrategy(cfg, setup.counts, setup.init_weights,
                              sigma if sigma is not None else noise_multiplier(cfg))
    if meta:
        strategy.restore(meta, arrays)
    metrics = out / report.METRICS
    records = report.keep_records(metrics, mode, strategy.round)
    start = strategy.round
    if any("stop_reason" in r for r in records):  # an earlier budget stop; this run decides afresh
        records = [{k: v for k, v in r.items() if k != "stop_reason"} for r in records]
        report.replace_mode_records(metrics, mode, records)

    def save() -> None:
        save_checkpoint(ckpt, *strategy.state())

    while strategy.round < cfg.train.rounds:
        rec = strategy.run_round(transport, evaluate)
        if rec is None:  # budget stop: nothing released this round
            break
        report.append_record(metrics, rec)
        records.append(rec)
        if on_record:
            on_record(rec)
        if cfg.checkpoint_every and strategy.round % cfg.checkpoint_every == 0:
            save()
    save()
    if strategy.stop_reason and records:  # the last released round carries why the run stopped there
        records[-1] = {**records[-1], "stop_reason": strategy.stop_reason}
        report.replace_mode_records(metrics, mode, records)
    return ModeResult(mode, strategy.noise_multiplier, records, strategy.epsilon(), strategy.stop_reason,
                      start, strategy)
