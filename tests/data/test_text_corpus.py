"""Tokenisation and packing of text users into (n_u, seq_len) int64 examples."""
import numpy as np
import pytest

from fl_userdp.config import DataConfig, ModelConfig
from fl_userdp.data.text import ByteTokenizer, TextCorpus, pack, pad_mask, text_corpus
from fl_userdp.errors import ConfigError


def test_byte_tokenizer_round_trip_and_eos():
    tok = ByteTokenizer(257)
    assert tok.eos_id == 256 and tok.encode("Hi é") == list("Hi é".encode())
    assert tok.decode(tok.encode("Hi é")) == "Hi é"
    small = ByteTokenizer(128)
    assert small.eos_id == 127 and max(small.encode("é")) < 127
    with pytest.raises(ConfigError, match="model.vocab-size"):
        ByteTokenizer(64)


def test_pack_concatenates_with_eos_and_pads_only_the_last_row():
    tok = ByteTokenizer(257)
    rows = pack(["abc", "defgh"], tok, 4)  # a b c E d e f g h E -> 3 rows, 2 pads
    assert rows.tolist() == [[97, 98, 99, 256], [100, 101, 102, 103], [104, 256, 256, 256]]
    mask = pad_mask(rows, tok.eos_id)
    assert mask.tolist() == [[False] * 4, [False] * 4, [False, False, True, True]]


def test_corpus_split_is_seeded_and_disjoint():
    users = {f"u{i}": ["word " * (i + 1)] for i in range(30)}
    a = TextCorpus(users, ByteTokenizer(), 8, num_users=20, heldout_users=4, seed=1)
    b = TextCorpus(users, ByteTokenizer(), 8, num_users=20, heldout_users=4, seed=1)
    assert a.user_names == b.user_names and a.heldout_names == b.heldout_names
    assert a.num_users == 20 and len(a.heldout_names) == 4 and not set(a.user_names) & set(a.heldout_names)
    for u in range(a.num_users):
        assert a.examples(u).shape == (a.counts[u], 8)
    np.testing.assert_array_equal(a.examples(3), b.examples(3))


def test_corpus_errors():
    with pytest.raises(ConfigError, match="no users"):
        TextCorpus({"a": ["  "]}, ByteTokenizer(), 8, 10, 0, 0)
    with pytest.raises(ConfigError, match="data.heldout-users"):
        TextCorpus({"a": ["x"], "b": ["y"]}, ByteTokenizer(), 8, 10, 2, 0)
    with pytest.raises(ConfigError, match="model.vocab-size"):
        text_corpus({"a": ["x"]}, DataConfig(), ModelConfig(vocab_size=128), 0, "mem", tokenizer=ByteTokenizer(300))
