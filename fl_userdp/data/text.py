"""Text users -> token examples: tokenizers and `TextCorpus` (numpy; transformers only when asked).

**Tokenizers.** Anything with `vocab_size`, `eos_id` and `encode(text) -> list[int]`:

* `ByteTokenizer(vocab_size)`: UTF-8 bytes as ids, no model needed (tests, the
  "tiny" model). EOS is the last id (`vocab_size - 1`); a byte that does not
  fit below EOS becomes `?`. With `vocab_size >= 257` every byte keeps its own
  id; the tiny model's default 128 covers ASCII, which is all of Shakespeare.
* `HFTokenizer.load(path)`: the Hugging Face tokenizer of a local model folder
  or of a `.gguf` file (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`),
  imported lazily. `tokenizer_for(model_cfg)` picks one for `model.name`.

**Examples: packing, no attention mask.** A user's texts (speeches, posts)
are each followed by EOS, concatenated into one token stream and cut into
consecutive rows of exactly `seq_len` tokens. Only a user's last row can be
short; it is padded with EOS (the tail after the first EOS of that run carries
no signal; `pad_mask` marks it so a loss can ignore it). So every token of
every row except that tail is real text, no attention mask is needed, and an
example is a fixed-length chunk of one user's writing (never mixing users).
A text longer than `seq_len` simply spans several rows.

**Users.** `TextCorpus` draws `heldout_users` held-out users first (a seeded
choice, `rng_for(seed, "data", 3, 0)`), then keeps at most `num_users` of the
rest as training users (seeded choice when capping, otherwise all, in the
source's order). Users with no text are dropped before the split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from ..config import DataConfig, ModelConfig, is_task_spec
from ..errors import ConfigError
from ..rng import rng_for
from .base import UserCorpus
from .inventory import Dropped


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes; EOS = vocab_size - 1; bytes >= EOS map to '?'."""

    def __init__(self, vocab_size: int = 257) -> None:
        if vocab_size < 128:
            raise ConfigError("model.vocab-size", vocab_size, "must be >= 128 for the byte tokenizer (ASCII + EOS)")
        self.vocab_size = int(vocab_size)
        self.eos_id = self.vocab_size - 1
        table = np.arange(256, dtype=np.int64)
        table[table >= self.eos_id] = ord("?")
        self._table = table

    def encode(self, text: str) -> list[int]:
        return self._table[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)].tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if int(i) != self.eos_id and int(i) < 256).decode("utf-8", "replace")


class HFTokenizer:
    """A Hugging Face tokenizer (local folder or GGUF file), loaded offline."""

    def __init__(self, tok) -> None:
        self.tok = tok
        eos = tok.eos_token_id
        self.eos_id = int(eos if eos is not None else (tok.pad_token_id or 0))
        self.vocab_size = int(len(tok))

    @classmethod
    def load(cls, path: str | Path) -> "HFTokenizer":
        from transformers import AutoTokenizer

        p = Path(path)
        try:
            if p.suffix == ".gguf":
                tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True)
            else:
                tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError("model.name", str(path), f"has no loadable tokenizer ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0][:200]})") from None
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))


def tokenizer_for(model_cfg: ModelConfig) -> Tokenizer:
    """Byte tokenizer for the "tiny" model and your own task (its vocab_size), else the model's own HF tokenizer."""
    if model_cfg.name == "tiny" or is_task_spec(model_cfg.name):
        return ByteTokenizer(model_cfg.vocab_size)
    return HFTokenizer.load(model_cfg.name)


def pack(texts: Sequence[str], tokenizer: Tokenizer, seq_len: int) -> np.ndarray:
    """(n, seq_len) int64: texts + EOS each, concatenated, cut into rows; last row EOS-padded."""
    if seq_len < 2:
        raise ConfigError("model.seq-len", seq_len, "must be >= 2 for text data")
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer.encode(text))
        stream.append(tokenizer.eos_id)
    rows = -(-len(stream) // seq_len)
    out = np.full(rows * seq_len, tokenizer.eos_id, dtype=np.int64)
    out[: len(stream)] = stream
    return out.reshape(rows, seq_len)


def pad_mask(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """True at padding: positions after the first EOS of a row's trailing run of EOS tokens."""
    tokens = np.asarray(tokens)
    is_eos = tokens == eos_id
    # length of the trailing run of EOS in each row
    run = np.argmin(is_eos[:, ::-1], axis=1)
    run[is_eos.all(axis=1)] = tokens.shape[1]
    pos_from_end = np.arange(tokens.shape[1])[::-1][None, :]  # seq_len-1 .. 0
    return pos_from_end < (run[:, None] - 1)


class TextCorpus(UserCorpus):
    """Users of real text, tokenised and packed (see the module docstring)."""

    def __init__(self, users: Mapping[str, Sequence[str]], tokenizer: Tokenizer, seq_len: int,
                 num_users: int, heldout_users: int, seed: int, source: str = "<memory>",
                 split_seed: int | None = None) -> None:
        names = [u for u, texts in users.items() if any(t.strip() for t in texts)]
        read = getattr(users, "dropped", None) or Dropped()
        self.dropped = Dropped(dict(read.reasons), read.users + len(users) - len(names))
        if not names:
            raise ConfigError("data.source", source, "has no users with text (the corpus is empty)")
        if heldout_users >= len(names):
            raise ConfigError("data.heldout-users", heldout_users,
                              f"must be < the number of users in {source} ({len(names)})")
        rng = rng_for(seed if split_seed is None or split_seed < 0 else split_seed, "data", 3, 0)
        order = rng.permutation(len(names))
        held = sorted(order[:heldout_users].tolist())
        rest = sorted(order[heldout_users:].tolist())
        self.trainable_users = len(rest)
        if num_users < len(rest):
            rest = sorted(rng.choice(rest, size=num_users, replace=False).tolist())
        self.source = source
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.vocab_size = int(tokenizer.vocab_size)
        self.eos_id = int(tokenizer.eos_id)
        self.user_names = [names[i] for i in rest]
        self.heldout_names = [names[i] for i in held]
        self.available_users = len(names)
        self._data = [pack(users[n], tokenizer, self.seq_len) for n in self.user_names]
        self._held = [pack(users[n], tokenizer, self.seq_len) for n in self.heldout_names]
        self.num_users = len(self._data)
        self.counts = np.array([d.shape[0] for d in self._data], dtype=np.int64)
        self.heldout_counts = np.array([d.shape[0] for d in self._held], dtype=np.int64)

    def examples(self, user: int) -> np.ndarray:
        user = int(user)
        if not 0 <= user < self.num_users:
            raise IndexError(f"user {user} out of range [0, {self.num_users})")
        return self._data[user].copy()

    def heldout(self) -> np.ndarray:
        if not self._held:
            return np.zeros((0, self.seq_len), dtype=np.int64)
        return np.concatenate(self._held)

    def pad_mask(self, tokens: np.ndarray) -> np.ndarray:
        return pad_mask(tokens, self.eos_id)


def text_corpus(users: Mapping[str, Sequence[str]], data_cfg: DataConfig, model_cfg: ModelConfig, seed: int,
                source: str, tokenizer: Tokenizer | None = None) -> TextCorpus:
    """`TextCorpus` with sizes from the config; the tokenizer defaults to `tokenizer_for(model_cfg)`."""
    tok = tokenizer if tokenizer is not None else tokenizer_for(model_cfg)
    if model_cfg.name == "tiny" and tok.vocab_size > model_cfg.vocab_size:
        raise ConfigError("model.vocab-size", model_cfg.vocab_size, f"must be >= the tokenizer's {tok.vocab_size}")
    return TextCorpus(users, tok, model_cfg.seq_len, data_cfg.num_users, data_cfg.heldout_users, seed, source,
                      data_cfg.split_seed)
