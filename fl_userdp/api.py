"""The Python API: run a simulation from a notebook or a script, get the results in memory.

    import fl_userdp
    res = fl_userdp.simulate({"train.rounds": 5, "data.num-users": 256}, backend="inprocess")
    res["uls"].epsilons, res["els"].records[-1]["eval_loss"], res["uls"].weights

`simulate` takes the same keys as the CLI (a dict of run-config keys — flat
dotted keys, or nested sections as a TOML file holds them, e.g.
`{"privacy": {"mode": "els"}}` — or a `RunConfig`) and runs the same code (`fl_userdp.server.runner.run_mode` over the
Flower simulation engine on Ray, or over the in-process transport). With
`out` it writes the usual files there (release logs, metrics.jsonl,
checkpoints, summary, plot) and can `resume`; the folder is held for the run's
life (`fl_userdp.records.folder_lock`: a second run into it, in this process or
another, is refused naming the first); without it the run's files live
in a temporary folder that is removed afterwards (the release log still
guards the run while it runs), and only the returned object remains (its
`config.out` is then None).

`modes` is a list or tuple of "uls"/"els", or one string ("uls", "uls,els").
The result is a mapping of mode name to `ModeRun` (`res["uls"]`, `keys()`,
`items()`, `in`, `len`, iteration) and prints as one short line per mode.
Errors name the API's own arguments (`out=`, `resume=`, `modes=`), not the
command-line options.

This module imports nothing heavy at import time: Flower, Ray and torch are
loaded when a simulation starts.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .config import RunConfig, flatten_toml, parse_config, publish_diagnostics, secure_mode, to_flat
from .errors import ConfigError

BACKENDS = ("ray", "inprocess")
MODES = ("uls", "els")


@dataclass(frozen=True)
class ModeRun:
    """One mode's run: per-round records (flat: release and diagnostics), the ε after every round, the
    final trainable weights (in the model's trainable order), σ, and why it stopped early (if it did)."""

    mode: str
    noise_multiplier: float
    records: list[dict[str, Any]]
    epsilons: list[float]
    weights: list[np.ndarray]
    stop_reason: str | None = None
    failed: bool = False          # stopped by the failure policy (sim.max-failed-*)
    resumed_from: int = 0

    @property
    def epsilon(self) -> float:
        return self.epsilons[-1] if self.epsilons else 0.0

    def __repr__(self) -> str:
        stop = f", stopped: {self.stop_reason}" if self.stop_reason else ""
        return (f"ModeRun({self.mode}: {_rounds(self.records)}, epsilon={_eps(self.epsilon)}, "
                f"sigma={self.noise_multiplier:.4g}{stop})")


@dataclass(frozen=True)
class SimulationResult:
    config: RunConfig
    modes: dict[str, ModeRun] = field(default_factory=dict)
    out: Path | None = None       # where the files are (None: nothing was kept)
    summary: dict[str, Any] | None = None
    epsilon_all_modes: float | None = None  # the modes' releases of the same users, composed (2+ modes)

    def __getitem__(self, mode: str) -> ModeRun:
        return self.modes[mode]

    def __iter__(self):
        return iter(self.modes)

    def __len__(self) -> int:
        return len(self.modes)

    def __contains__(self, mode: object) -> bool:
        return mode in self.modes

    def keys(self):
        return self.modes.keys()

    def values(self):
        return self.modes.values()

    def items(self):
        return self.modes.items()

    def get(self, mode: str, default: ModeRun | None = None) -> ModeRun | None:
        return self.modes.get(mode, default)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for run in self.modes.values() for r in run.records]

    def __repr__(self) -> str:
        runs = ", ".join(f"{m}: {_rounds(r.records)}, epsilon={_eps(r.epsilon)}" for m, r in self.modes.items())
        joint = "" if self.epsilon_all_modes is None else f", all modes epsilon={_eps(self.epsilon_all_modes)}"
        return f"SimulationResult({runs or 'no modes'}{joint}, out={str(self.out) if self.out else None})"


def _rounds(records: list) -> str:
    return f"{len(records)} round{'' if len(records) == 1 else 's'}"


def _eps(value: float | None) -> str:
    from .records.report import eps_up  # rounded up: never below the ledger's value

    return eps_up(value)


def as_config(config: RunConfig | Mapping[str, Any] | None) -> RunConfig:
    """A RunConfig from a RunConfig, a dict of run-config keys (flat dotted keys and/or nested sections, as
    in a TOML file; validated), or None (the defaults)."""
    if config is None:
        return parse_config({})
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(flatten_toml(config))
    raise ConfigError("config", type(config).__name__, "must be a RunConfig or a dict of run-config keys")


def as_modes(modes: str | Sequence[str] | None, cfg: RunConfig) -> list[str]:
    """["uls"], ["els"] or both from a list/tuple, one string ("uls", "uls,els") or None (privacy.mode)."""
    if modes is None:
        return [cfg.privacy.mode]
    names = modes.split(",") if isinstance(modes, str) else list(modes) if isinstance(modes, (list, tuple)) else None
    names = [m.strip() for m in names] if names is not None and all(isinstance(m, str) for m in names) else None
    if not names or any(m not in MODES for m in names) or len(set(names)) != len(names):
        raise ConfigError("modes", modes, "must be 'uls', 'els' or both, each once (a list, a tuple or a "
                                          "comma-separated string)")
    return names


# CLI words in the runner's messages -> the API's own argument names (the first match wins at each place)
_API_WORDS = [(r"\((?:compare|run) --resume\)", "(resume=True with modes=('uls', 'els'))"),
              (r"without --resume", "with resume=False"), (r"--resume", "resume=True"),
              (r"another --out", "another out= folder"), (r"--out", "out="), (r"--set (\S+)=", r"\1=")]
_API_KEYS = {"--out": "out", "--resume": "resume"}


def in_api_words(err: ConfigError) -> ConfigError:
    """The same error in the API's argument names (`out=`, `resume=`) instead of the CLI's options."""
    text = err.requirement
    for pattern, words in _API_WORDS:
        text = re.sub(pattern, words, text)
    return ConfigError(_API_KEYS.get(err.key, err.key), err.value, text)


def simulate(config: RunConfig | Mapping[str, Any] | None = None, modes: str | Sequence[str] | None = ("uls", "els"),
             backend: str = "ray", out: str | Path | None = None, *, resume: bool = False,
             ray_address: str | None = None, setup=None,
             on_record: Callable[[dict[str, Any]], None] | None = None,
             on_mode: Callable[[str, float], None] | None = None,
             on_restart: Callable[[str, int], None] | None = None,
             summary_extra: Mapping[str, Any] | None = None) -> SimulationResult:
    """Run `modes` (default ULS then ELS, as `fl-userdp compare`; "uls", "uls,els" or a list; None: the config's
    privacy.mode) of `config`.

    backend: "ray" (Flower's simulation engine; `ray_address` attaches to a cluster) or "inprocess" (the
    same server and node computations in this process). Raises ConfigError (naming the key and value) for bad
    input, before anything runs.
    """
    try:
        return run_simulation(config, modes, backend, out, resume=resume, ray_address=ray_address, setup=setup,
                              on_record=on_record, on_mode=on_mode, on_restart=on_restart,
                              summary_extra=summary_extra)
    except ConfigError as err:
        raise in_api_words(err) from None


def run_simulation(config: RunConfig | Mapping[str, Any] | None, modes: str | Sequence[str] | None, backend: str,
                   out: str | Path | None, resume: bool = False, ray_address: str | None = None, setup=None,
                   **hooks: Any) -> SimulationResult:
    """`simulate` as the CLI calls it: the same run, its errors in the CLI's words (`--out`, `--resume`).
    hooks: on_record, on_mode, on_restart, summary_extra (as for `simulate`)."""
    on_record, on_mode, on_restart = hooks.get("on_record"), hooks.get("on_mode"), hooks.get("on_restart")
    summary_extra = hooks.get("summary_extra")
    cfg = as_config(config)
    if backend not in BACKENDS:
        raise ConfigError("backend", backend, f"must be one of {list(BACKENDS)}")
    modes = as_modes(modes, cfg)
    if resume and out is None:
        raise ConfigError("out", None, "is required to resume (the run's release logs are there)")
    from fl_userdp.server.runner import check_fresh, check_resume, prepare, run_id_for

    from .records.folder_lock import hold

    tmp = lock = None
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="fl-userdp-"))
        out = tmp / "run"
    cfg = replace(cfg, out=str(out))
    try:
        lock = hold(out, run_id_for(out, resume))  # one run per folder, for the run's life
        if resume:
            check_resume(cfg, out, modes)
        else:
            check_fresh(out, modes)
        setup = setup or prepare(cfg, modes, resume=resume)
        if backend == "inprocess":
            from fl_userdp.server import inprocess
            results = inprocess.run(cfg, modes, resume=resume, setup=setup, on_record=on_record, on_mode=on_mode)
        else:
            from fl_userdp.server import simulate as engine
            results = engine.run(cfg, modes, resume=resume, ray_address=ray_address, setup=setup,
                                 on_record=on_record, on_mode=on_mode, on_restart=on_restart)
        runs = {res.mode: _mode_run(res) for res in results}
        joint = joint_epsilon(results, cfg.privacy.delta) if len(results) > 1 else None
        extra = {**dict(summary_extra or {}), **({"epsilon_all_modes": joint} if joint is not None else {}),
                 "run_id": lock.run_id}
        summary = None if tmp else _write_outputs(cfg, runs, setup, extra)
        kept = replace(cfg, out=None) if tmp else cfg  # the temporary folder is gone: no out to point at
        return SimulationResult(kept, runs, None if tmp else Path(out), summary, joint)
    finally:
        if lock is not None:
            lock.release()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def joint_epsilon(results, delta: float) -> float | None:
    """ε of all modes' releases together (they are of the same users, with independent randomness): the PLD
    composition of every mode's ledger at δ. None when a ledger cannot say which events it holds."""
    from .accounting import epsilon_for

    runs = []
    for res in results:
        held = getattr(res.strategy.accountant, "runs", None) if res.strategy is not None else None
        if held is None:
            return None
        runs += list(held)
    return epsilon_for(runs, delta, "pld")


def _mode_run(res) -> ModeRun:
    s = res.strategy
    history = [r.get("epsilon") if r.get("epsilon") is not None else float("inf") for r in res.records]
    return ModeRun(res.mode, res.noise_multiplier, list(res.records), history,
                   s.weights_list() if s is not None else [], res.stop_reason, res.failed, res.resumed_from)


def _write_outputs(cfg: RunConfig, runs: dict[str, ModeRun], setup, extra: Mapping[str, Any] | None) -> dict:
    """summary.json / summary.md and plot.png next to the metrics (labelled: see fl_userdp.records.report)."""
    from .records import report

    publish = publish_diagnostics(cfg)
    q, k = cfg.privacy.sampling_rate, cfg.privacy.max_examples_per_user
    records = [r for run in runs.values() for r in run.records]
    stops = [f"{run.mode}: {run.stop_reason}" for run in runs.values() if run.stop_reason]
    base = {"seed": cfg.seed, "config": to_flat(cfg), "noise_multipliers": {m: r.noise_multiplier for m, r in runs.items()},
            "stop_reasons": stops, "data": report.data_entry(getattr(setup, "data", None), publish)}
    if "els" in runs:  # q·Σ min(n_u, k): public by assumption, as ELS's expected count
        base["expected_examples_per_step"] = q * float(np.minimum(setup.counts, k).sum()) / cfg.privacy.bands
    summary = report.summarize(records, {**base, **dict(extra or {})}, publish, secure_mode(cfg),
                               banded=cfg.privacy.mechanism == "bandmf" and cfg.privacy.bands > 1)
    report.write_summary(cfg.out, summary)
    report.plot(records, Path(cfg.out) / "plot.png", publish)
    return summary
