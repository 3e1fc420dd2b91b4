"""`fl-userdp compare` and `fl-userdp run`: simulations on Flower + Ray.

Heavy imports (flwr, ray, torch) happen inside the command functions, so the
core and the accountant commands stay light. Config precedence: defaults <
`--config FILE.toml` < `--set key=value` < the dedicated options
(`--rounds`, `--out`, `--seed`, `--ray-address`).
"""
from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any

from ..config import RunConfig, load_config_file, parse_config, publish_diagnostics
from ..errors import ConfigError


def _sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of run-config keys (sections or dotted keys)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--rounds", type=int, metavar="N", help="train.rounds")
    p.add_argument("--out", metavar="DIR", help="output folder (metrics.jsonl, summary, plot, checkpoints)")
    p.add_argument("--seed", type=int, metavar="S")
    p.add_argument("--ray-address", metavar="ADDR", help="attach to a running Ray cluster ('auto' or host:port)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    p.add_argument("--backend", choices=["ray", "inprocess"], default="ray",
                   help="ray: Flower's simulation engine (default); inprocess: the same server and node "
                        "computations in this process, no engine (small configs, tests, debugging)")


def config_from_args(a: argparse.Namespace) -> RunConfig:
    flat: dict[str, Any] = load_config_file(a.config) if a.config else {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "must be KEY=VALUE")
        flat[key.strip()] = value.strip()
    for key, value in (("train.rounds", a.rounds), ("out", a.out), ("seed", a.seed), ("sim.ray-address", a.ray_address)):
        if value is not None:
            flat[key] = value
    return parse_config(flat)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def simulate_and_report(cfg: RunConfig, modes: list[str], a: argparse.Namespace, name: str) -> int:
    """The CLI over `fl_userdp.simulate`: checks, a header, live progress, the side-by-side table; --out is
    held from before the checks to the end (fl_userdp.records.folder_lock: one run per folder)."""
    from fl_userdp.server.runner import run_id_for

    from ..records.folder_lock import hold

    with hold(cfg.out, run_id_for(cfg.out, a.resume)):
        return _simulate_and_report(cfg, modes, a, name)


def _simulate_and_report(cfg: RunConfig, modes: list[str], a: argparse.Namespace, name: str) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fl_userdp.server.runner import check_fresh, check_resume, logged_sigma, prepare
    from fl_userdp.server.strategy import with_mode

    from ..config import diagnostics_line

    from ..records import report
    from ..api import run_simulation
    from ..data.inventory import data_line

    console, t0 = Console(stderr=True), time.perf_counter()
    out = Path(cfg.out)
    # refuse untrustworthy state, or a fresh start over logged releases, before loading anything
    if a.resume:
        check_resume(cfg, out, modes)
    else:
        check_fresh(out, modes)
    out.mkdir(parents=True, exist_ok=True)
    with console.status("loading data, building the model, calibrating noise…"):
        setup = prepare(cfg, modes, resume=a.resume)
    q, k = cfg.privacy.sampling_rate, cfg.privacy.max_examples_per_user
    per_step = q * float(sum(min(int(n), k) for n in setup.counts))  # ELS's expected count: public by assumption
    per_step /= cfg.privacy.bands  # cyclic groups (privacy.bands > 1): a step draws from one of b groups, on average
    console.print(f"[bold]{name}[/]: {len(setup.counts)} users, {-(-len(setup.counts) // cfg.sim.users_per_node)} "
                  f"nodes, {cfg.train.rounds} rounds, q={q:g}, k={k}, C={cfg.privacy.clip_norm:g}"
                  + (f", expected examples/step {per_step:.1f}" if "els" in modes else ""))
    publish = publish_diagnostics(cfg)
    if setup.data is not None:  # what loading dropped is a diagnostic (counted from the files, no noise)
        console.print(f"  {data_line(setup.data if publish else {**setup.data, 'dropped': None})}", soft_wrap=True,
                      markup=False)
    for mode, sigma in setup.sigmas.items():
        logged = logged_sigma(out, mode) if a.resume else None
        target = " (the resumed run's)" if logged is not None else "" if cfg.privacy.noise_multiplier is not None \
            else f" (for ε={cfg.privacy.target_epsilon:g}, also the run's budget)"
        console.print(f"  {mode.upper()}: σ = {sigma:.4g}{target}, δ = {cfg.privacy.delta:g}")
        if cfg.privacy.private_loss:
            console.print(private_loss_line(with_mode(cfg, mode), setup.counts, sigma), soft_wrap=True)
    if cfg.privacy.mechanism == "bandmf":
        console.print(mechanism_line(cfg, sum(int(a.size) for a in setup.init_weights)), markup=False)
    console.print(randomness_line(cfg))
    console.print(diagnostics_line(cfg), markup=False, soft_wrap=True)

    timing = [TimeElapsedColumn()] if publish else []  # timings are diagnostics
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), *timing, console=console, disable=a.no_progress,
                        refresh_per_second=2)  # rich's 10 redraws per second took CPU from a round
    tasks = {m: progress.add_task(f"{m.upper()} rounds", total=cfg.train.rounds, info="", start=False) for m in modes}

    def on_mode(mode: str, sigma: float) -> None:
        progress.start_task(tasks[mode])

    def on_record(rec: dict[str, Any]) -> None:
        eps, ev = rec.get("epsilon"), rec.get("eval_loss")
        info = f"ε={eps:.3f}" if eps is not None else "ε=inf"
        info += f" eval={ev:.4f}" if ev is not None else ""
        progress.update(tasks[rec["mode"]], completed=rec["round"], info=info)
        if a.no_progress:
            console.print(f"  {rec['mode'].upper()} round {rec['round']}: {info}")

    def on_restart(why: str, n: int) -> None:
        detail = f" (diagnostic: {why})" if publish else ""
        console.print(f"[yellow]lost a Ray worker[/]{detail}; restart {n}: a fresh engine resumes from the release log")

    with progress:
        res = run_simulation(cfg, modes, getattr(a, "backend", "ray"), out, resume=a.resume, setup=setup,
                       on_record=on_record, on_mode=on_mode, on_restart=on_restart,
                       summary_extra={"command": f"fl-userdp {name}", "commit": _commit()})

    table_console = Console()
    table_console.width = max(table_console.width, 110)  # the side-by-side table needs ~100 columns
    table_console.print(report.side_by_side(res.records, publish))
    for s in res.summary["stop_reasons"]:
        console.print(f"[yellow]stopped[/] {s}")
    for mode, row in res.summary["modes"].items():
        eps, ev = row["epsilon"], row["final_eval_loss"]
        console.print(f"{mode.upper()}: final eval loss {'-' if ev is None else f'{ev:.4f}'}, "
                      f"ε = {'inf' if eps is None else f'{eps:.4f}'} at δ = {row['delta']:g}")
    if res.epsilon_all_modes is not None:
        console.print(f"all modes together (the same users' releases, composed): ε = {res.epsilon_all_modes:.4f} "
                      f"at δ = {cfg.privacy.delta:g}")
    took = f" in {time.perf_counter() - t0:.0f} s (a diagnostic)" if publish else ""
    console.print(f"wrote {out / report.METRICS}, {out / 'summary.md'}, {out / 'plot.png'}{took}")
    console.print(res.summary["guarantee_line"], markup=False, soft_wrap=True)  # in full: summary.json
    if any(run.failed for run in res.modes.values()):  # the failure policy stopped a mode: resumable
        console.print("[red]stopped by node failures[/]: the state is saved; fix the cluster and continue with "
                      "--resume")
        return 4
    return 0


def private_loss_line(cfg, counts, sigma: float) -> str:
    """One line: what privacy.private-loss releases and what it costs (ε over the run with and without it)."""
    from fl_userdp.server.runner import expected_for, private_loss_cost

    from ..config import loss_bound
    from ..mechanism.private_loss import default_loss_noise

    p = cfg.privacy
    with_it, without = private_loss_cost(cfg, counts, sigma)
    loss_sigma = p.loss_noise_multiplier or default_loss_noise(expected_for(cfg, counts))
    return (f"    private training loss: each record's loss clipped to [0, {loss_bound(cfg):.4g}], noise multiplier "
            f"{loss_sigma:.4g}; ε over {cfg.train.rounds} rounds {with_it:.4g} with it, {without:.4g} without it")


def mechanism_line(cfg, size: int) -> str:
    """One line for privacy.mechanism 'bandmf': bands, coefficients, participation, the prefix-sum error against
    independent noise at equal σ for this run's T, and the noise stream's memory (b·d floats per mode)."""
    from ..mechanism.bandmf import coefficients, error_ratio

    p, T = cfg.privacy, cfg.train.rounds
    c = coefficients(p.bandmf_coefficients, p.bands, T)
    groups = f"{p.bands} cyclic groups, " if p.bands > 1 else ""
    within = "every user of the group" if p.participation == "fixed" else f"Poisson q={p.sampling_rate:g}"
    mib = p.bands * size * 8 / 2**20
    return (f"  noise: banded (BandMF, b={p.bands}, {p.bandmf_coefficients} coefficients; {groups}{within}): "
            f"prefix-sum RMSE {error_ratio(c, T):.3f}x independent noise's at equal σ over T={T}; memory b·d = "
            f"{p.bands}·{size} = {p.bands * size:,} floats ({mib:.1f} MiB) per mode, the last b-1 secret "
            f"(checkpoint, secret-noise-<mode>/)")


def randomness_line(cfg) -> str:
    """One line: where sampling and noise come from (privacy.secure-mode, or its "auto" default)."""
    from ..config import secure_mode

    auto = cfg.privacy.secure_mode is None
    if secure_mode(cfg):
        return "  OS randomness (secure mode" + ("; own data" if auto else "") + "): not reproducible"
    return f"  seeded randomness (seed {cfg.seed}" + ("; built-in data" if auto else "") + "): the seed is its key"


def configure_compare(p: argparse.ArgumentParser) -> None:
    _sim_options(p)


def compare_cmd(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    return simulate_and_report(cfg, ["uls", "els"], a, "compare")


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["uls", "els"], help="privacy.mode (default: from the config)")
    _sim_options(p)


def run_cmd(a: argparse.Namespace) -> int:
    if a.mode:
        a.set = [*a.set, f"privacy.mode={a.mode}"]
    cfg = config_from_args(a)
    return simulate_and_report(cfg, [cfg.privacy.mode], a, f"run {cfg.privacy.mode}")
