"""The accountant's limits: every `fl-userdp epsilon` / `calibrate` call inside the documented ranges answers
within 60 s and 2 GB, or is refused at once naming the key, and what it answers is still an upper bound.

The cases are the ones that used to fail: ELS at q = 1, σ = 0.01, k = 256 over 100,000 steps (24 GB, killed),
--steps 10^12 (hung), σ = 1e300 (an overflow traceback), q = 1 with σ in [0.01, 0.02] (a traceback in the
loss-range search), ELS at q = 0.5, σ = 1, k = 256 (over two minutes). They run in one subprocess with its
address space limited to 2 GB (RLIMIT_AS) and each call's CPU time measured.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, stats

from fl_userdp.accounting import UlsRound, epsilon_for
from fl_userdp.accounting import pld

LIMIT_S = 60.0
ADDRESS_SPACE = 2 * 1024**3
DELTA = 1e-5

DRIVER = r"""
import contextlib, io, json, resource, sys, time
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from fl_userdp.cli import main
for args in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    start = time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as exc:
            rc = exc.code
    print(json.dumps({"rc": rc, "cpu": time.process_time() - start, "out": out.getvalue(), "err": err.getvalue()}),
          flush=True)
"""


def eps_args(mode: str, q: float, sigma: float, steps: int, k: int | None = None) -> list[str]:
    args = ["epsilon", "--mode", mode, "--sampling-rate", str(q), "--noise-multiplier", repr(sigma),
            "--steps", str(steps), "--delta", str(DELTA)]
    return args + (["--max-examples-per-user", str(k)] if k else [])


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact ε of the Gaussian mechanism of sensitivity/σ = μ at δ (Balle & Wang 2018), in log space."""
    def gap(eps: float) -> float:
        upper = stats.norm.cdf(mu / 2 - eps / mu)
        lower = math.exp(eps + stats.norm.logcdf(-mu / 2 - eps / mu))
        return upper - lower - delta
    hi = mu * mu / 2 + 20 * mu + 10
    return optimize.brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-12)


CASES = [  # (argv, what must come back)
    (eps_args("els", 1, 0.01, 100_000, 256), "answer"),      # 24 GB before: ε in the 10^13, reported as inf
    (["epsilon", "--mode", "uls", "--sampling-rate", "0.01", "--noise-multiplier", "1", "--steps",
      "1000000000000", "--delta", str(DELTA)], "--steps"),   # hung before
    (eps_args("uls", 0.5, 1e300, 10), "answer"),             # overflow traceback before
    (eps_args("uls", 1, 0.01, 10), "exact"),                 # q = 1, σ in [0.01, 0.02]: traceback before
    (eps_args("uls", 1, 0.0177, 10), "exact"),
    (eps_args("els", 1, 0.0123, 10, 1), "exact"),
    (eps_args("els", 0.5, 1.0, 1000, 256), "answer"),        # over two minutes before
    (eps_args("els", 0.01, 1.0, 1000, 20_000), "--max-examples-per-user"),
    (["calibrate", "--mode", "uls", "--sampling-rate", "0.01", "--target-epsilon", "1", "--steps", "100",
      "--delta", "1e-320"], "--delta"),
]


@pytest.fixture(scope="module")
def answers():
    argv = [args for args, _ in CASES]
    out = subprocess.run([sys.executable, "-c", DRIVER, str(ADDRESS_SPACE), json.dumps(argv)],
                         capture_output=True, text=True, timeout=20 * 60)
    assert out.returncode == 0, out.stderr[-3000:]  # a MemoryError or a traceback ends the driver
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(CASES)
    return rows


@pytest.mark.parametrize("i", range(len(CASES)), ids=[" ".join(a[1:]) for a, _ in CASES])
def test_answers_within_limits_or_refuses_naming_the_key(answers, i):
    args, want = CASES[i]
    row = answers[i]
    assert row["cpu"] < LIMIT_S, row
    assert "Traceback" not in row["err"]
    if want.startswith("--"):
        lines = row["err"].strip().splitlines()
        assert row["rc"] == 2 and len(lines) == 1 and want in lines[0], row
        assert row["cpu"] < 5.0  # at once
        return
    assert row["rc"] == 0, row
    eps = float(row["out"].strip())
    assert eps >= 0
    if want == "exact":  # q = 1: a Gaussian mechanism, whose exact ε the answer must not undercut
        sigma, steps = float(args[args.index("--noise-multiplier") + 1]), int(args[args.index("--steps") + 1])
        truth = gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)  # k = 1 for the ELS case
        assert truth <= eps <= truth * 1.01, (eps, truth)


def test_huge_noise_is_accounted_as_the_cap_an_upper_bound():
    """σ = 1e300 is accounted at MAX_ACCOUNTED_NOISE (more noise is post-processing of less): the same ε, and
    above the exact ε of the capped Gaussian at q = 1."""
    big, capped = UlsRound(1.0, 1e300), UlsRound(1.0, pld.MAX_ACCOUNTED_NOISE)
    assert epsilon_for([(big, 1000)], DELTA) == epsilon_for([(capped, 1000)], DELTA)
    assert epsilon_for([(big, 1000)], DELTA) >= gaussian_epsilon(math.sqrt(1000) / pld.MAX_ACCOUNTED_NOISE, DELTA)


def test_a_rung_past_the_size_bounds_runs_coarser_and_stays_an_upper_bound(monkeypatch):
    """With the bounds lowered, the ladder's rungs cannot run at their own intervals: ε comes from a coarser
    interval, is never below the exact Gaussian ε (q = 1), and the PLDs kept within the bounds."""
    monkeypatch.setattr(pld, "MAX_STEP_POINTS", 300)
    monkeypatch.setattr(pld, "MAX_POINTS", 3000)
    pld.step_pld.cache_clear()
    event, steps = UlsRound(1.0, 2.0), 200
    eps = epsilon_for([(event, steps)], DELTA)
    pld.step_pld.cache_clear()
    intervals = [h for h, _ in pld.last_rungs]
    rungs = [pld.FINEST_INTERVAL * pld.LADDER_RATIO**j for j in range(pld.LADDER_RUNGS)]
    assert intervals and intervals[-1] not in rungs  # the last one ran coarser than its rung
    h = intervals[-1]
    assert pld.composed_pld([(event, steps)], h)._pmf_remove.size <= 3000  # noqa: SLF001
    truth = gaussian_epsilon(math.sqrt(steps) / 2.0, DELTA)
    assert truth <= eps <= truth * 1.5


def test_no_interval_can_hold_it_reports_inf():
    """A step whose privacy loss spans more than MAX_INTERVAL x MAX_STEP_POINTS nats (here ε is about 3.3e8 a step,
    a Gaussian of sensitivity 256 at σ = 0.01): inf, at once."""
    from fl_userdp.accounting import ElsStep

    assert pld.fitting_interval([(ElsStep(1.0, 0.01, 256), 10)], pld.FINEST_INTERVAL) is None
    assert epsilon_for([(ElsStep(1.0, 0.01, 256), 10)], DELTA) == math.inf
    assert np.isinf(epsilon_for([(ElsStep(0.5, 0.01, 256), 10)], DELTA, "group"))
