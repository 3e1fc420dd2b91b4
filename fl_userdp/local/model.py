"""Models with LoRA adapters, and the adapter weights <-> numpy arrays bridge.

`build_model(model_cfg, seed)` returns a causal LM (a `peft.PeftModel`) whose
only trainable parameters are the LoRA adapters:

* `model.name == "tiny"`: a small `LlamaForCausalLM` built from the config
  (vocab_size, hidden_size, num_layers, num_heads, max positions >= seq_len),
  its weights drawn under `torch.manual_seed(seed)` inside a forked RNG, so the
  server and every node get bit-identical base and initial adapter weights;
  with `model.init-weights` the base's weights are loaded from that state-dict
  file instead (a warm start; the LoRA adapters are still drawn from the seed).
* a local folder or a `.gguf` file: `fl_userdp.local.pretrained.load_causal_lm`
  (offline, `local_files_only`; a missing path, a folder without config.json
  or a GGUF without the `gguf` package is a ConfigError naming `model.name`).

Dropout is switched off everywhere (p = 0): per-example gradients and the
user's update must be deterministic functions of the data and the weights.

**Flat vector order.** Everything exchanged with the server is the list
`get_trainable(model)` (float32 arrays, in `trainable_names(model)` order =
`model.named_parameters()` order restricted to trainable parameters). A flat
vector is the concatenation of those arrays, each flattened in C order.
"""
from __future__ import annotations

import warnings
import weakref

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from .pretrained import resolve_device

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CACHE: dict[tuple[ModelConfig, int], nn.Module] = {}
_PARAMS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()




def tiny_base(model_cfg: ModelConfig) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=2 * model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_heads,
        max_position_embeddings=max(64, model_cfg.seq_len),
        tie_word_embeddings=False,
        attention_dropout=0.0,
        use_cache=False,
        initializer_range=0.1,  # 0.02 (HF default) caps logit gaps of a frozen random lm_head at ~1 nat
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    if model_cfg.init_weights:           # a warm start: the base's weights from a file (the adapters stay seeded)
        state = torch.load(model_cfg.init_weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model


def _pretrained_base(model_cfg: ModelConfig) -> nn.Module:
    """A local HF folder or .gguf file, loaded offline (`pretrained.load_causal_lm`: clear ConfigErrors)."""
    from .pretrained import load_causal_lm

    return load_causal_lm(model_cfg)


def lora_targets(model_cfg: ModelConfig, base: nn.Module) -> list[str]:
    """Target module names: the config's comma-separated list, or a sensible default."""
    if model_cfg.lora_targets.strip() and model_cfg.lora_targets.strip() != "auto":
        return [t.strip() for t in model_cfg.lora_targets.split(",") if t.strip()]
    leaf_names = {name.rsplit(".", 1)[-1] for name, mod in base.named_modules() if isinstance(mod, nn.Linear)}
    # All attention and MLP projections when present (LoRA on every linear layer adapts a
    # frozen base far better than on q/v alone), else the usual attention names.
    llama = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for candidate in (llama, ["q_proj", "v_proj"], ["c_attn"], ["query_key_value"], ["query", "value"]):
        if set(candidate) <= leaf_names:
            return candidate
    return sorted(leaf_names - {"lm_head"})


def build_model(model_cfg: ModelConfig, seed: int) -> nn.Module:
    """A fresh LoRA-wrapped causal LM; identical weights for identical (model_cfg, seed)."""
    from peft import LoraConfig, get_peft_model

    device = resolve_device(model_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        base = tiny_base(model_cfg) if model_cfg.name == "tiny" else _pretrained_base(model_cfg)
        base = base.to(device=device, dtype=_DTYPES[model_cfg.dtype])  # move BEFORE peft (opacus#820)
        config = LoraConfig(r=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha, lora_dropout=0.0,
                            target_modules=lora_targets(model_cfg, base), bias="none")
        with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 deprecated helper
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(base, config)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.to(device)
    model.train()  # no dropout anywhere; train mode keeps opacus hooks active
    return model


def cached_model(model_cfg: ModelConfig, seed: int) -> nn.Module:
    """One model per (model_cfg, seed) per process. Callers must `set_trainable` before use."""
    key = (model_cfg, int(seed))
    if key not in _CACHE:
        _CACHE[key] = build_model(model_cfg, seed)
    return _CACHE[key]


def trainable_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the trainable weights, in `named_parameters` order (cached per model)."""
    cached = _PARAMS.get(model)
    if cached is None or any(not p.requires_grad for _, p in cached):
        cached = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        _PARAMS[model] = cached
    return cached


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, _ in trainable_params(model)]


def trainable_shapes(model: nn.Module) -> list[tuple]:
    return [tuple(p.shape) for _, p in trainable_params(model)]


def num_trainable(model: nn.Module) -> int:
    return int(sum(p.numel() for _, p in trainable_params(model)))


def get_trainable(model: nn.Module) -> list[np.ndarray]:
    """Copies of the trainable (LoRA) weights as float32 arrays, in `trainable_names` order."""
    return [p.detach().to("cpu", torch.float32).numpy().copy() for _, p in trainable_params(model)]


def set_trainable(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load trainable weights from arrays in `trainable_names` order (shapes must match)."""
    params = trainable_params(model)
    if len(arrays) != len(params):
        raise ValueError(f"expected {len(params)} arrays, got {len(arrays)}")
    with torch.no_grad():
        for (name, p), a in zip(params, arrays):
            a = np.asarray(a)
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"{name}: expected shape {tuple(p.shape)}, got {tuple(a.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(device=p.device, dtype=p.dtype))


def flatten(arrays: list[np.ndarray]) -> np.ndarray:
    """Arrays -> one flat float64 vector (C order, concatenated)."""
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)


def unflatten(flat: np.ndarray, shapes: list[tuple], dtype=np.float32) -> list[np.ndarray]:
    """Inverse of `flatten` for the given shapes."""
    out, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(np.asarray(flat[offset:offset + size], dtype=dtype).reshape(shape))
        offset += size
    if offset != flat.size:
        raise ValueError(f"flat vector has {flat.size} entries, shapes need {offset}")
    return out
