"""Flower's own example apps (tests/flower_examples/: quickstart-pytorch, quickstart-huggingface, advanced-pytorch;
data loading synthetic, the strategy line switchable) run through the Flower CLI, `flwr run <app> --stream`, with
the drop-in (`UserDPFedAvg`, or `UserDP` around the app's own strategy) and with Flower's
`DifferentialPrivacyServerSideFixedClipping(FedAvg)`; prints per round
the ε the drop-in reports (Poisson-sampled user-level PLD) beside the ε of Flower's wrapper's mechanism
accounted as compare_accountants.py does it (Flower's RDP without amplification, as its wrapper accepts an
accountant; and Flower's RDP of the same Poisson-subsampled round the drop-in runs).

    OMP_NUM_THREADS=1 python experiments/dropin/flower_examples.py [--examples quickstart-pytorch ...]

Each run works in a copy of the app in a temporary folder (the apps save final_model.pt in their working
folder) with its own FLWR_HOME; the local SuperLink that `flwr run` starts is stopped by PID at the end.
The test tests/flower_examples/test_flower_examples.py uses the helpers below.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "tests" / "flower_examples"
PYTORCH, HUGGINGFACE, ADVANCED = "quickstart-pytorch", "quickstart-huggingface", "advanced-pytorch"
VARIANTS = ("fedavg", "userdp", "userdp-fedadam", "flower-dp")


@dataclass(frozen=True)
class Settings:
    """One small federation for every run: N supernodes (= users), q·N = the Flower wrapper's cohort."""
    supernodes: int = 4
    rounds: int = 3
    sampling_rate: float = 0.5
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    delta: float = 1e-5
    seed: int = 0

    @property
    def cohort(self) -> int:
        return max(1, round(self.sampling_rate * self.supernodes))


@dataclass
class Run:
    example: str
    variant: str
    returncode: int
    log: str
    app_dir: Path
    seconds: float
    releases: list[dict] = field(default_factory=list)


ANSI = re.compile(r"\x1b\[[0-9;]*m")
AGGREGATED = re.compile(r"Aggregated MetricRecord: (\{.*\})\s*$")
GLOBAL_EVAL = re.compile(r"(?:Initial global evaluation results|\s└──> MetricRecord): (\{.*\})\s*$")
FLOWER_NOISE = re.compile(r"central DP noise with ([0-9.eE+-]+) stdev added")


# -- the federation ---------------------------------------------------------------------------------
def flwr_env(home: Path) -> dict[str, str]:
    """The environment of `flwr run`: our FLWR_HOME (a local SuperLink), no dependency install at run time, no
    hub, one thread; `flwr run` starts `flower-superlink` from PATH: this interpreter's own first."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}


def superlinks_of(home: Path) -> list[int]:
    """PIDs of flower-superlink processes whose command line names our FLWR_HOME."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"flower-superlink" in c for c in cmd) and any(str(home).encode() in c for c in cmd):
                found.append(int(entry))
    return found


def stop_superlinks(home: Path, grace: float = 30.0) -> None:
    """SIGTERM the SuperLinks that `flwr run` started under `home` (by PID), SIGKILL what is left after `grace` s."""
    for pid in superlinks_of(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while superlinks_of(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in superlinks_of(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while superlinks_of(home) and time.monotonic() < deadline:  # a killed process leaves /proc a moment later
        time.sleep(0.1)


def make_tiny_bert(path: Path) -> Path:
    """A tiny BERT for sequence classification (2 labels), saved where the HF example's `model-name` points."""
    from transformers import AutoModelForSequenceClassification, BertConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(path)
    return path


def _toml(value) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


def run_config(example: str, variant: str, s: Settings, model_dir: Path | None = None,
               extra: dict | None = None) -> str:
    """The `--run-config` overrides: rounds, the variant, the DP parameters (and the HF model, a local dir);
    `extra`: more keys the app declares (advanced-pytorch: dp-clipping, dp-max-epsilon, dp-ledger-path)."""
    cfg = [f"num-server-rounds={s.rounds}", f"strategy-variant='{variant}'",
           f"dp-sampling-rate={float(s.sampling_rate)!r}", f"dp-noise-multiplier={float(s.noise_multiplier)!r}",
           f"dp-clipping-norm={float(s.clipping_norm)!r}", f"dp-delta={float(s.delta)!r}", f"dp-seed={s.seed}"]
    if example != ADVANCED:  # the quickstart apps' Flower-wrapper variant needs its cohort size
        cfg.append(f"dp-num-sampled-clients={s.cohort}")
    cfg += [f"{k}={_toml(v)}" for k, v in (extra or {}).items()]
    if example == HUGGINGFACE:
        if model_dir is None:
            raise ValueError("the HF example needs model_dir (a saved model: no hub here)")
        # FedAvg as written samples max(fraction-train·N, 2) nodes; the hub metric of its evaluate is not reachable
        cfg += [f"model-name='{model_dir}'", f"fraction-train={float(s.sampling_rate)!r}", "fraction-evaluate=0.0"]
    return " ".join(cfg)


def local_superlink_busy() -> bool:
    """Whether a local SuperLink (ours or another FLWR_HOME's) answers on Flower's fixed local port."""
    import socket

    from flwr.cli import constant   # the port's name differs across Flower versions (1.35: the Control API's)

    port = getattr(constant, "LOCAL_SUPERLINK_HTTP_API_PORT", None) or getattr(constant, "LOCAL_CONTROL_API_PORT")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", int(port))) == 0


def run_app(example: str, variant: str, workdir: Path, s: Settings = Settings(), model_dir: Path | None = None,
            timeout: float = 300, wait_free: float = 240, extra: dict | None = None) -> Run:
    """`flwr run <copy of the app> --stream`, from the copy, with its own FLWR_HOME under `workdir`. The local
    SuperLink that `flwr run` starts runs the ServerApp in its own working folder (the copy: final_model.pt lands
    there) and outlives the command: it is stopped here, by PID.

    Flower's local SuperLink has fixed ports: `flwr run` sends the run to whatever local SuperLink answers, also
    one another FLWR_HOME started (another `flwr run` on this machine). So the run waits up to `wait_free` s for
    the port to be free, and is tried again once when it went to a SuperLink that was not its own."""
    app = workdir / example
    shutil.copytree(EXAMPLES / example, app, ignore=shutil.ignore_patterns("__pycache__", "final_model.pt", "outputs",
                                                                         "wandb-offline.jsonl"))
    flwr = str(Path(sys.executable).with_name("flwr"))
    cmd = [flwr, "run", str(app), "--stream", "--federation-config", f"num-supernodes={s.supernodes}",
           "--run-config", run_config(example, variant, s, model_dir, extra)]
    for attempt in range(2):
        home = workdir / f"flwr-home-{attempt}"
        deadline = time.monotonic() + wait_free
        while local_superlink_busy() and time.monotonic() < deadline:
            time.sleep(1.0)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=app, env=flwr_env(home), capture_output=True, text=True, timeout=timeout)
        finally:
            stop_superlinks(home)
        log = ANSI.sub("", proc.stdout + proc.stderr)
        if proc.returncode == 0 or "Starting local SuperLink" in log:
            break
    if superlinks_of(home):
        raise RuntimeError(f"a SuperLink under {home} did not stop")
    run = Run(example, variant, proc.returncode, log, app, time.monotonic() - t0)
    run.releases = [m for m in aggregated_metrics(log) if "epsilon" in m]  # the drop-in's release records
    return run


# -- reading the streamed log -------------------------------------------------------------------------
def _literal(text: str) -> dict:
    return ast.literal_eval(re.sub(r"\binf\b", "1e999", text))


def aggregated_metrics(log: str) -> list[dict]:
    """Every "Aggregated MetricRecord: {...}" Flower logged during the rounds, in order."""
    return [_literal(m.group(1)) for line in log.splitlines() if (m := AGGREGATED.search(line))]


def global_evaluations(log: str) -> list[dict]:
    """The ServerApp-side evaluations (round 0 first), where the app has an evaluate_fn."""
    return [_literal(m.group(1)) for line in log.splitlines() if (m := GLOBAL_EVAL.search(line))]


def flower_noise_stds(log: str) -> list[float]:
    """The stdev Flower's wrapper logs each round it adds noise."""
    return [float(x) for x in FLOWER_NOISE.findall(log)]


# -- accounting (as compare_accountants.py does it) ---------------------------------------------------
def dropin_epsilons(s: Settings, rounds: int) -> list[float]:
    """The drop-in's ledger recomputed offline: PLD of a Poisson-subsampled Gaussian round, composed per round."""
    from fl_userdp.accounting import make_accountant, make_event

    acc, event, out = make_accountant("pld", s.delta, "accountant"), make_event("uls", s.sampling_rate,
                                                                                   s.noise_multiplier), []
    for _ in range(rounds):
        acc.compose(event)
        out.append(float(acc.epsilon()))
    return out


def flower_epsilons(s: Settings, rounds: int) -> tuple[list[float], list[float]]:
    """Per round, the ε of Flower's wrapper's mechanism (σ on the sum of the cohort's clipped updates):
    Flower's RdpAccountant without amplification (what the wrapper accepts: it samples a fixed-size cohort), and
    Flower's RDP with the Poisson amplification at q (FlowerRdpAccountant of the drop-in's round)."""
    from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                                   SamplingMethod)
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    from fl_userdp.accounting import make_event
    from fl_userdp.server.flower_accountant import FlowerRdpAccountant

    no_amp, poisson = [], []
    for t in range(1, rounds + 1):
        acc = RdpAccountant(PrivacyConfig(target_delta=s.delta, population_size=s.supernodes,
                                          neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                          sampling_method=SamplingMethod.NO_AMPLIFICATION))
        acc.compose(GaussianPrivacyEvent(s.noise_multiplier, s.cohort, s.supernodes), t)
        no_amp.append(float(acc.get_epsilon(s.delta)))
        amp = FlowerRdpAccountant(delta=s.delta)
        amp.compose(make_event("uls", s.sampling_rate, s.noise_multiplier), t)
        poisson.append(float(amp.epsilon()))
    return no_amp, poisson


# -- the table ------------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    return "-" if x is None else ("inf" if math.isinf(x) else f"{x:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", nargs="+", default=[PYTORCH, HUGGINGFACE], choices=[PYTORCH, HUGGINGFACE])
    ap.add_argument("--supernodes", type=int, default=Settings.supernodes)
    ap.add_argument("--rounds", type=int, default=Settings.rounds)
    ap.add_argument("--rate", type=float, default=Settings.sampling_rate)
    ap.add_argument("--sigma", type=float, default=Settings.noise_multiplier)
    ap.add_argument("--clip", type=float, default=Settings.clipping_norm)
    ap.add_argument("--delta", type=float, default=Settings.delta)
    a = ap.parse_args()
    s = Settings(a.supernodes, a.rounds, a.rate, a.sigma, a.clip, a.delta)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="flower-examples-") as tmp:
        tmp_path = Path(tmp)
        model_dir = make_tiny_bert(tmp_path / "tiny-bert") if HUGGINGFACE in a.examples else None
        for example in a.examples:
            runs = {}
            for variant in ("userdp", "flower-dp"):
                work = tmp_path / f"{example}-{variant}"
                work.mkdir()
                run = runs[variant] = run_app(example, variant, work, s, model_dir)
                notes.append(f"{example} {variant}: exit {run.returncode}, {run.seconds:.0f} s"
                             + (", Traceback in the log" if "Traceback" in run.log else ""))
                if run.returncode:
                    print(run.log[-3000:], file=sys.stderr)
            ours = {m["round"]: m for m in runs["userdp"].releases}
            noise = flower_noise_stds(runs["flower-dp"].log)
            no_amp, poisson = flower_epsilons(s, s.rounds)
            for t in range(1, s.rounds + 1):
                m = ours.get(t, {})
                rows.append([example, str(t), _fmt(m.get("epsilon")),
                             f"{m['diagnostics.nodes_sampled']}" if m else "-",
                             _fmt(no_amp[t - 1]) if t <= len(noise) else "-",
                             _fmt(poisson[t - 1]), f"{noise[t - 1]:.4g}" if t <= len(noise) else "-"])
    print(f"N={s.supernodes} supernodes (users), q={s.sampling_rate:g} (Flower's cohort {s.cohort}), "
          f"sigma={s.noise_multiplier:g}, C={s.clipping_norm:g}, delta={s.delta:g}, {s.rounds} rounds")
    head = ["example", "round", "eps drop-in (PLD, Poisson; reported)", "drop-in sampled",
            "eps Flower wrapper (RDP, no ampl.)", "eps Flower RDP w/ Poisson ampl.", "Flower noise std"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)] if rows else [len(h) for h in head]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
