"""Synthetic user-partitioned corpus: determinism, shape, user structure, laziness, no torch."""
import subprocess
import sys

import numpy as np
import pytest

from fl_userdp.config import DataConfig, ModelConfig
from fl_userdp.data import SyntheticTextCorpus, load_corpus
from fl_userdp.errors import ConfigError

MODEL = ModelConfig()


def corpus(seed=0, **kw):
    return load_corpus(DataConfig(**kw), MODEL, seed)


def test_shapes_and_counts():
    c = corpus(num_users=50, heldout_users=5)
    assert c.num_users == 50 and c.counts.shape == (50,) and c.counts.dtype == np.int64
    assert c.counts.min() >= 1 and c.seq_len == MODEL.seq_len and c.vocab_size == MODEL.vocab_size
    for u in (0, 7, 49):
        x = c.examples(u)
        assert x.shape == (c.counts[u], MODEL.seq_len) and x.dtype == np.int64
        assert 0 <= x.min() and x.max() < MODEL.vocab_size
    h = c.heldout()
    assert h.shape == (int(c.heldout_counts.sum()), MODEL.seq_len)
    np.testing.assert_array_equal(h, np.concatenate([c.examples(50 + j) for j in range(5)]))
    assert corpus(num_users=3, heldout_users=0).heldout().shape == (0, MODEL.seq_len)
    with pytest.raises(IndexError):
        c.examples(55)


def test_deterministic_and_seeded():
    a, b = corpus(seed=3), corpus(seed=3)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.examples(11), a.examples(11))
    np.testing.assert_array_equal(a.examples(11), b.examples(11))
    c = corpus(seed=4)
    assert not np.array_equal(a.counts, c.counts)
    assert not np.array_equal(a.examples(0)[:1], c.examples(0)[:1])


def test_counts_lognormal_median():
    c = corpus(num_users=4000, examples_per_user_median=12.0, examples_per_user_sigma=1.0)
    assert 10 <= np.median(c.counts) <= 14
    assert (corpus(num_users=100, examples_per_user_sigma=0.0).counts == 12).all()


def _hist(x, vocab):
    return np.bincount(x.ravel(), minlength=vocab) / x.size


def _within_user_spread(c, users):
    """Mean pairwise L1 distance between unigram histograms of one user's examples."""
    out = []
    for u in users:
        e = c.examples(u)
        if len(e) >= 2:
            h = np.stack([_hist(r, c.vocab_size) for r in e])
            d = np.abs(h[:, None] - h[None]).sum(-1)
            out.append(d[np.triu_indices(len(e), 1)].mean())
    return float(np.mean(out))


def test_users_differ():
    c = corpus(num_users=80, user_diversity=0.0)
    hu = np.stack([_hist(c.examples(u), c.vocab_size) for u in range(80)])
    across = np.abs(hu[:, None] - hu[None]).sum(-1)[np.triu_indices(80, 1)].mean()
    assert across > 0.5
    assert across > _within_user_spread(c, range(80))  # users differ more than a user's own examples
    assert not any(np.array_equal(c.examples(u)[:1], c.examples(u + 1)[:1]) for u in range(79))


def test_within_user_diversity_grows():
    spread = [_within_user_spread(corpus(num_users=80, user_diversity=d), range(80)) for d in (0.0, 0.5, 1.0)]
    assert spread[0] < spread[1] < spread[2]
    assert spread[2] - spread[0] > 0.2


def _array_bytes(obj) -> int:
    """Bytes held by the numpy arrays an object keeps (directly or in lists of objects)."""
    total = 0
    for v in vars(obj).values():
        items = v if isinstance(v, (list, tuple)) else [v]
        for item in items:
            if isinstance(item, np.ndarray):
                total += item.nbytes if item.base is None else 0  # views share their base's memory
            elif hasattr(item, "__dict__") and not isinstance(item, type):
                total += _array_bytes(item)
    return total


def test_large_population_is_lazy():
    """Nothing per user is materialised: 99,000 more users cost only the counts (8 bytes each), and any
    user's examples are regenerated on demand, identically."""
    small = SyntheticTextCorpus(DataConfig(num_users=1_000), MODEL, 0)
    c = SyntheticTextCorpus(DataConfig(num_users=100_000), MODEL, 0)
    assert c.counts.shape == (100_000,)
    assert _array_bytes(c) - _array_bytes(small) <= 8 * 99_000
    assert c.examples(99_999).shape == (c.counts[-1], MODEL.seq_len)
    np.testing.assert_array_equal(c.examples(99_999), c.examples(99_999))


def test_config_errors():
    with pytest.raises(ConfigError) as err:
        corpus(source="somewhere/else.jsonl")
    assert err.value.key == "data.source"
    with pytest.raises(ConfigError) as err:
        corpus(num_users=0)
    assert err.value.key == "data.num-users"


def test_data_package_does_not_import_torch():
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from fl_userdp.config import DataConfig, ModelConfig\nfrom fl_userdp.data import load_corpus\n"
            "c = load_corpus(DataConfig(num_users=5), ModelConfig(), 0)\nc.examples(2); c.heldout()\n"
            "assert 'torch' not in sys.modules\nprint('NO-TORCH-OK')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "NO-TORCH-OK" in out.stdout


def test_users_generated_together_are_the_users_generated_one_at_a_time():
    from fl_userdp.config import parse_config
    from fl_userdp.data.synthetic_text import SyntheticTextCorpus

    for flat in ({}, {"data.example-similarity": 0.8, "data.user-diversity": 0.9}):
        cfg = parse_config({**flat, "data.num-users": 200})
        corpus = SyntheticTextCorpus(cfg.data, cfg.model, 5)
        users = [7, 0, 199, 7, 150, 201]  # any order, repeats, a held-out user
        together = corpus.examples_many(users)
        for u, rows in zip(users, together):
            alone = corpus.examples(u)
            assert rows.dtype == alone.dtype and np.array_equal(rows, alone)
        assert corpus.examples_many([]) == []
