"""The only torch / transformers / peft / opacus code in fl_userdp.

`model`: LoRA-wrapped causal LMs and the trainable-weights <-> numpy bridge.
`updates`: clipped per-user updates (ULS), clipped per-example gradient sums
(ELS) and evaluation loss. Flat vectors are the concatenation of
`get_trainable(model)` arrays (C order) in `trainable_names(model)` order.
"""
from .model import (build_model, cached_model, flatten, get_trainable, num_trainable, set_trainable,
                    trainable_names, trainable_shapes, unflatten)
from .updates import els_clipped_sum, eval_loss, per_example_grads, per_example_loss, uls_clipped_sum

__all__ = ["build_model", "cached_model", "flatten", "unflatten", "get_trainable", "set_trainable",
           "trainable_names", "trainable_shapes", "num_trainable", "els_clipped_sum", "uls_clipped_sum",
           "eval_loss", "per_example_grads", "per_example_loss"]
