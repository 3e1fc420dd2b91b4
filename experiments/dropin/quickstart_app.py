"""A quickstart-style Flower app that knows nothing of fl-userdp: one user per node, a linear model, one local
gradient step per round on the node's own examples ("arrays" in, "arrays" + "metrics" out)."""
from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

DIM = 5
app = ClientApp()


def local_data(pid: int):
    rng = np.random.default_rng(pid)
    x = rng.normal(size=(10, DIM))
    return x, x @ np.arange(1.0, DIM + 1) + 0.1 * rng.normal(size=10)


@app.train()
def train(msg: Message, context: Context) -> Message:
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    x, y = local_data(int(context.node_config["partition-id"]))
    new = w - float(msg.content["config"].get("lr", 0.1)) * x.T @ (x @ w - y) / len(y)
    return Message(RecordDict({"arrays": ArrayRecord([new]), "metrics": MetricRecord({"num-examples": len(y)})}),
                   reply_to=msg)
