"""The ClientApp: `train.uls`, `train.els`, `evaluate` and `query` actions.

Every message carries what the node needs: the flat run config
(ConfigRecord "config", plus "round"), the current trainable weights
(ArrayRecord "weights": one flat array, `fl_userdp.messages`) and the sample
(ArrayRecord "sample": "users"; for ELS also "offsets" and "example-ids",
CSR over the node's sampled users). The reply holds the node's sum of
clipped contributions (ArrayRecord "update": one flat float64 array in
trainable order) and MetricRecord "metrics" (users, examples, clipped, loss-sum,
grid-loss where measured, seconds, max-rss-mb: the node process's peak resident memory).
Model and corpus are cached per worker process (`fl_userdp.clients.compute.worker_for`).
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_userdp.messages import flat_record, split_record

from .compute import config_from_flat, worker_for
from .contribution import Contribution

app = ClientApp()

_META_KEYS = ("round",)


def _inputs(msg: Message):
    flat = {k: v for k, v in msg.content["config"].items() if k not in _META_KEYS}
    cfg = config_from_flat(flat)
    worker = worker_for(cfg)
    return cfg, worker, split_record(msg.content["weights"], worker.shapes)


def _shard_check(users: np.ndarray, cfg, context: Context) -> None:
    pid = int(context.node_config.get("partition-id", -1))
    U = cfg.sim.users_per_node
    if users.size and (users.min() < pid * U or users.max() >= (pid + 1) * U):
        raise ValueError(f"node {pid} hosts users [{pid * U}, {(pid + 1) * U}), asked for {users.min()}..{users.max()}")


def _reply(msg: Message, c: Contribution, t0: float) -> Message:
    update = flat_record(np.asarray(c.total, np.float64))
    metrics = {"users": c.users, "examples": c.examples, "clipped": c.clipped, "seconds": time.perf_counter() - t0,
               "max-rss-mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if c.loss_sum is not None:
        metrics["loss-sum"] = float(c.loss_sum)
    if c.grid_loss is not None:
        metrics["grid-loss"] = float(c.grid_loss)
    return Message(content=RecordDict({"update": update, "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.train("uls")
def train_uls(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    cfg, worker, weights = _inputs(msg)
    users = msg.content["sample"]["users"].numpy().astype(np.int64)
    _shard_check(users, cfg, context)
    c = worker.uls(cfg, weights, int(msg.content["config"]["round"]), users)
    return _reply(msg, c, t0)


@app.train("els")
def train_els(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    cfg, worker, weights = _inputs(msg)
    s = msg.content["sample"]
    users = s["users"].numpy().astype(np.int64)
    _shard_check(users, cfg, context)
    c = worker.els(cfg, weights, users, s["offsets"].numpy().astype(np.int64), s["example-ids"].numpy().astype(np.int64))
    return _reply(msg, c, t0)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, worker, weights = _inputs(msg)
    loss = worker.evaluate(cfg, weights)
    return Message(content=RecordDict({"metrics": MetricRecord({"eval-loss": float(loss)})}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this node's partition id (node ids are random; the server maps partitions to nodes)."""
    nc = context.node_config
    info = {"partition-id": int(nc.get("partition-id", -1)), "num-partitions": int(nc.get("num-partitions", -1)),
            "pid": os.getpid()}
    return Message(content=RecordDict({"node": ConfigRecord(info)}), reply_to=msg)
