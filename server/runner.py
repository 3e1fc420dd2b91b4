"""Run all rounds of one mode: resume, loop, log, checkpoint (no Flower here).

`prepare(cfg)` loads what the server needs before any engine starts (user
counts, initial trainable weights, σ per mode — the resumed run's own σ when
resuming), so bad input fails fast with a ConfigError. `run_mode` drives a
`UserDPStrategy` over a transport and writes, in the output folder:
`releases-<mode>.log` (the write-ahead release log, `fl_userdp.records.release_log`:
every release durable before it is applied), `metrics.jsonl` and
`checkpoint-<mode>.npz` (every `checkpoint-every` rounds and at the end; the
log's updates up to a checkpoint are then compacted away).

Resume = the checkpoint (a speed-up) + replay of the logged releases after
it; the ledger must agree with the log. A round is never recomputed once
released, and a fresh start never overwrites a log that holds releases.
Every check of a resume reads only; the one repair (cutting a torn last log
entry) is its last step, so a refused resume leaves every file as it was.

One run per folder: a run holds `out` for its life (`fl_userdp.records.folder_lock`) under its run id,
which its modes' logs, checkpoints and metrics records (and the summary) all carry; a resume refuses a
folder whose files name different runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fl_userdp.records import folder_lock, report
from fl_userdp.accounting import (calibrate_noise, check_delta_for_users, event_from_dict, event_to_dict,
                                  make_accountant, make_event)
from fl_userdp.accounting.plugins import check_supports
from fl_userdp.mechanism.adaptive_clip import check_count_noise, default_count_noise, sum_noise_multiplier
from fl_userdp.mechanism.private_loss import default_loss_noise, without_loss
from fl_userdp.config import RunConfig, is_task_spec, publish_diagnostics
from fl_userdp.errors import ConfigError
from fl_userdp.records.release_log import LogContents, ReleaseLog, log_path, new_run_id, read_log, refuse_damage

from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .noise_record import NoiseRecord
from .strategy import Evaluator, Transport, UserDPStrategy, identity


@dataclass
class Setup:
    counts: np.ndarray
    init_weights: list[np.ndarray]
    sigmas: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # fl_userdp.data.inventory.data_report: what loading kept and dropped


def noise_multiplier(cfg: RunConfig, expected: float | None = None) -> float:
    """privacy.noise-multiplier, or σ calibrated for (target-epsilon, delta) over train.rounds.

    With adaptive clipping the target is calibrated for the joint release's effective multiplier and σ (the
    sum's) follows from the count's σ_b (`fl_userdp.mechanism.adaptive_clip`; the default σ_b needs the expected count);
    with privacy.private-loss from the loss's σ_l as well (`fl_userdp.mechanism.private_loss`).
    """
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    sigma, _ = calibrate_noise(p.mode, p.target_epsilon, p.delta, p.sampling_rate, cfg.train.rounds,
                               p.max_examples_per_user, p.accountant, bands=p.bands)
    if p.private_loss:  # the noised training loss takes its share (fl_userdp.mechanism.private_loss)
        if p.loss_noise_multiplier is None and expected is None:
            raise ConfigError("privacy.loss-noise-multiplier", None, "must be given to calibrate without the data")
        sigma = without_loss(sigma, p.loss_noise_multiplier or default_loss_noise(expected),
                             p.adaptive_clip_quantile is not None)
    if p.adaptive_clip_quantile is None:
        return sigma
    if p.count_noise_multiplier is None and expected is None:
        raise ConfigError("privacy.count-noise-multiplier", None, "must be given to calibrate without the data")
    return sum_noise_multiplier(sigma, p.count_noise_multiplier or default_count_noise(expected))


def private_loss_cost(cfg: RunConfig, counts: np.ndarray, sigma: float) -> tuple[float, float]:
    """(ε with, ε without) the private training loss over train.rounds at the sum's σ (`sigma`): what
    privacy.private-loss costs, for the line at the start of a run."""
    from .strategy import UserDPStrategy

    out = []  # the strategy works out the round's joint multiplier, as in the run
    for c in (cfg, replace(cfg, privacy=replace(cfg.privacy, private_loss=False))):
        s = UserDPStrategy(c, counts, [np.zeros(1)], sigma)
        out.append(float(s.accountant.epsilon_after(s.event, cfg.train.rounds)))
    return out[0], out[1]


def expected_for(cfg: RunConfig, counts: np.ndarray) -> float:
    """The mode's expected count: q·N (ULS) or q·Σ min(n_u, k) (ELS)."""
    q, k = cfg.privacy.sampling_rate, cfg.privacy.max_examples_per_user
    return q * (len(counts) if cfg.privacy.mode == "uls" else float(np.minimum(counts, k).sum()))


def prepare(cfg: RunConfig, modes: list[str] | None = None, resume: bool = False) -> Setup:
    """Corpus counts, initial weights (same seed as the nodes), σ for each mode (with `resume`: the σ of
    the run being resumed, from its release log in cfg.out, where there is one)."""
    from fl_userdp.data import load_corpus

    from .strategy import with_mode

    if cfg.model.name != "linear":  # the linear task is numpy only
        from fl_userdp.local.model import build_model, get_trainable

    for mode in modes or [cfg.privacy.mode]:  # a ledger that cannot serve is refused before anything loads
        p = with_mode(cfg, mode).privacy
        event = make_event(mode, p.sampling_rate, p.noise_multiplier or 1.0, p.max_examples_per_user, p.bands)
        check_supports(make_accountant(p.accountant, p.delta), event, p.accountant)
    if is_task_spec(cfg.model.name):  # your own task: the nodes' factory (a ConfigError on bad input)
        from fl_userdp.local.task import cached_task

        task = cached_task(cfg)
        corpus, init = task.corpus, [a.copy() for a in task.init_weights]
    else:
        corpus = load_corpus(cfg.data, cfg.model, cfg.seed)
        init = [np.zeros(cfg.model.dim)] if cfg.model.name == "linear" \
            else get_trainable(build_model(cfg.model, cfg.seed))
    from fl_userdp.data.inventory import data_report

    setup = Setup(np.asarray(corpus.counts, np.int64), init, data=data_report(corpus, cfg.data))
    check_delta_for_users(cfg.privacy.delta, len(setup.counts), "privacy.delta")  # N is known from here on
    for mode in modes or [cfg.privacy.mode]:
        logged = logged_sigma(cfg.out, mode) if resume else None
        mcfg = with_mode(cfg, mode)
        if mcfg.privacy.count_noise_multiplier is not None and mcfg.privacy.adaptive_clip_quantile is not None:
            check_count_noise(mcfg.privacy.count_noise_multiplier, expected_for(mcfg, setup.counts))
        setup.sigmas[mode] = logged if logged is not None else noise_multiplier(mcfg, expected_for(mcfg, setup.counts))
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
    failed: bool = False  # stopped by the failure policy (sim.max-failed-fraction / -rounds)
    run_id: str | None = None


def _log_of(out: Path, mode: str) -> ReleaseLog:
    return ReleaseLog(log_path(out, mode))


def logged_sigma(out: str | Path, mode: str) -> float | None:
    """σ of the run whose release log for `mode` is in `out` (None when there is none)."""
    run = read_log(log_path(out, mode)).run
    return float(run["noise_multiplier"]) if run else None


def run_ids(out: str | Path) -> dict[str, str | None]:
    """{what: the run id it names} for each file in `out` that belongs to a run: the release logs, the
    checkpoints, every metrics.jsonl record and summary.json (None: it names no run). Unreadable files are
    left out (the resume's own checks refuse them)."""
    out, named = Path(out), {}
    for mode in MODES:
        run = read_log(log_path(out, mode)).run
        if run is not None:
            named[log_path(out, mode).name] = run.get("run_id")
    for mode in MODES:
        if checkpoint_path(out, mode).exists():
            try:
                named[checkpoint_path(out, mode).name] = load_checkpoint(checkpoint_path(out, mode))[0].get("run_id")
            except ConfigError:
                pass
    for rec in report.read_records(out / report.METRICS):
        named[f"{report.METRICS} ({rec.get('mode')} round {rec.get('round')})"] = rec.get("run_id")
    if (out / "summary.json").exists() and _summary(out):
        named["summary.json"] = _summary(out).get("run_id")
    return named


def _summary(out: Path) -> dict[str, Any]:
    """summary.json in `out` ({} when there is none or it cannot be read)."""
    import json

    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return summary if isinstance(summary, dict) else {}


def check_one_run(out: str | Path) -> None:
    """ConfigError (one line) when the files in `out` name different runs (or one names none)."""
    named = list(run_ids(out).items())
    for what, rid in named[1:]:
        if rid != named[0][1]:
            raise ConfigError("--resume", str(out), f"mixes runs: {what} belongs to another run than "
                              f"{named[0][0]} ({_named(rid)} vs {_named(named[0][1])}); refusing to resume")


def _named(run_id: str | None) -> str:
    return f"run id {run_id}" if run_id else "no run id"


def folder_run_id(out: str | Path) -> str | None:
    """The run id the release logs in `out` name (the first mode's that has one; None: no log)."""
    return next((rid for mode in MODES if (rid := (read_log(log_path(out, mode)).run or {}).get("run_id"))), None)


def run_id_for(out: str | Path, resume: bool) -> str:
    """The id a run into `out` runs under: the logged run's when resuming one, else a new one."""
    return (folder_run_id(out) if resume else None) or new_run_id()


def check_resume(cfg: RunConfig, out: str | Path, modes: list[str], every_mode: bool = True) -> None:
    """Before anything starts: every release log and checkpoint `--resume` would load must be trustworthy.

    Raises ConfigError (one line) for a log damaged anywhere but a cut-short last entry, files of different
    runs, a log or checkpoint written for another config, a checkpoint without a ledger or whose ledger does
    not match its round, a checkpoint without its release log, or rounds in metrics.jsonl without either (a
    fresh start would reset the privacy budget). Reads only.
    """
    from .strategy import check_identity, with_mode

    out = Path(out)
    if every_mode:  # a mode's resume inside a run that checked the folder first need not repeat this
        check_modes_held(out, modes)
    check_one_run(out)
    for mode in modes:
        mcfg, ckpt, path = with_mode(cfg, mode), checkpoint_path(out, mode), log_path(out, mode)
        contents = read_log(path)
        refuse_damage(path, contents)
        if path.exists() and contents.run is None:
            raise ConfigError("--resume", str(path), "is not a readable release log; refusing to resume")
        published = [(int(r.get("round", 0)), report.METRICS) for r in report.read_records(out / report.METRICS)
                     if r.get("mode") == mode]
        rows = _summary(out).get("modes")
        row = rows.get(mode) if isinstance(rows, dict) else None
        if isinstance(row, dict) and isinstance(row.get("rounds"), int):  # rounds 1..n were reported
            published.append((row["rounds"], "summary.json"))
        if contents.run is not None and published and max(published)[0] > contents.last_round:
            raise ConfigError("--resume", str(path), f"ends at round {contents.last_round} but "
                              f"{max(published)[1]} holds {mode} round {max(published)[0]}: releases were made that "
                              "the log lost; refusing to resume")
        if contents.run is not None:
            check_identity(contents.run, mcfg)
            sigma, asked = float(contents.run["noise_multiplier"]), mcfg.privacy.noise_multiplier
            if asked is not None and asked != sigma:
                raise ConfigError("privacy.noise-multiplier", asked, f"differs from the run being resumed ({sigma!r})")
            if not ckpt.exists():
                gap = next((e["round"] for e in contents.releases if int(e["round"]) not in contents.updates), None)
                if gap is not None:
                    raise ConfigError("--resume", str(path), f"holds no update for round {gap} and no checkpoint "
                                      "covers it; refusing to resume")
        if ckpt.exists():
            meta, arrays = load_checkpoint(ckpt)
            check_identity(meta, mcfg)
            if contents.run is None:
                raise ConfigError("--resume", str(path), "is missing but a checkpoint exists; refusing to resume "
                                  "(releases after the checkpoint could not be accounted)")
            if meta.get("run_id") != contents.run.get("run_id"):
                raise ConfigError("--resume", str(ckpt), "belongs to another run than its release log (their run "
                                  "ids differ); refusing to resume")
            if int(meta.get("round", 0)) > contents.last_round:
                raise ConfigError("--resume", str(ckpt), f"is at round {meta['round']} but the release log ends at "
                                  f"round {contents.last_round}; refusing to resume")
            size = int(contents.run.get("size", -1))
            if np.shape(arrays.get("weights")) != (size,):
                raise ConfigError("--resume", list(np.shape(arrays.get("weights"))),
                                  f"weights must have shape [{size}] (the run's release log)")
        elif contents.run is None and any(r.get("mode") == mode for r in report.read_records(out / report.METRICS)):
            raise ConfigError("--resume", str(ckpt), f"is missing but {out / report.METRICS} already holds {mode} "
                              "rounds; refusing to resume (the budget would reset); run without --resume to start over")


MODES = ("uls", "els")


def held_releases(out: str | Path) -> dict[str, str]:
    """{mode: what of it `out` holds} for every mode with a release log with releases (or damaged: it may
    hold releases nobody can read), a checkpoint or metrics records there."""
    out = Path(out)
    metrics = report.read_records(out / report.METRICS)
    held = {}
    for mode in MODES:
        contents = read_log(log_path(out, mode))
        what = (f"{len(contents.releases)} released {mode} rounds ({log_path(out, mode).name})" if contents.releases
                else f"a damaged release log ({log_path(out, mode).name})" if contents.damage
                else f"a {mode} checkpoint ({checkpoint_path(out, mode).name})" if checkpoint_path(out, mode).exists()
                else f"{mode} rounds in {report.METRICS}" if any(r.get("mode") == mode for r in metrics) else None)
        if what:
            held[mode] = what
    return held


def check_fresh(out: str | Path, modes: list[str], every_mode: bool = True) -> None:
    """A folder holds one accounting: a fresh start into a folder that holds releases of *any* mode — a
    release log with releases, a checkpoint or metrics records — is refused (ConfigError naming --out), so
    no summary there can report one mode's ε while another mode's releases of the same users sit beside it.
    `every_mode=False` checks `modes` only (a mode's start inside a run that checked the folder first)."""
    held = {m: w for m, w in held_releases(out).items() if every_mode or m in modes}
    if held:
        raise ConfigError("--out", str(out), f"already holds {'; '.join(held.values())}; continue with --resume "
                          "(every mode it holds), or choose another --out (a folder holds one accounting)")


def check_modes_held(out: str | Path, modes: list[str]) -> None:
    """A resume continues every mode the folder holds (else its summary would leave one mode's releases out)."""
    others = [m for m in held_releases(out) if m not in modes]
    if others:
        raise ConfigError("--resume", str(out), f"also holds {', '.join(o.upper() for o in others)} releases: "
                          f"resume all of its modes together ({'compare' if len(others) + len(modes) > 1 else 'run'}"
                          " --resume), so the folder's all-modes epsilon covers them")


def _ledger_runs(entries: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    runs: list[tuple[dict[str, Any], int]] = []
    for e in entries:
        if runs and runs[-1][0] == e["event"]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((e["event"], 1))
    return runs


def _ledger_matches_log(strategy: UserDPStrategy, entries: list[dict[str, Any]]) -> bool:
    """The checkpoint's ledger holds exactly the logged events (a plug-in ledger: the same state as a fresh one
    that composed them)."""
    held = getattr(strategy.accountant, "runs", None)
    if held is not None:
        return _ledger_runs(entries) == [(event_to_dict(e), c) for e, c in held]
    fresh = make_accountant(strategy.cfg.privacy.accountant, strategy.cfg.privacy.delta)
    for e in entries:
        fresh.compose(event_from_dict(e["event"]))
    return fresh.state_dict() == strategy.accountant.state_dict()


def _resume(strategy: UserDPStrategy, out: Path, contents: LogContents, noise: NoiseRecord | None = None) -> None:
    """Checkpoint (if any) + replay of the logged releases after it; the ledger is checked against the log.
    Banded noise (b > 1): each replayed round's w from the secret `noise` record (refused where it is lost)."""
    ckpt, mode = checkpoint_path(out, strategy.mode), strategy.mode
    if ckpt.exists():
        meta, arrays = load_checkpoint(ckpt)
        if int(meta["round"]) > contents.last_round:
            raise ConfigError("--resume", str(ckpt), f"is at round {meta['round']} but the release log ends at "
                              f"round {contents.last_round}; refusing to resume")
        strategy.restore(meta, arrays)
        if not _ledger_matches_log(strategy, contents.releases[: strategy.round]):
            raise ConfigError("--resume", str(ckpt), "has a ledger that differs from the release log; refusing "
                              "to resume")
    for entry in contents.releases[strategy.round:]:
        update = contents.updates.get(int(entry["round"]))
        if update is None or update.size != strategy.weights.size:
            raise ConfigError("--resume", str(log_path(out, mode)), f"holds no update for round {entry['round']} "
                              "and no checkpoint covers it; refusing to resume")
        strategy.replay(entry, update, noise.read(int(entry["round"])) if noise is not None else None)


def run_mode(cfg: RunConfig, setup: Setup, transport: Transport, evaluate: Evaluator | None, out: str | Path,
             resume: bool = False, on_record: Callable[[dict[str, Any]], None] | None = None) -> ModeResult:
    """All rounds of cfg.privacy.mode; with `resume`, continue the run in `out` from its release log.

    Under the folder's lock: the one this process holds on `out` (the run's driver took it; its run id is
    the run's), else one taken here for this mode's run."""
    if folder_lock.held_run_id(out) is not None:
        return _run_mode(cfg, setup, transport, evaluate, Path(out), resume, on_record)
    with folder_lock.hold(out, run_id_for(out, resume)):
        return _run_mode(cfg, setup, transport, evaluate, Path(out), resume, on_record)


def _run_mode(cfg: RunConfig, setup: Setup, transport: Transport, evaluate: Evaluator | None, out: Path,
              resume: bool, on_record: Callable[[dict[str, Any]], None] | None) -> ModeResult:
    mode, run_id = cfg.privacy.mode, folder_lock.held_run_id(out)
    publish = publish_diagnostics(cfg)
    log, metrics = _log_of(out, mode), out / report.METRICS
    if resume:
        check_resume(cfg, out, [mode], every_mode=False)
    contents = log.open() if resume and log.path.exists() else None
    if contents is not None and log.run_id != run_id:
        raise ConfigError("--resume", str(log.path), f"belongs to another run (run id {log.run_id}) than the one "
                          f"resumed ({run_id}); refusing to resume")
    if contents is None:
        check_fresh(out, [mode], every_mode=False)
    sigma = float(contents.run["noise_multiplier"]) if contents else setup.sigmas.get(mode)
    if contents and cfg.privacy.noise_multiplier is not None and cfg.privacy.noise_multiplier != sigma:
        raise ConfigError("privacy.noise-multiplier", cfg.privacy.noise_multiplier,
                          f"differs from the run being resumed ({sigma!r})")
    strategy = UserDPStrategy(cfg, setup.counts, setup.init_weights,
                              sigma if sigma is not None else noise_multiplier(cfg, expected_for(cfg, setup.counts)))
    banded = strategy.stream is not None and strategy.stream.bands > 1
    noise = NoiseRecord(out, mode) if banded else None  # secret: each round's correlated noise (noise_record)
    if contents:
        if strategy.stream is not None:  # the coefficients the run started with ('optimized' depend on its T)
            strategy.use_coefficients(contents.run.get("noise_coefficients", strategy.stream.coeffs.tolist()))
        if noise is not None:
            noise.open(log.run_id)
        _resume(strategy, out, contents, noise)
        log.drop_torn_tail(contents)  # every check passed: the resume goes on
    else:
        coeffs = {"noise_coefficients": strategy.stream.coeffs.tolist()} if strategy.stream is not None else {}
        log.start({"mode": mode, "identity": identity(cfg), "noise_multiplier": strategy.noise_multiplier,
                   "size": int(strategy.weights.size), **coeffs}, run_id)
        if noise is not None:
            noise.start(log.run_id)
    if noise is not None:
        strategy.noise_record = noise.write
    strategy.journal = log.append
    start = strategy.round
    records = _restore_records(metrics, strategy, contents, publish)

    def save() -> None:
        meta, arrays = strategy.state()
        save_checkpoint(checkpoint_path(out, mode), {**meta, "run_id": log.run_id}, arrays)
        if not cfg.keep_releases:  # kept: `fl-userdp audit --run` tests them
            log.compact(strategy.round)
        if noise is not None:
            noise.compact(strategy.round)

    while strategy.round < cfg.train.rounds:
        rec = strategy.run_round(transport, evaluate)
        if rec is None:  # budget stop: nothing released this round
            break
        rec = {**rec, "run_id": log.run_id}
        report.append_record(metrics, rec, publish)
        records.append(rec)
        if on_record:
            on_record(rec)
        if cfg.checkpoint_every and strategy.round % cfg.checkpoint_every == 0:
            save()
        if strategy.failure_stop:  # released and logged; the run stops here, resumable
            break
    save()
    if strategy.stop_reason and records:  # the last released round carries why the run stopped there
        if evaluate is not None and records[-1].get("eval_loss") is None and cfg.train.eval_every > 0:
            records[-1] = {**records[-1], "eval_loss": evaluate(strategy.weights_list())}  # the final weights
        records[-1] = {**records[-1], "stop_reason": strategy.stop_reason}
        report.replace_mode_records(metrics, mode, records, publish)
    return ModeResult(mode, strategy.noise_multiplier, records, strategy.epsilon(), strategy.stop_reason,
                      start, strategy, strategy.failure_stop, log.run_id)


def _restore_records(metrics: Path, strategy: UserDPStrategy, contents: LogContents | None,
                     publish: bool) -> list[dict[str, Any]]:
    """metrics.jsonl with exactly one record per released round of this mode (none for a fresh start).

    Rounds the log holds but metrics.jsonl lost (a crash between the two writes) get their covered part
    back from the log; an earlier stop reason is dropped (this run decides afresh).
    """
    mode = strategy.mode
    records = report.keep_records(metrics, mode, strategy.round, publish)
    have = {int(r["round"]) for r in records}
    lost = [e for e in (contents.releases if contents else []) if int(e["round"]) not in have]
    records = [{k: v for k, v in r.items() if k != "stop_reason"} for r in records]
    records += [{**{k: v for k, v in e.items() if k in report.COVERED and k != "eval_loss"}, "eval_loss": None}
                for e in lost]
    records.sort(key=lambda r: int(r["round"]))
    report.replace_mode_records(metrics, mode, records, publish)
    return records
