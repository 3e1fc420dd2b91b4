"""`fl-userdp advise`: ELS or ULS for this population, (ε, δ) and compute budget (`fl_userdp.study.advisor`).

Users come from the run's config (as for `plan`: `--config`, `--set`, `--source`, ...) or from
`--counts-file`; the averaging gain comes from a pilot on the run's model and data (`--pilot-users`
users at the starting weights, `fl_userdp.local.pilot`) or from a pilot saved earlier (`--pilot FILE`,
written by `--save-pilot FILE`), which is how a counts-only population gets one.
"""
from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from .data import (banded_options, budget_options, corpus, read_pilot, row_len, run_config, source_given,
                   source_options)


def _ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be integers >= 1, got {text!r}")
    return values


def configure(p: argparse.ArgumentParser) -> None:
    from ..study.advisor import CAPS

    source_options(p)
    p.add_argument("--counts-file", metavar="FILE", help="examples per user (rows of model.seq-len tokens) instead "
                                                         "of the data source's; needs --pilot")
    budget_options(p)
    p.add_argument("--caps", type=_ints, default=list(CAPS),
                   help="caps tried: k for ELS, G (examples per sampled user) for ULS (default "
                        + ",".join(map(str, CAPS)) + ")")
    p.add_argument("--pilot-users", type=int, default=128, metavar="U", help="users the pilot measures (default 128)")
    p.add_argument("--pilot", metavar="FILE.json", help="use a saved pilot instead of measuring one")
    p.add_argument("--save-pilot", metavar="FILE.json", help="write the measured pilot here")
    p.add_argument("--json", action="store_true")


def advise_cmd(a: argparse.Namespace) -> int:
    from ..study.advisor import advise, format_advice
    from ..study.planner import read_counts

    if a.counts_file is not None and source_given(a):
        raise ConfigError("--counts-file", a.counts_file, "replaces the data source: give either it or "
                                                          "--source/--config/--set, not both")
    if a.counts_file is not None and a.pilot is None:
        raise ConfigError("--pilot", None, "is required with --counts-file (the pilot needs the users' data: "
                                           "measure it once with --save-pilot where the data is)")
    cfg = run_config(a)
    pilot = read_pilot(a.pilot) if a.pilot else None
    if a.counts_file:
        counts = read_counts(a.counts_file)
    else:
        counts = corpus(cfg).counts
    if pilot is None:
        from ..local.pilot import measure_pilot

        pilot = measure_pilot(cfg, users=a.pilot_users, caps=tuple(a.caps))
        if a.save_pilot:
            from pathlib import Path

            Path(a.save_pilot).write_text(json.dumps({"pilot": pilot.to_dict(), "source": cfg.data.source,
                                                      "model": cfg.model.name, "seq_len": row_len(cfg)}) + "\n")
    adv = advise(counts, a.examples_per_step, a.steps, a.epsilon, a.delta, pilot, a.caps, **banded_options(a, cfg))
    if a.json:
        payload = adv.to_dict()
        payload["pilot"] = pilot.to_dict()
        payload["source"] = a.counts_file or cfg.data.source
        payload["guarantee"] = "none: the pilot and the counts are the users' data without noise"
        print(json.dumps(payload, sort_keys=True))
    else:
        share = "" if pilot.within_user_share is None else f"; within-user share of gradient variance {pilot.within_user_share:.3f}"
        print(f"pilot: {pilot.users} users at the starting weights{share} (measured on the users' data without "
              f"noise: OUTSIDE any DP guarantee; the counts too)")
        print(format_advice(adv))
    return 0
