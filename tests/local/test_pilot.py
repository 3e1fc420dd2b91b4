"""The advisor's pilot on the tiny LM, and the corpus knob that moves it (data.example-similarity)."""
import numpy as np
import pytest

from fl_userdp.config import parse_config
from fl_userdp.data.synthetic_text import SyntheticTextCorpus
from fl_userdp.errors import ConfigError
from fl_userdp.local.pilot import measure_pilot

SMALL = {"data.num-users": 200, "data.heldout-users": 4, "model.num-layers": 1, "seed": 3}


def corpus(similarity):
    cfg = parse_config({**SMALL, "data.example-similarity": similarity})
    return SyntheticTextCorpus(cfg.data, cfg.model, cfg.seed)


def test_similarity_zero_is_the_corpus_as_before_and_one_makes_copies():
    base = parse_config(SMALL)
    before = SyntheticTextCorpus(base.data, base.model, base.seed)
    same, copies, half = corpus(0.0), corpus(1.0), corpus(0.5)
    users = [u for u in range(50) if before.counts[u] >= 4][:5]
    for u in users:
        np.testing.assert_array_equal(same.examples(u), before.examples(u))
        rows = copies.examples(u)
        assert (rows == rows[0]).all()
        np.testing.assert_array_equal(rows[0], before.examples(u)[0])   # the template is the first example
        h = half.examples(u)[1:]
        share = float((h == h[0:1] * 0 + half.examples(u)[0]).mean())
        assert 0.45 < share < 0.8                   # copies with prob 0.5, plus chance agreements
    with pytest.raises(ConfigError, match="data.example-similarity"):
        parse_config({"data.example-similarity": 1.5})


def test_pilot_cosines_and_within_user_share():
    free = measure_pilot(parse_config({**SMALL, "data.example-similarity": 0.0}), users=24, caps=(1, 4, 16))
    near = measure_pilot(parse_config({**SMALL, "data.example-similarity": 0.95}), users=24, caps=(1, 4, 16))
    assert free.dim > 0 and free.users == 24
    assert free.user_cosine[1] == pytest.approx(free.example_cosine[1], rel=1e-9)   # G = 1: the example itself
    assert free.user_cosine[1] < free.user_cosine[4] < free.user_cosine[16]         # averaging pays...
    assert near.user_cosine[16] / near.user_cosine[1] < free.user_cosine[16] / free.user_cosine[1]  # ...less on copies
    assert near.within_user_share < 0.5 < free.within_user_share < 1.0


def test_pilot_refuses_tasks_it_cannot_measure():
    with pytest.raises(ConfigError, match="model.name"):
        measure_pilot(parse_config({"model.name": "linear"}))
