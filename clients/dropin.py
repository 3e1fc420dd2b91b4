"""Client-side clipping for the drop-in (`fl_userdp.server.dropin.UserDP(..., clipping="client")`): a ClientApp mod.

    from fl_userdp.clients.dropin import userdp_clip_mod
    app = ClientApp(mods=[userdp_clip_mod])

On a TRAIN message whose config carries the clipping norm the server sends in client mode (`CLIP_KEY`), the
mod keeps the arrays it received, lets the app train, and replaces the reply's arrays by
sent + clip(reply − sent, C): the update is clipped on the node, before it leaves. The norm is that of the
update over every array the server releases (all arrays but those the server lists as frozen, `FROZEN_KEY`),
computed in float64 from the arrays exactly as they travel (after the cast back to each array's dtype), and
kept ≤ C·(1 − 2^-40) (`fl_userdp.mechanism.fixed_point.record_clip_norm`), so the server's check of the
decoded update (‖update‖ ≤ C) holds bit for bit. The reply's MetricRecord gains `CLIPPED_METRIC` (1.0 when
the update was scaled down, else 0.0), a diagnostic the server sums.

Without `CLIP_KEY` (server-side clipping, or a strategy that is not the drop-in) the mod passes the message
through unchanged: the server clips. Replies with an error, or whose arrays differ from the sent ones in names,
shapes or dtype kind, are passed through unchanged too: the server rejects them. Evaluation messages are not
touched. This module imports flwr and numpy only (no server code).
"""
from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord

from fl_userdp.mechanism.clipping import clip_factors
from fl_userdp.mechanism.fixed_point import record_clip_norm

CLIP_KEY = "userdp.clip-norm"        # float: the clipping norm C (present only in client-side clipping)
FROZEN_KEY = "userdp.frozen"         # list[str]: arrays kept out of the release (not clipped, not released)
ARRAYS_KEY = "userdp.arrays-key"     # str: the key of the ArrayRecord in the message (default "arrays")
CLIPPED_METRIC = "userdp.clipped"    # 1.0 when the node's update was scaled down
SHRINK_STEPS = 60                    # at most this many shrinks for rounding (the k-th by ≥ 2^(k−40), then halving)


def _config_with_clip(msg: Message):
    for record in msg.content.config_records.values():
        if CLIP_KEY in record:
            return record
    return None


def clip_update(sent: dict[str, np.ndarray], reply: dict[str, np.ndarray], names: list[str],
                clip_norm: float) -> tuple[dict[str, np.ndarray], bool]:
    """The reply's arrays `names` replaced by sent + f·(reply − sent), in each array's dtype, with f ≤ 1 chosen
    so that the update as it travels (the cast arrays − sent, in float64) has norm ≤ record_clip_norm(C);
    whether f < 1."""
    bound = record_clip_norm(clip_norm)
    base = [np.asarray(sent[k], np.float64) for k in names]
    upd = [np.asarray(reply[k], np.float64) - b for k, b in zip(names, base)]
    norm = float(np.sqrt(sum(float(np.sum(u * u)) for u in upd))) if upd else 0.0
    factor = float(clip_factors(np.array([norm]), bound)[0])
    if not np.isfinite(norm):
        upd, factor = [np.zeros_like(u) for u in upd], 0.0
    out = dict(reply)
    for step in range(SHRINK_STEPS + 1):
        cast = {k: (b + factor * u).astype(np.asarray(reply[k]).dtype) for k, b, u in zip(names, base, upd)}
        actual = float(np.sqrt(sum(float(np.sum((np.asarray(cast[k], np.float64) - b) ** 2))
                                   for k, b in zip(names, base)))) if names else 0.0
        if actual <= bound:
            out.update(cast)
            return out, factor < 1.0
        factor *= min(1.0 - 2.0 ** min(-1, step - 40), bound / actual)   # from a hair to halving: always ends
    out.update({k: np.asarray(sent[k]).astype(np.asarray(reply[k]).dtype) for k in names})  # update 0
    return out, True


def userdp_clip_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Clip this node's update to the norm the server sends (see the module docstring)."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    config = _config_with_clip(msg)
    if config is None:
        return call_next(msg, ctxt)
    clip_norm = float(config[CLIP_KEY])
    frozen = set(config.get(FROZEN_KEY, []) or [])
    key = str(config.get(ARRAYS_KEY, "arrays"))
    sent = {k: np.array(a.numpy()) for k, a in msg.content[key].items()}  # a copy: the app may change its own
    out = call_next(msg, ctxt)
    if out.has_error() or key not in out.content.array_records:
        return out
    rec = out.content[key]
    reply = {k: a.numpy() for k, a in rec.items()}
    if list(reply) != list(sent):
        return out
    names = [k for k in reply if k not in frozen]
    if any(reply[k].shape != sent[k].shape or reply[k].dtype.kind != "f" or sent[k].dtype.kind != "f"
           for k in names):
        return out
    clipped, was_clipped = clip_update(sent, reply, names, clip_norm)
    out.content[key] = ArrayRecord({k: Array(np.ascontiguousarray(v)) if k in names else rec[k]
                                    for k, v in clipped.items()})
    metrics = list(out.content.metric_records.values())
    if metrics:
        metrics[0][CLIPPED_METRIC] = float(was_clipped)
    else:
        out.content["metrics"] = MetricRecord({CLIPPED_METRIC: float(was_clipped)})
    return out
