"""Server optimizers on the flat trainable vector (numpy, float64).

Each step takes the round's noisy mean as a gradient estimate: the mean
clipped gradient (ULS gradient mode, ELS) or the mean model delta
start − end (ULS local-steps mode), and moves the weights against it.
State is a plain dict of arrays and numbers, so it checkpoints as npz.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class SGD:
    name = "sgd"

    def __init__(self, lr: float) -> None:
        self.lr = float(lr)

    def step(self, weights: np.ndarray, grad: np.ndarray) -> np.ndarray:
        return weights - self.lr * grad

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")


class Adam:
    name = "adam"

    def __init__(self, lr: float, dim: int, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps = float(lr), beta1, beta2, eps
        self.m = np.zeros(dim)
        self.v = np.zeros(dim)
        self.t = 0

    def step(self, weights: np.ndarray, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return weights - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "t": self.t, "m": self.m.copy(), "v": self.v.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        self.t, self.m, self.v = int(state["t"]), np.asarray(state["m"], float), np.asarray(state["v"], float)


def make_optimizer(name: str, lr: float, dim: int) -> SGD | Adam:
    if name == "sgd":
        return SGD(lr)
    if name == "adam":
        return Adam(lr, dim)
    raise ValueError(f"unknown server optimizer {name!r}")
