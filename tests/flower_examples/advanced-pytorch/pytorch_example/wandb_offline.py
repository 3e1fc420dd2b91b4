"""[added] A stand-in for the two W&B calls the strategy makes (there is no W&B account or network here):
`init` and `log` append one JSON line each to `wandb-offline.jsonl` in the working folder."""

import json
from pathlib import Path

FILE = Path("wandb-offline.jsonl")


def _write(entry: dict) -> None:
    with FILE.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def init(project: str, name: str) -> None:
    _write({"init": {"project": project, "name": name}})


def log(data: dict, step: int) -> None:
    _write({"step": step, "data": {k: float(v) for k, v in data.items()}})
