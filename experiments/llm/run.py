"""ELS vs ULS fine-tuning of SmolLM2-135M + LoRA on Shakespeare users: run every config, resumably.

    OMP_NUM_THREADS=1 python experiments/llm/run.py                  # all configs, one after another
    OMP_NUM_THREADS=1 python experiments/llm/run.py --only uls_eps1  # one configuration
    OMP_NUM_THREADS=1 python experiments/llm/run.py --shard 0/2 &    # two processes, disjoint configs
    OMP_NUM_THREADS=1 python experiments/llm/run.py --shard 1/2 &
    python experiments/llm/report.py                                 # table, plots, README section

Each `experiments/llm/<name>.toml` is one configuration (flat config keys,
`fl_userdp/config.py`); its outputs go to `experiments/llm/runs/<name>/`
(`metrics.jsonl`, `checkpoint-<mode>.npz` every `checkpoint-every` rounds,
`config.json`). Resumable: a config whose metrics.jsonl already holds round
`train.rounds` is skipped; one with a checkpoint continues from it (the privacy
ledger, optimizer state and round come back with it); one with neither starts
over. Kill it at any time and run the same command again.

The server round loop is `fl_userdp.server.runner.run_mode` (the one `fl-userdp run`
uses) with `fl_userdp.server.inprocess.InProcessTransport`: the same node computations
as the Flower simulation, in this process (no Ray actors, one copy of the
model; on a 2-core CPU that is the difference between fitting and not).
All configs of one process share one model and one tokenised corpus. The
training loss is not computed (`train_loss` is null) unless `--train-loss`:
it costs an extra forward pass, about a quarter of a round.

Held-out evaluation: `train.eval-examples` rows taken evenly spaced over all
rows of the `data.heldout-users` held-out users (the Worker's own evaluation
takes the first rows, which here all belong to one held-out character), per-
token loss over real tokens (EOS padding excluded). `base_model` only
evaluates the initial weights (LoRA B = 0, i.e. the pretrained model) and
writes one record (round 0, mode "none").

`model.name` may start with `~` here (expanded); `fl-userdp run --config
experiments/llm/uls_eps1.toml --set model.name=$HOME/.cache/fl-userdp/smollm2-hf`
runs the same training through Flower (its eval uses the Worker's rows).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

# Order: the strong-privacy pair first, so a partial sweep still compares the modes.
ORDER = ["base_model", "nonprivate", "uls_eps1", "els_eps1", "els_eps4", "uls_eps4", "uls_eps16", "els_eps16"]


def config_names() -> list[str]:
    found = sorted(p.stem for p in HERE.glob("*.toml"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def load_cfg(name: str, runs: Path, overrides: list[str]):
    from fl_userdp.config import load_config_file, parse_config

    flat = load_config_file(HERE / f"{name}.toml")
    for item in overrides:
        key, _, value = item.partition("=")
        flat[key.strip()] = value.strip()
    flat["model.name"] = os.path.expanduser(str(flat.get("model.name", "tiny")))
    flat["out"] = str(runs / name)
    return parse_config(flat)


def finished_rounds(out: Path, mode: str) -> int:
    from fl_userdp.records import report

    recs = [r for r in report.read_records(out / report.METRICS) if r.get("mode") == mode]
    return max((int(r["round"]) for r in recs), default=0)


class Evaluator:
    """Per-token held-out loss on `n` rows evenly spaced over all held-out rows (padding excluded)."""

    def __init__(self, worker, n: int) -> None:
        held = worker.corpus.heldout()
        idx = np.unique(np.linspace(0, len(held) - 1, min(n, len(held))).round().astype(np.int64))
        self.rows, self.worker = held[idx], worker

    def __call__(self, weights) -> float:
        from fl_userdp.local.model import set_trainable
        from fl_userdp.local.updates import eval_loss

        set_trainable(self.worker.model, weights)
        return eval_loss(self.worker.model, self.rows, pad_id=self.worker.pad_id)


_INIT: dict[tuple, list] = {}


def shared_worker(cfg):
    """The process's Worker for cfg (model + corpus, shared by configs) and the initial adapter weights."""
    from fl_userdp.clients.compute import worker_for
    from fl_userdp.local.model import get_trainable

    worker = worker_for(cfg)
    key = (cfg.model, cfg.data, cfg.seed)
    if key not in _INIT:  # before any run moves the shared model's adapters
        _INIT[key] = get_trainable(worker.model)
    return worker, _INIT[key]


class NoLossTransport:
    """`InProcessTransport` without the training-loss forward pass (about a quarter of a round's compute)."""

    def __init__(self, cfg) -> None:
        from fl_userdp.server.inprocess import InProcessTransport

        self.inner = InProcessTransport(cfg)

    def __call__(self, requests, weights):
        from fl_userdp.mechanism.aggregate import split_flat
        from fl_userdp.server.strategy import NodeReply

        cfg, worker, out = self.inner.cfg, self.inner.worker, {}
        for node, req in requests.items():
            if req.mode == "uls":
                c = worker.uls(cfg, weights, req.round, req.users, with_loss=False)
            else:
                c = worker.els(cfg, weights, req.users, req.offsets, req.example_ids, with_loss=False)
            out[node] = NodeReply(split_flat(c.total, worker.shapes), c.users, c.examples, c.clipped, c.loss_sum)
        return out


def run_one(name: str, cfg, log, no_train_loss: bool = True) -> None:
    from fl_userdp.records import report
    from fl_userdp.config import to_flat
    from fl_userdp.server.inprocess import InProcessTransport
    from fl_userdp.records.release_log import log_path
    from fl_userdp.server.runner import Setup, noise_multiplier, run_mode

    out, mode = Path(cfg.out), cfg.privacy.mode
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    worker, init = shared_worker(cfg)
    evaluate = Evaluator(worker, cfg.train.eval_examples)
    (out / "config.json").write_text(json.dumps(to_flat(cfg), indent=1, sort_keys=True) + "\n")

    if name == "base_model":
        if any(r.get("mode") == "none" for r in report.read_records(out / report.METRICS)):
            log(f"{name}: done, skipped")
            return
        loss = evaluate(init)
        report.append_record(out / report.METRICS, {
            "round": 0, "mode": "none", "eval_loss": loss, "train_loss": None, "epsilon": 0.0,
            "delta": cfg.privacy.delta, "noise_multiplier": None, "examples_processed": 0,
            "eval_examples": int(len(evaluate.rows)), "wall_time": time.perf_counter() - t0})
        log(f"{name}: eval loss {loss:.4f} (ppl {math.exp(loss):.1f}) in {time.perf_counter() - t0:.0f} s")
        return

    done = finished_rounds(out, mode)
    if done >= cfg.train.rounds:
        log(f"{name}: done ({done} rounds), skipped")
        return
    resume = log_path(out, mode).exists()  # the release log is the run's record; resume replays it
    setup = Setup(np.asarray(worker.corpus.counts, np.int64), init, {mode: noise_multiplier(cfg)})
    counts = setup.counts
    per_step = cfg.privacy.sampling_rate * float(np.minimum(counts, cfg.privacy.max_examples_per_user).sum())
    log(f"{name}: {mode.upper()} sigma={setup.sigmas[mode]:.4g}{' (the logged σ wins)' if resume else ''} q={cfg.privacy.sampling_rate:g} "
        f"k={cfg.privacy.max_examples_per_user} N={len(counts)} expected examples/step {per_step:.2f} "
        f"{'resuming' if resume else 'starting'} ({done} rounds in metrics)")

    def on_record(rec) -> None:
        ev = rec.get("eval_loss")
        eps = rec.get("epsilon")
        log(f"  {name} r{rec['round']}: train {rec.get('train_loss')} eval {ev if ev is None else round(ev, 4)} "
            f"eps {eps if eps is None else round(eps, 3)} ex {rec.get('examples_processed')} "
            f"t {time.perf_counter() - t0:.0f}s")

    transport = NoLossTransport(cfg) if no_train_loss else InProcessTransport(cfg)
    res = run_mode(cfg, setup, transport, evaluate, out, resume=resume, on_record=on_record)
    log(f"{name}: finished {len(res.records)} rounds, eps {res.epsilon}, in {time.perf_counter() - t0:.0f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="config names (default: all *.toml here)")
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th config starting at i")
    ap.add_argument("--runs", default=str(HERE / "runs"), help="output root (default experiments/llm/runs)")
    ap.add_argument("--train-loss", action="store_true",
                    help="also log the training loss (one extra forward pass per round; off by default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key in every config (e.g. train.rounds=300)")
    a = ap.parse_args(argv)
    i, n = (int(x) for x in a.shard.split("/"))
    names = a.only or config_names()
    names = names[i::n]
    runs = Path(a.runs)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for name in names:
        run_one(name, load_cfg(name, runs, a.set), log, no_train_loss=not a.train_loss)
    log("all done: " + ", ".join(names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
