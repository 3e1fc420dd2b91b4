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
    from fl_userdp.local.model import build_model, get_trainable

    from .strategy import with_mode

    corpus = load_corpus(cfg.data, cfg.model, cfg.seed)
    setup = Setup(np.asarray(corpus.counts, np.int64), get_trainable(build_model(cfg.model, cfg.seed)))
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


def run_mode(cfg: RunConfig, setup: Setup, transport: Transport, evaluate: Evaluator | None, out: str | Path,
             resume: bool = False, on_record: Callable[[dict[str, Any]], None] | None = None) -> ModeResult:
    """All rounds of cfg.privacy.mode (from a checkpoint when `resume` and one exists)."""
    out, mode = Path(out), cfg.privacy.mode
    out.mkdir(parents=True, exist_ok=True)
    ckpt, meta = checkpoint_path(out, mode), None
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
    return ModeResult(mode, strategy.noise_multiplier, records, strategy.epsilon(), strategy.stop_reason,
                      start, strategy)
