"""User-level DP for existing Flower apps (Message API, Flower 1.35 to 1.42): a wrapper of any strategy.

Wrap the strategy your `ServerApp` already has — FedAvg, FedAdam, FedYogi, FedProx, or your own subclass with its
own `start()` (results files, checkpoints, W&B) — and keep calling `start`:

    strategy = UserDP(CustomFedAvg(fraction_evaluate=0.5), sampling_rate=0.1, noise_multiplier=1.0,
                      clipping_norm=1.0, delta=1e-5, max_epsilon=8, ledger_path="ledger.log")
    result = strategy.start(grid, initial_arrays, num_rounds=20, evaluate_fn=...)

`UserDPFedAvg(sampling_rate=..., noise_multiplier=..., clipping_norm=..., delta=...)` is the FedAvg case (the
step new = sent + server_lr · released mean), with the same ledger. Each node is one user. Per round:

  0. budget  — before anything is sent, stop if the next release would take ε past `max_epsilon`
  1. sample  — every node independently with probability q (Poisson; OS entropy unless `seed` is given); the
               wrapped strategy's `configure_train` still runs (its config, learning-rate schedule and state,
               e.g. FedAdam's current arrays), but its choice of nodes is replaced: its first message's content
               goes to the Poisson-sampled nodes
  2. collect — a reply with an error, missing arrays, other keys/shapes/dtypes or NaN/Inf is a failure; a node
               that does not answer in time too
  3. clip    — `clipping="server"`: each reply's update (its arrays − the sent arrays) clipped to norm C here;
               `clipping="client"`: each node clipped its own (`fl_userdp.clients.dropin.userdp_clip_mod`), the
               server only checks it (below)
  4. release — Σ updates + N(0, σ²C²·I) (noise drawn for this release only), divided by the *expected* cohort
               q·N (N = the nodes registered at round 1, the population)
  5. account — the round is appended to the ledger file (`ledger_path`, durable) and composed in the ledger
               (PLD by default, or any `accountant` plug-in), also for empty cohorts and rounds with failures
  6. step    — the wrapped strategy's `aggregate_train` receives one reply whose arrays are sent + the released
               mean (weight 1), so its server optimizer works on the noised mean: FedAvg's average is it,
               FedAdam's pseudo-gradient is the released mean itself

Flower's own wrapper samples a fixed-size cohort, divides by the number of replies and accounts without
amplification; this wrapper is what the Poisson-subsampled Gaussian analysis assumes.

Cyclic participation and banded noise (`bands=b > 1`, as cross-device deployments sample). At round 1 the N
nodes are split into b groups by a permutation that depends on nothing but the seed (or OS entropy); release i
samples within group (i − 1) mod b only (i counted from the first release of this ServerApp's segment,
below) — each node of the group with probability q (`participation="poisson"`),
or every node of it (`participation="fixed"`, q = 1) — so a node's participations are at least b releases apart.
The noise is banded (`fl_userdp.mechanism.bandmf`: σC·(C⁻¹z)_i, C the b-banded Toeplitz strategy of
`bandmf_coefficients`, a stream with a buffer of b − 1 noise vectors) and the released sum is divided by the
group's expected count q·|group|. The ledger composes ⌈releases/b⌉ participations of the subsampled Gaussian
(amplified BandMF; docs/concepts.md has the argument), one at the first release of each cycle of b. The
buffer is secret state the drop-in keeps in memory only, so a restarted ServerApp that continues a banded
ledger file starts a new *segment*: fresh groups, a fresh stream, cycles counted from its first release. Two
segments are two mechanisms with independent noise, composed: ⌈n₁/b⌉ + ⌈n₂/b⌉ participations, never
⌈(n₁ + n₂)/b⌉ (each release's log entry names its segment, the release index it began at).

The wrapped strategy's `start()`. `UserDP.start` runs the wrapped strategy's own `start()` (Flower's round loop
or the app's override) with its `summary`, `configure_train`, `aggregate_train`, `configure_evaluate` and
`aggregate_evaluate` routed through the wrapper for the duration (restored after). A stop (budget, failures)
ends the releases cleanly inside that loop: the rounds after it send nothing, release nothing and skip the
server-side evaluation (`evaluate_fn` is not called for a round without a release), so the app's `start()`
returns normally with the last released arrays in its Result — its results files, checkpoints and final model
are written as in any run. A ledger already at its budget returns the initial arrays without starting.

Two trust models.
  * `clipping="server"` — the server sees each node's update (it clips them); nodes need no change.
  * `clipping="client"` — each node clips its own update (the ClientApp mod), the server needs only the sum
    and the count: the model for secure aggregation, where the server never sees one update. What the server
    can still verify then: how many nodes contributed (≤ the sampled ones, one reply each) and that the sum's
    norm is ≤ count × C (`sum_within_bound`); it cannot verify that each node clipped (a node that did not
    clip is caught only when the sum passes count × C). Flower 1.42 has no secure aggregation for Message-API
    strategies (SecAgg+ exists only as the legacy `flwr.server.workflow.SecAggPlusWorkflow`, which drives a
    legacy `flwr.server.strategy.Strategy` through `configure_fit`/`aggregate_fit` in a `LegacyContext`, and
    its `secaggplus_mod` reads legacy `fitres.*` records, not a Message-API reply's "arrays"), so the replies
    here arrive one by one and the server checks each decoded update's norm ≤ C as well, rejecting a reply
    above it (the reason names the missing mod).

A budget instead of a noise multiplier. `target_epsilon=ε, num_rounds=T` (without `noise_multiplier`) calibrates
σ with the run's accountant (`fl_userdp.accounting.calibrate_noise`: the smallest σ whose ε after T rounds is ≤
the target) and makes the target the budget (`max_epsilon` = the target, or the smaller of the two).

A ledger that survives a restart. `ledger_path` names a release log (`fl_userdp.records.release_log`): its first
entry holds the run's id and the settings the ledger depends on (q, σ, C, δ, accountant, clipping), then one
entry per release, written and fsynced before the release is composed or applied. Starting with an existing
log continues its ε (the releases it holds are composed again); a log of other settings is refused with one
line naming the setting. Without `ledger_path` the ledger lives in memory: a restarted ServerApp starts at
ε = 0 over the same users (the start line says so).

What it logs and returns. At start the summary lines give q, σ, C, δ, the budget, the accountant, the clipping,
the ledger, the randomness and whether client-side evaluation runs. Each round's MetricRecord holds the release
(`round`, `released`, `epsilon`, `delta`, `noise_multiplier`, `clip_norm`, `expected_count`: covered by the
guarantee; an infinite ε is written as inf) and, unless `publish_diagnostics=False`, the diagnostics under
`diagnostics.` (`nodes_sampled`, `nodes_replied`, `failures`, `rejected`, `clipped`, and the replies' own
metrics averaged as FedAvg weights them, e.g. `diagnostics.train_loss`: from the users' data without noise,
outside the guarantee); with `publish_diagnostics=False` neither they nor the rejection and error texts are
logged. Client-side evaluation is off unless `client_evaluation=True` (the wrapped strategy's
`configure_evaluate`) or a strategy is given (e.g. `FedAvg(fraction_train=0, fraction_evaluate=0.1)`); its
metrics are outside the guarantee too.

Arrays that are not weights. Only float arrays can be clipped and noised. Non-float arrays (BatchNorm's
`num_batches_tracked`) and BatchNorm's running statistics (`running_mean`, `running_var`: statistics of a
user's batches, not gradients) are refused before round 1, all in one bounded line (how many, the first few,
and how to list them: `non_weight_arrays(model or arrays)`). The fixes: replace BatchNorm by GroupNorm
(`fl_userdp.local.opacus_compat.replace_batchnorm(model)`), or keep them out of the release with
`frozen=non_weight_arrays(initial_arrays)` — frozen arrays are sent as they were at the start every round and
the replies' values are ignored, so frozen statistics stay at their initial values (running mean 0, variance
1): a model evaluated in eval mode normalises with them.

Stops. A budget stop (`max_epsilon`), or `max_failed_rounds` rounds in a row where more than
`max_failed_fraction` of the sampled nodes failed or sent a reply that was rejected (a round where every reply
is rejected counts); `stop_reason` and an ERROR/WARNING line say why, with the ε and, for failures, the first
error's text or the last rejection (when diagnostics are published). The failure stop's point depends on the
replies and is outside the guarantee.
"""
from __future__ import annotations

import math
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from fl_userdp.accounting import (calibrate_noise, check_delta_for_users, event_from_dict, event_to_dict,
                                  make_accountant, make_event)
from fl_userdp.accounting.plugins import check_supports
from fl_userdp.clients.dropin import ARRAYS_KEY, CLIP_KEY, CLIPPED_METRIC, FROZEN_KEY
from fl_userdp.errors import ConfigError
from fl_userdp.mechanism.aggregate import release
from fl_userdp.mechanism.bandmf import COEFFICIENTS, NoiseStream, coefficients
from fl_userdp.mechanism.clipping import clip_factors
from fl_userdp.mechanism.fixed_point import record_clip_norm, to_grid
from fl_userdp.mechanism.noise import SecureGenerator, release_rng
from fl_userdp.mechanism.sampling import cyclic_groups, group_of_round
from fl_userdp.records.release_log import ReleaseLog
from fl_userdp.rng import rng_for

BATCHNORM_STATE = ("running_mean", "running_var", "num_batches_tracked")
COVERED = ("round", "released", "epsilon", "delta", "noise_multiplier", "clip_norm", "expected_count")
DIAGNOSTICS = ("nodes_sampled", "nodes_replied", "failures", "rejected", "clipped")
CLIPPING = ("server", "client")
HOOKS = ("summary", "configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")
LEDGER_SETTINGS = ("mechanism", "sampling_rate", "noise_multiplier", "clip_norm", "delta", "accountant", "clipping",
                   "bands")
PARTICIPATION = ("poisson", "fixed")
SHOWN = 3            # array names a message shows before "… N more"
TEXT_CHARS = 300     # characters of a node's error text in a log line
_MISSING = object()
_KEY_NAMES = {"target-epsilon": "target_epsilon", "steps": "num_rounds", "sampling-rate": "sampling_rate",
              "noise-multiplier": "noise_multiplier", "delta": "delta"}


class UserDP(Strategy):
    """User-level DP around any Message-API strategy: Poisson sampling of nodes, clipping (server or client),
    noise once over the expected cohort, a PLD ledger (optionally on disk); see the module docstring."""

    def __init__(self, strategy: Strategy, sampling_rate: float, noise_multiplier: float | None = None,
                 clipping_norm: float | None = None, delta: float | None = None, *,
                 target_epsilon: float | None = None, num_rounds: int | None = None,
                 max_epsilon: float | None = None, ledger_path: str | Path | None = None, clipping: str = "server",
                 accountant: str = "pld", seed: int | None = None, server_lr: float = 1.0,
                 arrays_key: str | None = None, min_available_nodes: int = 1,
                 client_evaluation: bool | Strategy = False, frozen: Iterable[str] = (),
                 max_failed_rounds: int = 3, max_failed_fraction: float = 0.5,
                 publish_diagnostics: bool = True, bands: int = 1, participation: str = "poisson",
                 bandmf_coefficients: str = "sqrt") -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise ConfigError("strategy", type(strategy).__name__,
                              "must be a Flower Message-API strategy (flwr.serverapp.strategy.Strategy)")
        if isinstance(strategy, UserDP):
            raise ConfigError("strategy", type(strategy).__name__, "is user-level DP already: wrap its strategy once")
        if isinstance(frozen, str):
            frozen = [frozen]
        for key, value in (("clipping_norm", clipping_norm), ("delta", delta)):
            if value is None:
                raise ConfigError(key, None, "is required")
        if isinstance(bands, bool) or not isinstance(bands, int) or not 1 <= bands <= 10_000:
            raise ConfigError("bands", bands, "must be an integer in [1, 10000]")
        if bandmf_coefficients == "optimized" and bands > 1 and (
                isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < bands):
            raise ConfigError("num_rounds", num_rounds, f"must be an integer >= bands ({bands}) with "
                              "bandmf_coefficients 'optimized' (they are optimised for the run's rounds)")
        if target_epsilon is None and noise_multiplier is None:
            raise ConfigError("noise_multiplier", None, "is required (or give target_epsilon and num_rounds)")
        if target_epsilon is not None and noise_multiplier is not None:
            raise ConfigError("noise_multiplier", noise_multiplier,
                              "must be left out with target_epsilon (it is calibrated for the target)")
        checks = [(clipping in CLIPPING, "clipping", clipping, f"must be one of {list(CLIPPING)}"),
                  (0 < sampling_rate <= 1, "sampling_rate", sampling_rate, "must be in (0, 1]"),
                  (noise_multiplier is None or 0 <= noise_multiplier < math.inf, "noise_multiplier",
                   noise_multiplier, "must be >= 0"),
                  (0 < clipping_norm < math.inf, "clipping_norm", clipping_norm, "must be > 0"),
                  (0 < delta < 1, "delta", delta, "must be in (0, 1)"),
                  (target_epsilon is None or 0 < target_epsilon < math.inf, "target_epsilon", target_epsilon,
                   "must be a finite number > 0"),
                  (target_epsilon is None or (isinstance(num_rounds, int) and not isinstance(num_rounds, bool)
                                              and num_rounds >= 1), "num_rounds", num_rounds,
                   "must be an integer >= 1 with target_epsilon (the rounds the target is spent over)"),
                  (max_epsilon is None or max_epsilon > 0, "max_epsilon", max_epsilon, "must be > 0"),
                  (server_lr > 0, "server_lr", server_lr, "must be > 0"),
                  (int(max_failed_rounds) >= 1, "max_failed_rounds", max_failed_rounds, "must be >= 1"),
                  (participation in PARTICIPATION, "participation", participation,
                   f"must be one of {list(PARTICIPATION)}"),
                  (participation != "fixed" or sampling_rate == 1, "sampling_rate", sampling_rate,
                   "must be 1 with participation 'fixed' (every node of the round's group takes part)"),
                  (participation != "fixed" or bands > 1, "participation", participation,
                   "'fixed' needs bands > 1 (without groups every node would take part in every round)"),
                  (bandmf_coefficients in COEFFICIENTS, "bandmf_coefficients", bandmf_coefficients,
                   f"must be one of {list(COEFFICIENTS)}"),

                  (0 <= max_failed_fraction < 1, "max_failed_fraction", max_failed_fraction, "must be in [0, 1)")]
        for ok, key, value, requirement in checks:
            if not ok:
                raise ConfigError(key, value, requirement)
        self.strategy = strategy
        self.q, self.clip, self.delta = float(sampling_rate), float(clipping_norm), float(delta)
        self.clipping = clipping
        self.accountant_name = accountant
        self.bands, self.participation = int(bands), participation
        self.coefficients = coefficients(bandmf_coefficients, self.bands, num_rounds) if self.bands > 1 else None
        self.coefficient_kind = bandmf_coefficients
        self.stream: NoiseStream | None = None     # banded noise: created at the first release (its size is d)
        self.segment = 0                            # banded: the release index this ServerApp's segment began at
        self.groups: list[list[int]] | None = None  # cyclic groups of nodes, drawn at round 1
        self.target_epsilon, self.num_rounds = target_epsilon, num_rounds
        self.calibrated_epsilon: float | None = None
        if target_epsilon is not None:
            noise_multiplier, self.calibrated_epsilon = _calibrate(float(target_epsilon), self.delta, self.q,
                                                                   int(num_rounds), accountant, self.bands)
            max_epsilon = float(target_epsilon) if max_epsilon is None else min(float(max_epsilon),
                                                                              float(target_epsilon))
        self.sigma = float(noise_multiplier)
        self.max_epsilon, self.seed, self.server_lr = max_epsilon, seed, float(server_lr)
        self.arrays_key = arrays_key or getattr(strategy, "arrayrecord_key", "arrays")
        self.config_key = getattr(strategy, "configrecord_key", "config")
        self.weight_key = getattr(strategy, "weighted_by_key", "num-examples")
        self.min_available_nodes = int(min_available_nodes)
        self.client_evaluation = client_evaluation
        self.frozen = tuple(frozen)
        self.max_failed_rounds, self.max_failed_fraction = int(max_failed_rounds), float(max_failed_fraction)
        self.publish_diagnostics = bool(publish_diagnostics)
        self.ledger_path = None if ledger_path is None else Path(ledger_path)
        try:
            self.event = make_event("uls", self.q, self.sigma, bands=self.bands)
        except ConfigError as err:
            raise _renamed(err) from None
        if self.bands > 1 and accountant not in ("pld", "rdp", "group"):
            raise ConfigError("accountant", accountant, "must be 'pld', 'rdp' or 'group' with bands > 1 (a plug-in "
                              "accountant does not know banded noise over cyclic groups)")
        # the ledger composes one participation (the event at b = 1) at the first release of each cycle of b
        # releases (every release when b = 1, where it is self.event itself)
        self.participation_event = make_event("uls", self.q, self.sigma)
        self.accountant = make_accountant(accountant, self.delta, "accountant")
        check_supports(self.accountant, self.event, accountant, "accountant")
        self.population: list[int] | None = None
        self.current: ArrayRecord | None = None
        self.requested: list[int] = []
        self.stop_reason: str | None = None
        self.failed_streak = 0
        self.history: list[dict[str, Any]] = []
        self.releases = 0                 # releases in the ledger (this run's and, from ledger_path, earlier runs')
        self.run_id: str | None = None    # the ledger file's run id
        self._log: ReleaseLog | None = None
        self._resumed = 0
        self._prepared = False
        self._pending: int | None = None  # the round whose messages went out and whose release is due
        self._last_round = 0              # the last server round with a release (this run)
        self._originals: dict[str, Callable] = {}
        self._saved: dict[str, Any] = {}
        self._told_sampling = False

    @property
    def label(self) -> str:
        return f"UserDP({type(self.strategy).__name__})"

    @property
    def epsilon(self) -> float:
        return float(self.accountant.epsilon())

    # -- the run ---------------------------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """The wrapped strategy's own `start()` (its round loop, results and checkpoints), the rounds made private;
        checks the arrays and opens the ledger before round 1."""
        self._prepare(initial_arrays)
        if self.max_epsilon is not None and self._epsilon_after() > self.max_epsilon:
            self._stop(f"privacy budget: the ledger is at epsilon {_fmt_eps(self.epsilon)} after {self.releases} "
                       f"releases; one more would take it to {_fmt_eps(self._epsilon_after())} > max_epsilon "
                       f"{self.max_epsilon:g}; nothing is sent", WARNING)
            return Result(arrays=initial_arrays)
        if evaluate_fn is not None:
            evaluate_fn = self._evaluating(evaluate_fn)
        result = self._run(grid=grid, initial_arrays=initial_arrays, num_rounds=num_rounds, timeout=timeout,
                           train_config=train_config, evaluate_config=evaluate_config, evaluate_fn=evaluate_fn)
        log(INFO, "%s: %s after %d released rounds: epsilon %s (delta %g, user-level)", self.label,
            "stopped" if self.stop_reason else "finished", self.releases, _fmt_eps(self.epsilon), self.delta)
        return result

    def _run(self, **kwargs) -> Result:
        """The wrapped strategy's start() with the DP methods in place of its own."""
        inner = self.strategy
        own = vars(inner)
        self._saved = {name: own.get(name, _MISSING) for name in HOOKS}
        self._originals = {name: getattr(inner, name) for name in HOOKS}
        for name in HOOKS:
            setattr(inner, name, getattr(self, name))
        try:
            return inner.start(**kwargs)
        finally:
            for name, before in self._saved.items():
                if before is _MISSING:
                    own.pop(name, None)
                else:
                    setattr(inner, name, before)
            self._originals, self._saved = {}, {}

    def _inner(self, name: str) -> Callable:
        return self._originals.get(name) or getattr(self.strategy, name)

    def _evaluating(self, evaluate_fn):
        def evaluate(server_round: int, arrays: ArrayRecord):
            if self.stop_reason is not None and server_round > self._last_round:
                return None   # no release this round: the model is the one already evaluated
            return evaluate_fn(server_round, arrays)
        return evaluate

    def _prepare(self, arrays: ArrayRecord) -> None:
        if self._prepared:
            return
        try:
            check_arrays(arrays, self.frozen)
            self._open_ledger()
        except ConfigError as err:
            log(ERROR, "%s: %s", self.label, err)
            raise
        self._prepared = True

    # -- the persistent ledger -------------------------------------------------------------------------------
    def ledger_settings(self) -> dict[str, Any]:
        """What the ledger's ε depends on: a ledger file of other settings is refused."""
        mechanism = "poisson-subsampled-gaussian-user-level" if self.bands == 1 else \
            f"cyclic-{self.participation}-bandmf-{self.coefficient_kind}-user-level"
        return {"mechanism": mechanism, "sampling_rate": self.q, "noise_multiplier": self.sigma,
                "clip_norm": self.clip, "delta": self.delta, "accountant": self.accountant_name,
                "clipping": self.clipping, "bands": self.bands}

    def _open_ledger(self) -> None:
        if self.ledger_path is None:
            return
        path, settings = self.ledger_path, self.ledger_settings()
        releases = ReleaseLog(path)
        try:
            if not path.exists() or path.stat().st_size == 0:
                releases.start({**settings, "size": 0})
                self._log, self.run_id = releases, releases.run_id
                return
            try:
                contents = releases.open()
            except ConfigError as err:
                raise ConfigError("ledger_path", str(path), err.requirement) from None
            theirs = contents.run or {}
            differ = [k for k in LEDGER_SETTINGS if theirs.get(k, 1 if k == "bands" else None) != settings[k]]
            if differ:
                k = differ[0]
                raise ConfigError("ledger_path", str(path), f"holds the ledger of a run with other settings ({k} "
                                  f"{theirs.get(k)!r} there, {settings[k]!r} here): continue it with the same "
                                  f"settings, or give a new path to start a new ledger")
            drop_tail = getattr(releases, "drop_torn_tail", None)
            if drop_tail is not None:
                drop_tail(contents)
        except OSError as err:
            raise ConfigError("ledger_path", str(path), f"cannot be read or written ({err.strerror or err})") from None
        if self.bands > 1:    # segment by segment: ⌈n_s/b⌉ participations each (module docstring)
            segments: dict[int, int] = {}
            for entry in contents.releases:
                start = entry.get("segment")
                if not isinstance(start, int):
                    raise ConfigError("ledger_path", str(path), f"has a banded release without its segment (round "
                                      f"{entry.get('round')}): it cannot be accounted")
                segments[start] = segments.get(start, 0) + 1
            for count in segments.values():
                self.accountant.compose(self.participation_event, -(-count // self.bands))
        else:
            runs: list[list] = []
            for entry in contents.releases:
                event = event_from_dict(entry["event"])
                if runs and runs[-1][0] == event:
                    runs[-1][1] += 1
                else:
                    runs.append([event, 1])
            for event, count in runs:
                self.accountant.compose(event, count)
        self.releases = self._resumed = self.segment = len(contents.releases)
        self._log, self.run_id = releases, releases.run_id
        log(INFO, "%s: ledger %s (run %s) continued: %d earlier releases, epsilon %s", self.label, path,
            self.run_id, self.releases, _fmt_eps(self.epsilon))

    # -- Flower's Strategy interface ------------------------------------------------------------------------
    def summary(self) -> None:  # Flower logs this at start
        budget = f"max_epsilon {self.max_epsilon:g}" if self.max_epsilon is not None else "no budget (max_epsilon)"
        noise = "OS randomness (secure)" if self.seed is None else f"seeded (seed {self.seed}: the seed is its key)"
        sigma = f"{self.sigma:g}" if self.target_epsilon is None else (
            f"{self.sigma:.4g} (calibrated: epsilon {self.calibrated_epsilon:.4g} <= target {self.target_epsilon:g} "
            f"after {self.num_rounds} rounds)")
        log(INFO, "\t├── user-level DP (%s): Poisson sampling q=%g of the nodes (one node = one user), noise "
            "multiplier %s, clipping norm C=%g, delta %g, %s, accountant %s, %s", self.label, self.q, sigma,
            self.clip, self.delta, budget, self.accountant_name, noise)
        if self.bands > 1:
            log(INFO, "\t├── cyclic participation: %d groups of nodes, the i-th release of a segment samples group "
                "(i - 1) mod %d (%s); banded noise (%s coefficients, a secret buffer of %d noise vectors in "
                "memory); epsilon counts ceil(releases/%d) participations per segment", self.bands, self.bands,
                "each node with probability q" if self.participation == "poisson" else "every node of the group",
                self.coefficient_kind, self.bands - 1, self.bands)
        if self.clipping == "server":
            log(INFO, "\t├── clipping on the server: it sees each node's update")
        else:
            log(INFO, "\t├── clipping on the nodes (fl_userdp.clients.dropin.userdp_clip_mod): the server sums and "
                "checks each update's norm <= C and the sum's norm <= count x C")
        if self._log is None:
            log(INFO, "\t├── ledger: in memory (a restart would start at epsilon 0: pass ledger_path= to keep it)")
        else:
            log(INFO, "\t├── ledger: %s (run %s; %d earlier releases)", _short(str(self.ledger_path)),
                self.run_id, self._resumed)
        if not self.client_evaluation:
            log(INFO, "\t├── client-side evaluation: off (the app's @app.evaluate is not called; pass "
                "client_evaluation=True for the wrapped strategy's, or a strategy, to run it)")
        else:
            name = type(self.client_evaluation).__name__ if isinstance(self.client_evaluation, Strategy) else \
                type(self.strategy).__name__
            log(INFO, "\t├── client-side evaluation: %s (its metrics are outside the guarantee)", name)
        if self.frozen:
            log(INFO, "\t├── kept out of the release (sent as at the start; frozen statistics keep their initial "
                "values): %s", _names(self.frozen))
        log(INFO, "\t└── metrics: release keys covered by the guarantee; diagnostics.* (from users' data, no "
            "noise) are outside it")
        self._summary_of_wrapped()

    def _summary_of_wrapped(self) -> None:
        self._inner("summary")()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._prepare(arrays)
        if self._pending is not None:
            raise ConfigError("strategy", type(self.strategy).__name__, f"sent round {self._pending}'s messages but "
                              "never called aggregate_train for it: every round sent must be aggregated (a round "
                              "skipped when no node replies would condition the sampling on its outcome)")
        # 0. budget
        if self.stop_reason is None and self.max_epsilon is not None and self._epsilon_after() > self.max_epsilon:
            self._stop(f"privacy budget: round {server_round} would take epsilon from {_fmt_eps(self.epsilon)} to "
                       f"{_fmt_eps(self._epsilon_after())} > max_epsilon {self.max_epsilon:g}; stopped after round "
                       f"{self._last_round}", WARNING)
        if self.stop_reason is not None:
            self.requested = []
            return []
        # 1. sample (the population is fixed at round 1: the analysis takes N as given)
        if self.population is None:
            nodes = sorted(set(grid.get_node_ids()))
            if len(nodes) < self.min_available_nodes:
                raise ConfigError("min_available_nodes", self.min_available_nodes,
                                  f"exceeds the {len(nodes)} connected nodes")
            check_delta_for_users(self.delta, len(nodes))  # each node is one user
            if self.bands > 1:
                self._draw_groups(nodes)                   # before the population is set: a refusal leaves neither
                expected, what = self.q * min(len(g) for g in self.groups), "q·|group|"   # the smallest group
            else:
                expected, what = self.q * len(nodes), "q·N"
            self.population = nodes
            log(INFO, "%s: population N=%d nodes, expected cohort %s=%g; the released mean's noise std per "
                "coordinate is σC/(%s)=%.3g (compare it with the updates' size: more users per round or a smaller "
                "C lowers it)", self.label, len(nodes), what, expected, what, self.sigma * self.clip / expected)
        if self.clipping == "client":
            config[CLIP_KEY], config[ARRAYS_KEY] = self.clip, self.arrays_key
            if self.frozen:
                config[FROZEN_KEY] = list(self.frozen)
        content = self._train_content(server_round, arrays, config, grid)
        if content is None:
            log(INFO, "%s: round %d: the wrapped strategy configured no training: nothing is sent, released or "
                "accounted", self.label, server_round)
            return []
        if self.arrays_key not in content.array_records:
            raise ConfigError("arrays_key", self.arrays_key, f"names no ArrayRecord of the wrapped strategy's train "
                              f"message (it has {list(content.array_records)[:4]})")
        if self.clipping == "client" and not any(CLIP_KEY in r for r in content.config_records.values()):
            record = content.config_records.get(self.config_key) or ConfigRecord()
            record[CLIP_KEY], record[ARRAYS_KEY] = self.clip, self.arrays_key
            if self.frozen:
                record[FROZEN_KEY] = list(self.frozen)
            content[self.config_key] = record
        rng = SecureGenerator() if self.seed is None else rng_for(self.seed, "sampling", self.releases + 1)
        members = self._members(self.releases + 1)   # this release's group (banded), or everyone
        self.requested = list(members) if self.participation == "fixed" else \
            [n for n, hit in zip(members, rng.random(len(members)) < self.q) if hit]
        # 2. send
        self.current = content[self.arrays_key]
        self._pending = server_round
        return [Message(content=content, dst_node_id=n, message_type=MessageType.TRAIN) for n in self.requested]

    def _train_content(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       grid: Grid) -> RecordDict | None:
        """What every sampled node receives: the wrapped strategy's first train message's content (None: it
        trains nobody this round)."""
        messages = list(self._inner("configure_train")(server_round, arrays, config, grid))
        if not messages:
            return None
        if not self._told_sampling:
            self._told_sampling = True
            log(INFO, "%s: the wrapped strategy's choice of nodes is replaced by Poisson sampling (q=%g); each "
                "sampled node receives its first message's content", self.label, self.q)
        return messages[0].content

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._pending != server_round:  # nothing was sent this round (a stop, or no training configured)
            return None, None
        self._pending = None
        keys = list(self.current.keys())
        current = [np.asarray(a, np.float64) if k not in self.frozen else a
                   for k, a in zip(keys, self.current.to_numpy_ndarrays())]
        trained = [i for i, k in enumerate(keys) if k not in self.frozen]
        flat0 = np.concatenate([current[i].ravel() for i in trained]) if trained else np.zeros(0)
        # 2./3. collect, validate, clip (or check the node's clipping) per user
        total, replied, clipped, rejected, reasons, errors = np.zeros_like(flat0), 0, 0, 0, [], []
        metrics: list[dict[str, float]] = []
        taken: set[int] = set()            # at most one reply per sampled node: one user, one record
        requested = set(self.requested)
        for rep in replies:
            node = rep.metadata.src_node_id
            if node in taken or node not in requested:
                continue
            taken.add(node)
            if rep.has_error():
                errors.append(f"node {node}: {_one_line(rep.error.reason)}")
                continue
            upd, reason = self._update(rep, keys, current, trained, flat0)
            norm = float(np.linalg.norm(upd)) if upd is not None else 0.0
            if upd is not None and self.clipping == "client" and norm > self.clip:
                upd, reason = None, (f"update norm {norm:.6g} > C={self.clip:g}: the node did not clip it (is "
                                     f"fl_userdp.clients.dropin.userdp_clip_mod in its ClientApp's mods?)")
            if upd is None:
                rejected += 1
                reasons.append(reason)
                continue
            if self.clipping == "client":
                total += to_grid(upd, self.clip)   # the node clipped it; truncation to the grid never grows it
                clipped += int(_metric(rep, CLIPPED_METRIC) > 0)
            else:
                # exact (grid) sum: the release does not depend on the order the replies arrive in
                total += to_grid(upd * float(clip_factors(np.array([norm]), record_clip_norm(self.clip))[0]),
                                 self.clip)
                clipped += int(norm > self.clip)
            replied += 1
            metrics.append(_reply_metrics(rep))
        if self.clipping == "client" and not sum_within_bound(total, replied, self.clip):
            # the one check secure aggregation leaves the server: ‖Σ‖ <= count x C (never fails when each
            # update passed its own check above; kept for the sum-only setting)
            reasons.append(f"the sum's norm {np.linalg.norm(total):.6g} exceeds count x C = {replied * self.clip:g}")
            rejected, replied, total = rejected + replied, 0, np.zeros_like(total)
            metrics = []
        # 4. release: noise once (banded: from the stream), the expected cohort q·N (or q·|group|)
        index = self.releases + 1
        expected = self.q * len(self._members(index))
        std = self.sigma * self.clip
        rng = SecureGenerator() if self.seed is None else release_rng(self.seed, "uls", index, std, expected, total)
        if self.bands > 1 and self.stream is None:
            self.stream = NoiseStream(self.coefficients, total.size)
        rel = release(total, self.clip, self.sigma, expected, rng, self.stream)
        # 5. account: durable in the ledger file, then composed — before anything uses the release
        if self._log is not None:
            after = self._epsilon_after()
            entry = {"round": index, "server_round": int(server_round), "event": event_to_dict(self.event),
                     "epsilon": after if math.isfinite(after) else None}
            if self.bands > 1:
                entry["segment"] = self.segment
            self._log.append(entry, np.zeros(0))
        if self._starts_cycle(index):
            self.accountant.compose(self.participation_event)
        self.releases, self._last_round = index, server_round
        eps = self.epsilon
        # 6. step: sent + server_lr · released mean (frozen arrays go back as they were sent)
        new = flat0 + self.server_lr * rel.update
        parts = dict(zip(trained, np.split(new, np.cumsum([current[i].size for i in trained])[:-1]))) \
            if trained else {}
        stepped = ArrayRecord({k: Array(parts[i].reshape(a.shape).astype(self.current[k].numpy().dtype))
                               if i in parts else self.current[k] for i, (k, a) in enumerate(zip(keys, current))})
        nreq = len(self.requested)
        client = _weighted_means(metrics, self.weight_key)
        record = {"round": server_round, "released": 1, "epsilon": eps, "delta": self.delta,
                  "noise_multiplier": self.sigma, "clip_norm": self.clip, "expected_count": expected,
                  "nodes_sampled": nreq, "nodes_replied": replied,
                  "failures": nreq - replied - rejected, "rejected": rejected, "clipped": clipped,
                  "client_metrics": client}
        self.history.append(record)
        self._health(server_round, nreq, nreq - replied, rejected, reasons, errors)
        return self._step(server_round, stepped, client), MetricRecord(self.metric_record(record))

    def _step(self, server_round: int, stepped: ArrayRecord, client: dict[str, float]) -> ArrayRecord | None:
        """The wrapped strategy's aggregate_train on one reply carrying sent + the released mean (weight 1):
        its server optimizer steps with the noised mean; frozen arrays are put back as they were sent."""
        values = {self.weight_key: 1.0, **({k: v for k, v in client.items() if k != self.weight_key}
                                            if self.publish_diagnostics else {})}
        reply = Message(content=RecordDict({self.arrays_key: stepped, "metrics": MetricRecord(values)}),
                        dst_node_id=0, message_type=MessageType.TRAIN)
        arrays, _ = self._inner("aggregate_train")(server_round, [reply])
        if arrays is None:
            log(WARNING, "%s: round %d: the wrapped strategy's aggregate_train returned no arrays for the released "
                "mean; the model is not updated (the release is accounted)", self.label, server_round)
            return None
        if self.frozen:
            arrays = ArrayRecord({k: self.current[k] if k in self.frozen and k in self.current else a
                                  for k, a in arrays.items()})
        return arrays

    def _draw_groups(self, nodes: list[int]) -> None:
        """The one-time split of the nodes into `bands` cyclic groups (seeded, or from OS entropy); it depends on
        nothing but the seed and the node ids, never on the nodes' data."""
        if self.bands > len(nodes):
            raise ConfigError("bands", self.bands, f"must be <= the number of nodes ({len(nodes)}): each group needs "
                              "one node at least")
        rng = rng_for(self.seed, "groups") if self.seed is not None else \
            np.random.default_rng(int.from_bytes(SecureGenerator().random(4).tobytes(), "little"))
        group = cyclic_groups(rng, len(nodes), self.bands)
        self.groups = [[] for _ in range(self.bands)]
        for node, g in zip(nodes, group):
            self.groups[g].append(node)
        log(INFO, "%s: %d nodes in %d cyclic groups of %d to %d (the i-th release of this segment samples group "
            "(i - 1) mod %d: a node's participations are >= %d releases apart); banded noise buffer %d x d floats "
            "(secret, in memory)",
            self.label, len(nodes), self.bands, min(map(len, self.groups)), max(map(len, self.groups)), self.bands,
            self.bands, self.bands - 1)

    def _members(self, index: int) -> list[int]:
        """The nodes release `index` samples from: its cyclic group (cycles counted from this segment's first
        release), or the whole population."""
        if self.bands == 1:
            return self.population
        if self.groups is None:
            raise RuntimeError("banded sampling without cyclic groups")
        return self.groups[group_of_round(index - self.segment, self.bands)]

    def metric_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A round's record as published: the release's keys, then `diagnostics.*` (when published): the counts
        and the replies' own metrics (e.g. `diagnostics.train_loss`)."""
        out = {k: record[k] for k in COVERED}
        if self.publish_diagnostics:
            out.update({f"diagnostics.{k}": record[k] for k in DIAGNOSTICS})
            out.update({f"diagnostics.{k}": v for k, v in record.get("client_metrics", {}).items()
                        if k not in DIAGNOSTICS})
        return out

    def _health(self, rnd: int, requested: int, bad: int, rejected: int, reasons: list[str],
                errors: list[str]) -> None:
        """Log rejections and the first error; count a round where more than max_failed_fraction of the sampled
        nodes failed or were rejected (every reply rejected included); stop after max_failed_rounds such rounds
        in a row. Nothing about the replies is logged when diagnostics are not published."""
        if rejected and self.publish_diagnostics:
            log(WARNING, "%s: round %d: %d of %d replies rejected (first: %s) [diagnostic: from the replies, "
                "outside the guarantee]", self.label, rnd, rejected, requested, reasons[0])
        if errors and self.publish_diagnostics:
            log(WARNING, "%s: round %d: %d of %d sampled nodes answered with an error; first: %s [diagnostic: from "
                "the nodes, outside the guarantee]", self.label, rnd, len(errors), requested, errors[0])
        if requested and bad / requested > self.max_failed_fraction:
            self.failed_streak += 1
            if self.failed_streak >= self.max_failed_rounds:
                silent = bad - rejected - len(errors)
                why = (f"; first error: {errors[0]}" if errors else "") + \
                      (f"; last rejection: {reasons[0]}" if reasons else "")
                counts = (f" (round {rnd}: {bad} of {requested}: {len(errors)} errors, {rejected} rejected, "
                          f"{silent} without a reply{why})") if self.publish_diagnostics else ""
                self._stop(f"failures: {self.failed_streak} rounds in a row with more than "
                           f"{self.max_failed_fraction:g} of the sampled nodes failed or rejected{counts}; "
                           f"stopped after round {rnd}, epsilon {_fmt_eps(self.epsilon)}", ERROR,
                           " [the stop's point depends on the replies: outside the guarantee]")
        else:
            self.failed_streak = 0

    def _stop(self, reason: str, level: int, note: str = "") -> None:
        self.stop_reason = reason
        log(level, "%s: %s%s; the rounds after it send and release nothing", self.label, reason, note)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.stop_reason is not None or not self.client_evaluation:
            return []
        return self._evaluator("configure_evaluate")(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if not self.client_evaluation:
            return None
        replies = list(replies)
        if not replies and self.stop_reason is not None:
            return None
        return self._evaluator("aggregate_evaluate")(server_round, replies)

    def _evaluator(self, name: str) -> Callable:
        if isinstance(self.client_evaluation, Strategy):
            return getattr(self.client_evaluation, name)
        return self._inner(name)

    # -- helpers -----------------------------------------------------------------------------------------------
    def _epsilon_after(self) -> float:
        """ε after the next release (banded: unchanged unless it starts a cycle of b in this segment)."""
        if not self._starts_cycle(self.releases + 1):
            return self.epsilon
        return float(self.accountant.epsilon_after(self.participation_event))

    def _starts_cycle(self, index: int) -> bool:
        """Whether release `index` is the first of a cycle of b releases in this segment (a participation;
        every release when b = 1)."""
        return (index - 1 - self.segment) % self.bands == 0

    def _update(self, rep: Message, keys: list[str], current: list[np.ndarray], trained: list[int],
                flat0: np.ndarray) -> tuple[np.ndarray | None, str]:
        """(the reply's trained arrays − the sent ones, flat; "") or (None, why a malformed reply was rejected:
        it is never applied)."""
        try:
            rec = rep.content[self.arrays_key]
            if list(rec.keys()) != keys:
                return None, f"array names {_names(list(rec.keys()))} differ from the sent {_names(keys)}"
            got = {i: np.asarray(rec[keys[i]].numpy()) for i in trained}
        except Exception as err:  # noqa: BLE001 - anything unreadable is a failure, never applied
            return None, f"unreadable reply ({type(err).__name__})"
        for i, g in got.items():
            if g.shape != current[i].shape or g.dtype.kind != "f":
                return None, (f"array '{keys[i]}' has shape {g.shape} dtype {g.dtype}, sent {current[i].shape} "
                              f"float")
        flat = np.concatenate([got[i].astype(np.float64).ravel() for i in trained]) if trained else np.zeros(0)
        if not np.all(np.isfinite(flat)):
            return None, "non-finite values"
        return flat - flat0, ""


class UserDPFedAvg(UserDP):
    """User-level DP FedAvg: `UserDP` whose step is sent + server_lr · the released mean, with Flower's round
    loop (`Strategy.start`) on itself; client-side evaluation by `evaluate_strategy` (off when None)."""

    def __init__(self, sampling_rate: float, noise_multiplier: float | None = None, clipping_norm: float | None = None,
                 delta: float | None = None, *, evaluate_strategy: Strategy | None = None, arrays_key: str = "arrays",
                 **kwargs) -> None:
        fedavg = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=0, min_evaluate_nodes=0,
                        min_available_nodes=0, arrayrecord_key=arrays_key)
        super().__init__(fedavg, sampling_rate, noise_multiplier, clipping_norm, delta, arrays_key=arrays_key,
                         client_evaluation=evaluate_strategy or False, **kwargs)
        self.evaluate_strategy = evaluate_strategy

    @property
    def label(self) -> str:
        return "UserDPFedAvg"

    def _run(self, **kwargs) -> Result:
        return Strategy.start(self, **kwargs)

    def _summary_of_wrapped(self) -> None:
        pass

    def _train_content(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                       grid: Grid) -> RecordDict | None:
        config["server-round"] = server_round   # as FedAvg's configure_train
        return RecordDict({self.arrays_key: arrays, self.config_key: config})

    def _step(self, server_round: int, stepped: ArrayRecord, client: dict[str, float]) -> ArrayRecord | None:
        return stepped   # FedAvg's weighted average of the one reply: the reply itself


def sum_within_bound(total: np.ndarray, count: int, clip_norm: float) -> bool:
    """Whether a sum of `count` updates each clipped to `clip_norm` can be one: ‖Σ‖ <= count·C (what a server that
    sees only the sum, as under secure aggregation, can verify)."""
    return bool(np.linalg.norm(np.asarray(total, np.float64)) <= count * clip_norm)


def _kind(key: str, value: Any) -> str:
    """'' for a float weight, else what the array is (BatchNorm statistics, or its dtype when not float)."""
    if hasattr(value, "is_floating_point") and callable(value.is_floating_point):   # a torch tensor
        floating, dtype = bool(value.is_floating_point()), str(value.dtype).replace("torch.", "")
    else:
        dtype = np.dtype(value.dtype if isinstance(value, Array) else np.asarray(value).dtype)
        floating, dtype = dtype.kind == "f", str(dtype)
    last = key.rsplit(".", 1)[-1]
    if last == "num_batches_tracked":
        return f"BatchNorm batch counter, {dtype}"
    if last in BATCHNORM_STATE:
        return "BatchNorm statistics of the users' batches"
    return "" if floating else f"{dtype}, not float"


def non_weight_arrays(arrays: ArrayRecord | Mapping[str, Any] | Any) -> list[str]:
    """The names of the arrays that cannot be clipped and noised as weights — non-float arrays and BatchNorm's
    running statistics — from an ArrayRecord, a name → array mapping, or a torch model (its state_dict()):
    what `frozen=` needs to keep them out of the release."""
    if hasattr(arrays, "state_dict") and callable(arrays.state_dict):
        arrays = arrays.state_dict()
    return [k for k, v in arrays.items() if _kind(k, v)]


def check_arrays(arrays: ArrayRecord, frozen: Iterable[str] = ()) -> None:
    """Refuse, in one bounded line, the arrays that cannot be clipped and noised as weights (non-float arrays and
    BatchNorm's running statistics, unless listed in `frozen`): how many, the first few and what each is, the
    fixes, and how to list them all."""
    frozen = set(frozen)
    unknown = sorted(frozen - set(arrays.keys()))
    if unknown:
        raise ConfigError("frozen", unknown[0], f"names no array of the model (it has {_names(list(arrays.keys()))}; "
                          f"{len(unknown)} unknown name(s))")
    bad = [(k, why) for k in arrays.keys() if k not in frozen and (why := _kind(k, arrays[k]))]
    if bad:
        shown = [f"{k} ({why})" for k, why in bad[:SHOWN]] + ([f"... {len(bad) - SHOWN} more"] if len(bad) > SHOWN
                                                                else [])
        raise ConfigError(
            "initial_arrays", shown,
            f"hold {len(bad)} of {len(arrays)} arrays that cannot be clipped and noised as weights (only float "
            f"weights can: BatchNorm's running statistics are computed from a user's batches, and non-float arrays "
            f"cannot be noised). Fix: replace BatchNorm by GroupNorm before training "
            f"(fl_userdp.local.opacus_compat.replace_batchnorm(model)), or keep them out of the release with "
            f"frozen=non_weight_arrays(initial_arrays) (fl_userdp.server.dropin; the list of all {len(bad)}) — "
            f"frozen arrays are sent as at the start every round, so frozen statistics stay at their initial "
            f"values (mean 0, variance 1) and a model evaluated in eval mode normalises with them. The arrays")


def _calibrate(target: float, delta: float, q: float, rounds: int, accountant: str,
               bands: int = 1) -> tuple[float, float]:
    try:
        return calibrate_noise("uls", target, delta, q, rounds, backend=accountant, bands=bands)
    except ConfigError as err:
        raise _renamed(err) from None


def _renamed(err: ConfigError) -> ConfigError:
    """The error with the drop-in's argument name (the accounting names fields as the run config does)."""
    return ConfigError(_KEY_NAMES.get(err.key, err.key), err.value, err.requirement)


def _metric(rep: Message, key: str) -> float:
    for record in rep.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def _reply_metrics(rep: Message) -> dict[str, float]:
    """The scalar metrics of a reply's first MetricRecord (the mod's clipping flag left out)."""
    records = list(rep.content.metric_records.values())
    return {k: float(v) for k, v in (records[0].items() if records else [])
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != CLIPPED_METRIC}


def _weighted_means(rows: list[dict[str, float]], weight_key: str) -> dict[str, float]:
    """The replies' scalar metrics averaged as FedAvg does (weighted by `weight_key` when every reply has it)."""
    if not rows:
        return {}
    weights = [r.get(weight_key) for r in rows]
    if any(w is None or not w > 0 for w in weights):
        weights = [1.0] * len(rows)
    total = float(sum(weights))
    keys = [k for k in rows[0] if k != weight_key and all(k in r for r in rows)]
    return {k: sum(w * r[k] for w, r in zip(weights, rows)) / total for k in keys}


def _one_line(text: Any) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def _names(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:SHOWN])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > SHOWN else shown


def _short(text: str, chars: int = 200) -> str:
    return text if len(text) <= chars else "…" + text[-(chars - 1):]


def _fmt_eps(eps: float) -> str:
    return f"{eps:.4g}" if math.isfinite(eps) else "inf"
