"""The ε the drop-in reports through Flower, per round, against an independent dp_accounting computation.

Runs Flower's advanced-pytorch app (tests/flower_examples/advanced-pytorch: its own CustomFedAvg.start() wrapped
by `UserDP`) through `flwr run`, once with server-side clipping and once with client-side clipping (the
ClientApp's `userdp_clip_mod`), reads the ε of each round's release from the streamed log, and prints it beside
ε computed here with dp_accounting alone (not fl_userdp's accounting code): a `PLDAccountant` composing
`PoissonSampledDpEvent(q, GaussianDpEvent(σ))` once per round, read at δ after each round.

    OMP_NUM_THREADS=1 python experiments/dropin/epsilon_check.py [--rounds 3] [--rate 0.5] [--sigma 1]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flower_examples as fe  # noqa: E402


def independent_epsilons(rate: float, sigma: float, delta: float, rounds: int) -> list[float]:
    """ε after each of `rounds` Poisson-subsampled Gaussian rounds: dp_accounting's PLD accountant (its defaults)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    acc, out = pld_privacy_accountant.PLDAccountant(), []
    for _ in range(rounds):
        acc.compose(dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma)))
        out.append(float(acc.get_epsilon(delta)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--supernodes", type=int, default=fe.Settings.supernodes)
    ap.add_argument("--rounds", type=int, default=fe.Settings.rounds)
    ap.add_argument("--rate", type=float, default=fe.Settings.sampling_rate)
    ap.add_argument("--sigma", type=float, default=fe.Settings.noise_multiplier)
    ap.add_argument("--clip", type=float, default=fe.Settings.clipping_norm)
    ap.add_argument("--delta", type=float, default=fe.Settings.delta)
    a = ap.parse_args()
    s = fe.Settings(a.supernodes, a.rounds, a.rate, a.sigma, a.clip, a.delta)
    want = independent_epsilons(s.sampling_rate, s.noise_multiplier, s.delta, s.rounds)
    got, notes = {}, []
    with tempfile.TemporaryDirectory(prefix="epsilon-check-") as tmp:
        for clipping in ("server", "client"):
            work = Path(tmp) / clipping
            work.mkdir()
            run = fe.run_app(fe.ADVANCED, "userdp", work, s, extra={"dp-clipping": clipping})
            got[clipping] = {m["round"]: m["epsilon"] for m in run.releases}
            rejected = sum(m.get("diagnostics.rejected", 0) for m in run.releases)
            notes.append(f"{clipping}-side clipping: exit {run.returncode}, {run.seconds:.0f} s, "
                         f"{len(run.releases)} releases, {rejected} replies rejected"
                         + (", Traceback in the log" if "Traceback" in run.log else ""))
    print(f"advanced-pytorch (CustomFedAvg wrapped by UserDP) through `flwr run`: N={s.supernodes} supernodes, "
          f"q={s.sampling_rate:g}, sigma={s.noise_multiplier:g}, C={s.clipping_norm:g}, delta={s.delta:g}")
    print("round | eps server-side clipping | eps client-side clipping | eps dp_accounting PLD (independent) | "
          "reported - independent (server, client)")
    for t in range(1, s.rounds + 1):
        row = [got[c].get(t, math.nan) for c in ("server", "client")]
        print(f"{t:5d} | {row[0]:.4f} | {row[1]:.4f} | {want[t - 1]:.4f} | "
              f"{row[0] - want[t - 1]:+.1e}, {row[1] - want[t - 1]:+.1e}")
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
