"""The row-independence probe of your own task leaves the task as it found it: the module's weights and
buffers, and the random generators (torch, numpy, Python's) of the process."""
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from fl_userdp.config import parse_config  # noqa: E402
from fl_userdp.local.task import load_task  # noqa: E402

BASE = {"model.hidden-size": 16, "data.num-users": 64, "data.heldout-users": 4}
SEEN: dict[str, dict] = {}


class Counting(torch.nn.Module):
    """A layer that keeps a running count of the rows it saw (a buffer a forward in train mode updates)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]
        return x


def stateful_task(cfg):
    """The worked example with a buffer its forward updates, and a loss that draws from every generator."""
    from experiments.custom_task.tabular import make_task

    task = make_task(cfg)
    task.module.counting = Counting()
    inner = task.loss

    def loss(module, batch):
        module.counting(batch)
        noise = 1e-3 * (torch.rand(()) + float(np.random.rand()) + random.random())  # the same for every row
        return inner(module, batch) + noise

    task.loss = loss
    SEEN["state"] = {k: v.detach().clone() for k, v in task.module.state_dict().items()}
    return task


def _generators():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_the_probe_leaves_weights_buffers_and_generators_as_they_were(monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[2])
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    before = _generators()
    loaded = load_task(parse_config({**BASE, "model.name": f"{__name__}:stateful_task"}))
    after = _generators()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    state = loaded.module.state_dict()
    assert state.keys() == SEEN["state"].keys()
    for name, value in SEEN["state"].items():
        assert torch.equal(state[name], value), name  # the probe's forwards left no trace (counting.seen is 0)
