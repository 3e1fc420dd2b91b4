"""opacus, imported without changing the importing program's logging; the GroupNorm fix for BatchNorm models.

Importing opacus runs `logging.basicConfig(...)` (`opacus/utils/module_utils.py`): in a program whose root
logger has no handler yet — a Flower app logs through the "flwr" logger's own handler — it adds a stderr
handler to the root logger, and from then on every record that reaches the root prints a second time, in
opacus' format. `import_opacus` imports any opacus module with the root logger's handlers and level put back
as they were; every opacus import in fl_userdp goes through it (tests/local/test_opacus_compat.py checks the
sources). `replace_batchnorm` is opacus' `ModuleValidator.fix` under the same guard: the fix the drop-in names
for models with BatchNorm (`fl_userdp.server.dropin.check_arrays`).
"""
from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator


@contextmanager
def root_logging_kept() -> Iterator[None]:
    """The root logger's handlers and level as they were before the block (handlers added in it removed)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def import_opacus(name: str = "opacus") -> ModuleType:
    """`importlib.import_module(name)` for an opacus module, leaving the root logger as it was."""
    with root_logging_kept():
        return importlib.import_module(name)


def replace_batchnorm(model):
    """`model` with every BatchNorm layer replaced by GroupNorm (opacus' `ModuleValidator.fix`: GroupNorm with
    min(32, C) groups over C channels), so its state holds only weights: no running statistics computed from a
    user's batches. Retrain (or fine-tune) after the swap: the GroupNorm layers start from scale 1, shift 0."""
    validators = import_opacus("opacus.validators")
    with root_logging_kept():
        return validators.ModuleValidator.fix(model)
