"""Pretrained causal LMs from local files: a Hugging Face model folder or a GGUF file (offline).

`load_causal_lm(model_cfg)` loads `model.name`:

* a folder with `config.json` + weights: `AutoModelForCausalLM.from_pretrained(folder)`;
* a `.gguf` file: `AutoModelForCausalLM.from_pretrained(parent, gguf_file=name)`;
  transformers dequantises the GGUF tensors (e.g. SmolLM2's Q4_1) to the
  requested dtype, so the model in memory is a plain float model. Needs the
  `gguf` package (`pip install gguf`).

dtype and device come from `model.dtype` / `model.device` ("auto": CUDA when
available, else CPU). Loading never touches the network (`local_files_only`).
`load_tokenizer(model_cfg)` returns the matching tokenizer wrapper
(`fl_userdp.data.text.HFTokenizer`). The LoRA wrapping stays in
`model.build_model`, which can dispatch here for every name but "tiny".
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(model_cfg: ModelConfig) -> torch.device:
    """`model.device` as a torch device ("auto": CUDA when present); ConfigError when CUDA is asked for but
    this torch has none, or the index is out of range."""
    if model_cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(model_cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("model.device", model_cfg.device, "needs CUDA, which this machine's torch does not have "
                              "(use 'cpu' or 'auto')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("model.device", model_cfg.device, f"names a GPU this machine does not have "
                              f"({torch.cuda.device_count()} visible)")
    return device


def check_model_path(name: str) -> Path:
    """The model path, validated: an existing `.gguf` file or a folder with config.json."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        if importlib.util.find_spec("gguf") is None:
            raise ConfigError("model.name", name, "is a GGUF file; loading it needs `pip install gguf`")
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir() and any(path.glob("*.gguf")):
        raise ConfigError("model.name", name, f"is a folder of GGUF files; name the file itself "
                          f"(e.g. {next(path.glob('*.gguf'))})")
    raise ConfigError("model.name", name, "must be a local Hugging Face model folder (with config.json) "
                      "or a .gguf file")


def load_causal_lm(model_cfg: ModelConfig) -> nn.Module:
    """The base (un-adapted) causal LM of `model.name`, in `model.dtype` on `model.device`, eval mode."""
    from transformers import AutoModelForCausalLM

    path = check_model_path(model_cfg.name)
    kwargs = {"dtype": DTYPES[model_cfg.dtype], "local_files_only": True}
    try:
        if path.suffix == ".gguf":
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError("model.name", model_cfg.name, f"could not be loaded ({err.__class__.__name__}: "
                          f"{str(err).splitlines()[0][:200]})") from None
    model.config.use_cache = False
    return model.to(device=resolve_device(model_cfg), dtype=DTYPES[model_cfg.dtype]).eval()


def load_tokenizer(model_cfg: ModelConfig):
    """The model's own tokenizer (`HFTokenizer`) for `model.name` (folder or .gguf)."""
    from ..data.text import HFTokenizer

    return HFTokenizer.load(check_model_path(model_cfg.name))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_hf_folder(model_cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Convert `model.name` (e.g. the GGUF) once into a plain HF folder (safetensors + tokenizer).

    Loading a GGUF dequantises every tensor and converts the tokenizer on each
    call (about 2 minutes for SmolLM2-135M on these CPUs); the exported folder
    loads in seconds, so point `model.name` at it for experiments. Idempotent:
    an existing folder with config.json is left as is.
    """
    out = Path(out_dir)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    model = load_causal_lm(ModelConfig(name=model_cfg.name, dtype="float32", device="cpu"))
    tok = load_tokenizer(model_cfg)
    tmp = out.with_name(out.name + ".partial")
    # The GGUF weights are already dequantised to float32: drop the GGUF "quantizer"
    # that makes transformers refuse to serialise the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.tok.save_pretrained(tmp)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return out
