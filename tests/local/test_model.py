"""LoRA models: deterministic construction, only adapters trainable, weights <-> arrays."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from fl_userdp.config import ModelConfig  # noqa: E402
from fl_userdp.local import (build_model, cached_model, flatten, get_trainable, num_trainable,  # noqa: E402
                             set_trainable, trainable_names, trainable_shapes, unflatten)

CFG = ModelConfig()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_different_seed_differs():
    a, b, c = build_model(CFG, 7), build_model(CFG, 7), build_model(CFG, 8)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # building does not disturb the caller's global torch RNG stream
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    build_model(CFG, 1)
    assert torch.equal(torch.rand(1), x)


def test_only_lora_trainable_and_shapes():
    m = build_model(CFG, 0)
    names = trainable_names(m)
    assert names and all("lora_" in n for n in names)
    assert any("q_proj" in n for n in names) and any("v_proj" in n for n in names)
    assert len(names) == 2 * 7 * CFG.num_layers  # A and B for q,k,v,o,gate,up,down in every layer
    assert trainable_shapes(m)[0] == (CFG.lora_rank, CFG.hidden_size)
    assert num_trainable(m) == sum(int(np.prod(s)) for s in trainable_shapes(m))
    assert build_model(ModelConfig(lora_targets="q_proj,k_proj,v_proj,o_proj"), 0) is not None


def test_get_set_roundtrip_and_flat_order():
    m = build_model(CFG, 0)
    rng = np.random.default_rng(0)
    new = [rng.standard_normal(s).astype(np.float32) for s in trainable_shapes(m)]
    set_trainable(m, new)
    got = get_trainable(m)
    assert all(g.dtype == np.float32 for g in got)
    for a, b in zip(new, got):
        np.testing.assert_array_equal(a, b)
    flat = flatten(got)
    assert flat.dtype == np.float64 and flat.size == num_trainable(m)
    for a, b in zip(unflatten(flat, trainable_shapes(m)), got):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        set_trainable(m, new[:-1])
    with pytest.raises(ValueError):
        set_trainable(m, [a.T for a in new])


def test_cached_model_is_per_config_and_seed():
    assert cached_model(CFG, 0) is cached_model(CFG, 0)
    assert cached_model(CFG, 0) is not cached_model(CFG, 1)
