"""The arrays of the ServerApp ↔ ClientApp messages (`fl_userdp.server.app`, `fl_userdp.clients.app`).

The current trainable weights (ArrayRecord "weights") and a node's sum of clipped contributions
(ArrayRecord "update") each travel as one flat array under the key "flat", in trainable order, and are
cut back into the trainables' shapes on arrival. One array per record, not one per trainable: every
Flower `Array` carries an .npy header that is parsed on arrival, and with a LoRA model's dozens of
trainables those parses were a visible share of the driver's time per round. This module imports flwr.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from .mechanism.aggregate import split_flat

KEY = "flat"


def flat_record(arrays: Sequence[np.ndarray] | np.ndarray) -> ArrayRecord:
    """One ArrayRecord holding `arrays` (a list in trainable order, or one flat vector) as one flat array.
    Arrays of different float dtypes travel in the widest of them (numpy's promotion, exact for floats);
    `split_record(..., dtypes=)` gives each its own back, bit for bit."""
    if isinstance(arrays, np.ndarray):
        flat = arrays.ravel()
    else:
        flat = np.concatenate([np.asarray(a).ravel() for a in arrays]) if len(arrays) else np.zeros(0)
    return ArrayRecord({KEY: Array(np.ascontiguousarray(flat))})


def split_record(record: ArrayRecord, shapes: Sequence[tuple[int, ...]],
                 dtypes: Sequence[np.dtype] | None = None) -> list[np.ndarray]:
    """The arrays of a `flat_record`, shaped as `shapes` (and cast to `dtypes` when given); ValueError naming
    what arrived otherwise."""
    keys = list(record.keys())
    if keys != [KEY]:
        raise ValueError(f"expected one array {KEY!r}, got keys {keys[:5]}")
    flat = record[KEY].numpy()
    sizes = [int(np.prod(s)) for s in shapes]
    if flat.ndim != 1 or flat.size != sum(sizes):
        raise ValueError(f"expected a flat array of {sum(sizes)} values, got shape {flat.shape}")
    parts = split_flat(flat, shapes)
    return parts if dtypes is None else [p.astype(d, copy=False) for p, d in zip(parts, dtypes)]
