"""Pretrained loader: path validation (fast) and SmolLM2 from the GGUF asset (slow, needs `fl-userdp assets`)."""
import numpy as np
import pytest

from fl_userdp.assets import assets_present, gguf_path
from fl_userdp.config import ModelConfig
from fl_userdp.errors import ConfigError
from fl_userdp.local.pretrained import check_model_path


def test_bad_model_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        check_model_path(str(tmp_path / "missing"))
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match="name the file"):
        check_model_path(str(tmp_path))
    assert check_model_path(str(tmp_path / "m.gguf")).name == "m.gguf"


@pytest.mark.slow
@pytest.mark.skipif(not assets_present(), reason="run `fl-userdp assets` first")
def test_smollm2_loads_and_scores_shakespeare():
    import torch

    from fl_userdp.data.shakespeare import load_tiny
    from fl_userdp.data.text import pack
    from fl_userdp.local.pretrained import load_causal_lm, load_tokenizer

    cfg = ModelConfig(name=str(gguf_path()), seq_len=32)
    tok = load_tokenizer(cfg)
    model = load_causal_lm(cfg)
    from pathlib import Path
    users = load_tiny(Path(__file__).parents[1] / "data" / "fixtures" / "tinyshakespeare_head.txt")
    x = torch.as_tensor(pack(users["FIRST CITIZEN"], tok, 32)[:4])
    assert x.max() < tok.vocab_size
    with torch.no_grad():
        loss = model(input_ids=x, labels=x).loss.item()
    assert np.isfinite(loss) and loss < np.log(tok.vocab_size)  # far better than uniform: pretrained weights
