"""The LM path on other devices and precisions: bfloat16 autocast (on CPU here, on CUDA when present) and
CUDA end to end (skipped without CUDA). References are the float32 CPU computations."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from fl_userdp.config import ModelConfig, parse_config  # noqa: E402
from fl_userdp.errors import ConfigError  # noqa: E402
from fl_userdp.local import build_model, els_clipped_sum, get_trainable, set_trainable, uls_clipped_sum  # noqa: E402
from fl_userdp.local.updates import per_example_grads  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")
CFG = ModelConfig()


def moved(device: str):
    m = build_model(ModelConfig(device=device), 0)
    rng = np.random.default_rng(1)
    set_trainable(m, [a + 0.05 * rng.standard_normal(a.shape).astype(np.float32) for a in get_trainable(m)])
    return m


@pytest.fixture(scope="module")
def examples():
    return np.random.default_rng(2).integers(0, CFG.vocab_size, (12, CFG.seq_len))


def test_autocast_is_a_validated_key():
    assert parse_config({"model.autocast": "bf16"}).model.autocast == "bf16"
    with pytest.raises(ConfigError) as err:
        parse_config({"model.autocast": "fp8"})
    assert err.value.key == "model.autocast" and err.value.value == "fp8"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_bf16_autocast_keeps_float32_gradients_and_clips_at_the_bound(device, examples):
    m = moved(device)
    tokens = torch.as_tensor(examples, device=device)
    ref = per_example_grads(m, tokens)
    got = per_example_grads(m, tokens, autocast=True)
    assert all(g.dtype == torch.float32 and g.device.type == device for g in got)
    flat = lambda gs: torch.cat([g.reshape(g.shape[0], -1) for g in gs], 1).double().cpu().numpy()  # noqa: E731
    a, b = flat(ref), flat(got)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    assert rel.max() < 0.05 and rel.max() > 0  # bf16 changes the numbers, a little
    c = float(np.median(np.linalg.norm(b, axis=1)))
    total, clipped = els_clipped_sum(m, examples, c, chunk_size=5, autocast=True)
    want = sum(v * min(1.0, c / np.linalg.norm(v)) for v in b)
    np.testing.assert_allclose(total, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert clipped == int((np.linalg.norm(b, axis=1) > c).sum())
    users = [examples[:3], examples[3:4], examples[4:12]]
    u_total, _, norms = uls_clipped_sum(m, users, c, "gradient", 1, 0.1, 8, get_trainable(m), autocast=True)
    assert np.linalg.norm(u_total) <= len(users) * c * (1 + 1e-6)
    u_ref, _, _ = uls_clipped_sum(m, users, c, "gradient", 1, 0.1, 8, get_trainable(m))
    assert 0 < np.linalg.norm(u_total - u_ref) < 0.05 * np.linalg.norm(u_ref)  # autocast reached the users


def test_the_nodes_pass_autocast_through_and_sum_in_float64():
    """A node's contribution under model.autocast=bf16 differs (a little) from float32's, in both modes."""
    from fl_userdp.clients.compute import worker_for

    flat = {"data.num-users": 40, "privacy.clip-norm": 0.05}
    cfg32, cfg16 = parse_config(flat), parse_config({**flat, "model.autocast": "bf16"})
    worker = worker_for(cfg32)
    weights = get_trainable(worker.model)
    weights = [w + 0.05 * np.random.default_rng(3).standard_normal(w.shape).astype(np.float32) for w in weights]
    users = np.arange(6)
    offsets, ids = np.array([0, 2, 3, 5, 6, 8, 9]), np.array([0, 1, 0, 0, 1, 0, 0, 1, 0])
    for run in (lambda c: worker.uls(c, weights, 1, users, with_loss=False),
                lambda c: worker.els(c, weights, users, offsets, ids, with_loss=False)):
        a, b = run(cfg32).total, run(cfg16).total
        assert a.dtype == b.dtype == np.float64
        assert 0 < np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)


def test_autocast_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError) as err:
        parse_config({"model.name": "linear", "model.autocast": "bf16"})
    assert err.value.key == "model.autocast" and "language-model path" in err.value.requirement


@needs_cuda
def test_cuda_clipped_sums_match_the_cpu(examples):
    cpu, gpu = moved("cpu"), moved("cuda")
    for method in ("hooks", "opacus"):
        a, na = els_clipped_sum(cpu, examples, 0.05, chunk_size=5, method=method)
        b, nb = els_clipped_sum(gpu, examples, 0.05, chunk_size=5, method=method)
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6)
        assert na == nb
    users = [examples[:3], examples[3:12]]
    a, _, _ = uls_clipped_sum(cpu, users, 0.05, "gradient", 1, 0.1, 8, get_trainable(cpu))
    b, _, _ = uls_clipped_sum(gpu, users, 0.05, "gradient", 1, 0.1, 8, get_trainable(gpu))
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_a_cuda_run_end_to_end_matches_the_cpu_run(autocast):
    import fl_userdp

    base = {"data.num-users": 64, "train.rounds": 2, "privacy.sampling-rate": 0.25, "train.eval-every": 2,
            "privacy.noise-multiplier": 0.0}
    cpu = fl_userdp.simulate(base, backend="inprocess")
    gpu = fl_userdp.simulate({**base, "model.device": "cuda", "model.autocast": autocast}, backend="inprocess")
    for mode in ("uls", "els"):
        assert gpu[mode].records[-1]["eval_loss"] == pytest.approx(cpu[mode].records[-1]["eval_loss"],
                                                                   rel=1e-3 if autocast == "none" else 2e-2)


@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_the_device_benchmark_runs_in_its_smoke_form(autocast):
    """experiments/bench_gpu.py on the tiny LM (CPU here; the device's own figures come from a GPU run)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--model", "tiny", "--batch", "4", "--seq-len", "16", "--reps", "1", "--warmup", "0",
                      "--device", "cuda" if CUDA else "cpu", "--autocast", autocast, "--matmul-n", "256",
                      "--json"])
    assert set(out["rows"]) == {"plain", "els", "uls"} and out["matmul_tflops"] > 0
    for row in out["rows"].values():
        assert row["examples_per_s"] > 0 and 0 < row["fraction_of_limit"] and row["ratio_to_plain"] > 0


def test_the_device_benchmark_builds_an_architecture_from_its_config(tmp_path):
    """`--model shape:CONFIG.json` (experiments/gpu/run.sh's form): that architecture, random weights."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    shipped = json.loads((root / "experiments" / "gpu" / "smollm2-135m-config.json").read_text())
    assert shipped["hidden_size"] == 576 and shipped["num_hidden_layers"] == 30  # SmolLM2-135M's shape
    small = {**shipped, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 256}
    (tmp_path / "config.json").write_text(json.dumps(small))
    spec = importlib.util.spec_from_file_location("bench_gpu", root / "experiments" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--model", f"shape:{tmp_path / 'config.json'}", "--batch", "4", "--seq-len", "8", "--reps", "1",
                      "--warmup", "0", "--device", "cpu", "--matmul-n", "128", "--json"])
    assert out["model"].startswith("shape:") and out["base_params"] > 0
    assert set(out["rows"]) == {"plain", "els", "uls"}
