"""What every subcommand shares: the one-line argparse error, JSON numbers, epsilon formatting."""
from __future__ import annotations

import argparse
import json
import math
from typing import Any


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def json_number(value: float) -> float | None:
    return None if math.isinf(value) or math.isnan(value) else value


def fmt_eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.6g}"


def emit(payload: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(payload, sort_keys=True))
    else:
        print(text)
