"""Run configuration: flat keys (Flower run-config style) parsed once into frozen dataclasses.

The flat key names are the schema: they are what `[tool.flwr.app.config]`,
`--config FILE` (TOML) and `--set key=value` accept. Parsing validates every
value and raises `ConfigError` naming the key and the value; unknown keys are
refused (with a suggestion) rather than ignored.
"""
from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .accounting.calibration import MAX_SIGMA
from .accounting.events import DELTA_FLOOR_WHY, MAX_EXAMPLES_PER_USER, MAX_STEPS, MIN_DELTA, MIN_NOISE_MULTIPLIER
from .errors import ConfigError
from .mechanism.adaptive_clip import MAX_CLIP_LR, min_count_noise
from .mechanism.aggregate import MAX_NOISE_STD
from .mechanism.fixed_point import EXACT_RECORDS


@dataclass(frozen=True)
class PrivacyConfig:
    mode: str = "uls"                 # "uls" | "els"
    clip_norm: float = 1.0            # C
    noise_multiplier: float | None = None  # σ; None -> calibrated from target_epsilon
    target_epsilon: float = 8.0       # used when noise_multiplier is None
    delta: float = 1e-5               # δ of the user-level (ε, δ) guarantee
    sampling_rate: float = 0.03125    # users (ULS) or kept examples (ELS)
    max_examples_per_user: int = 8    # k
    mechanism: str = "independent"    # "independent" | "bandmf": banded correlated noise (fl_userdp.mechanism.bandmf)
    bands: int = 1                    # b of "bandmf": users in b cyclic groups, round t draws from group (t-1) mod b
    bandmf_coefficients: str = "sqrt"  # "sqrt" (banded square root) | "optimized" (for train.rounds)
    participation: str = "poisson"    # within the round's group: "poisson" (rate q) | "fixed" (everyone; q = 1)
    accountant: str = "pld"           # "pld" | "rdp" | "group" | "package.module:Factory" (a plug-in ledger)
    max_epsilon: float | None = None  # budget stop; None = no stop
    secure_mode: bool | None = None   # sampling and noise from OS entropy (not from the seed); None = "auto":
                                      # on for users' own data, off for the built-in synthetic data (`secure_mode`)
    publish_diagnostics: bool | None = None  # un-noised diagnostics in the outputs; None = "auto": published for
                                      # the built-in synthetic data, off for users' own data (`publish_diagnostics`)
    adaptive_clip_quantile: float | None = None  # γ: C tracks this quantile of record norms; None = fixed C
    adaptive_clip_lr: float = 0.2     # η of the geometric update C ← C·exp(−η(b̃ − γ))
    count_noise_multiplier: float | None = None  # σ_b of the unclipped count; None = expected count / 20
    private_loss: bool = False        # release the cohort's mean training loss and clipped fraction with noise,
                                      # accounted with the round's release (fl_userdp.mechanism.private_loss)
    loss_bound: float | None = None   # L: each record's loss is clipped to [0, L]; None = ln(model.vocab-size) (tiny)
    loss_noise_multiplier: float | None = None  # σ_l, in units of each part's sensitivity; None = expected count / 10


@dataclass(frozen=True)
class TrainConfig:
    rounds: int = 20                  # T: releases (server steps) per mode
    server_optimizer: str = "adam"    # "sgd" | "adam"
    server_lr: float = 0.05           # the server optimizer's learning rate on the noised mean update
    update: str = "gradient"          # ULS: "gradient" | "local-steps"
    local_steps: int = 1              # τ for local-steps mode
    local_lr: float = 0.1             # ULS local-steps mode: the users' local SGD learning rate
    local_batch_size: int = 8         # ULS local-steps mode: examples per local step
    physical_batch_size: int = 64     # rows per per-example-gradient forward (ELS, ULS gradient mode): every
                                      # forward has exactly this many (short ones padded), so a record's
                                      # gradient is the same bits on any node; lower it when nodes hold few records
    eval_every: int = 2               # rounds between held-out evaluations (0: never; the last round always)
    eval_examples: int = 256          # held-out rows evaluated, spread evenly over the held-out users' rows


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"                # "tiny" (built from config), "linear" (numpy linear regression), a local HF folder / .gguf file, or "package.module:factory" (your own task: fl_userdp.local.task)
    vocab_size: int = 128             # tiny model only
    hidden_size: int = 64             # tiny model only
    num_layers: int = 2               # tiny model only
    num_heads: int = 4                # tiny model only
    seq_len: int = 32                 # tokens per row: one example is one row of this many tokens (k caps rows)
    lora_rank: int = 8                # LoRA rank of the adapters (the trainable weights)
    lora_alpha: float = 8.0           # LoRA scaling alpha
    lora_targets: str = "auto"        # comma-separated module names, or "auto"
    dtype: str = "float32"            # the model's weights dtype: float32 | bfloat16 | float16
    device: str = "cpu"               # "cpu" | "cuda[:N]" | "auto"
    autocast: str = "none"            # "none" | "bf16": forward/backward under bfloat16 autocast; clipping and sums in float32
    dim: int = 64                     # linear model only: number of features (and weights)
    init_weights: str = ""            # tiny model only: a torch state-dict file of the base model (a warm start); "" = random weights from the seed


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"         # "synthetic" or a path to a user-partitioned dataset
    num_users: int = 1024             # training users (a cap for a data source holding more)
    heldout_users: int = 32           # users kept out of training, for the held-out eval_loss
    examples_per_user_median: float = 12.0 # synthetic data: median examples per user (n_u log-normal)
    examples_per_user_sigma: float = 1.0   # log-normal spread of n_u
    user_diversity: float = 0.5       # 0: a user's examples come from one topic; 1: from a personal mix of all topics
    example_similarity: float = 0.0   # synthetic text: chance each token of a user's example copies the user's template row (1: all rows alike)
    user_column: str = "user"         # JSONL / CSV / Parquet / datasets sources: the user id column
    text_column: str = "text"         # JSONL / CSV / Parquet / datasets sources: the text column
    split_seed: int = -1              # seed of the held-out/training split of a text source; < 0: the run's seed (fixes the population across seeds)


@dataclass(frozen=True)
class SimConfig:
    users_per_node: int = 256         # U: users hosted by one Flower node (node p: users [p·U, (p+1)·U))
    ray_address: str = ""             # "" starts a local Ray; "auto" or host:port attaches
    cpus_per_node: float = 1.0        # Ray CPUs per node: one node runs per this many CPUs at a time
    num_cpus: int = 2                 # for a locally started Ray
    reply_timeout: float = 300.0      # seconds; late replies count as failures
    max_failed_fraction: float = 0.5  # a round "fails" when more than this fraction of its nodes fail...
    max_failed_rounds: int = 3        # ...and this many failed rounds in a row stop the run (0: never stop)
    max_restarts: int = 3             # engine restarts after a lost Ray worker (resuming from the release log)


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0                     # the run's seed: data, initialisation and, unless secure mode, cohorts and noise
    out: str = "runs/latest"          # output folder (metrics.jsonl, summary.json/.md, plot.png, checkpoints, release logs)
    checkpoint_every: int = 0         # rounds; 0 = only at the end
    keep_releases: bool = False       # keep every released update in the release log (a checkpoint drops the
                                      # ones it covers otherwise): what `fl-userdp audit --run` tests
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)


MAX_SYNTHETIC_MEDIAN = 1e5  # examples per synthetic user (median)...
MAX_SYNTHETIC_SIGMA = 10.0  # ...and the log-normal spread (the draw itself is checked: data.synthetic_text)

_SECTIONS = {"privacy": PrivacyConfig, "train": TrainConfig, "model": ModelConfig, "data": DataConfig, "sim": SimConfig}


def _flat_schema() -> dict[str, tuple[str | None, str, Any]]:
    """flat key -> (section or None, field name, default)."""
    schema: dict[str, tuple[str | None, str, Any]] = {}
    for f in fields(RunConfig):
        if f.name in _SECTIONS:
            for g in fields(_SECTIONS[f.name]):
                schema[f"{f.name}.{g.name.replace('_', '-')}"] = (f.name, g.name, g.default)
        else:
            schema[f.name.replace("_", "-")] = (None, f.name, f.default)
    return schema


SCHEMA = _flat_schema()
# Old names still accepted (mapped to the current key; outputs use the current one).
ALIASES = {"privacy.secure-noise": "privacy.secure-mode"}
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # as fl_userdp.accounting.plugins.SPEC
_AUTO_BOOLS = {"privacy.secure-mode", "privacy.publish-diagnostics"}
_OPTIONAL_FLOATS = {"privacy.noise-multiplier", "privacy.max-epsilon", "privacy.adaptive-clip-quantile",
                    "privacy.count-noise-multiplier", "privacy.loss-bound", "privacy.loss-noise-multiplier"}


def secure_mode(cfg: RunConfig) -> bool:
    """Whether sampling and noise come from OS entropy: privacy.secure-mode, or where it is "auto" (the
    default) on for users' own data — a data.source other than the built-in "synthetic", or your own task
    (model.name = "package.module:factory", which may bring its own corpus) — and off for the built-in
    synthetic corpora, so the main job stays reproducible from its seed. A seeded run publishes its seed
    (summary.json), which is the key to its sampling and noise."""
    p = cfg.privacy
    if p.secure_mode is not None:
        return bool(p.secure_mode)
    return users_own_data(cfg)


def users_own_data(cfg: RunConfig) -> bool:
    """Whether the run trains on users' own data: a data.source other than the built-in "synthetic", or your
    own task (model.name = "package.module:factory", which may bring its own corpus)."""
    return cfg.data.source != "synthetic" or is_task_spec(cfg.model.name)


def publish_diagnostics(cfg: RunConfig) -> bool:
    """Whether the outputs carry diagnostics (training loss, counts, clipped fraction, failures, wall time:
    computed from training users' data without noise, outside the guarantee): privacy.publish-diagnostics, or
    where it is "auto" (the default) only for the built-in synthetic data — off for users' own data
    (`users_own_data`), as `secure_mode` is on there."""
    p = cfg.privacy
    if p.publish_diagnostics is not None:
        return bool(p.publish_diagnostics)
    return not users_own_data(cfg)


def diagnostics_line(cfg: RunConfig) -> str:
    """One line for the start of a run: whether diagnostics are published, and why."""
    why = "privacy.publish-diagnostics" if cfg.privacy.publish_diagnostics is not None else \
        "auto: users' own data" if users_own_data(cfg) else "auto: built-in synthetic data"
    if publish_diagnostics(cfg):
        return (f"  diagnostics published ({why}): training loss, counts, clipped fraction, failures and wall time "
                "of the sampled users, without noise, OUTSIDE the guarantee")
    private = "; the training loss and clipped fraction are released with noise (privacy.private-loss)" \
        if cfg.privacy.private_loss else "; privacy.private-loss=true releases a noised training loss"
    return f"  no diagnostics published ({why}): the outputs hold only what the guarantee covers{private}"


def loss_bound(cfg: RunConfig) -> float:
    """L of privacy.private-loss: each record's training loss is clipped to [0, L]. privacy.loss-bound, or for
    the "tiny" model ln(model.vocab-size) (the loss of the uniform prediction; a cross entropy above it is
    clipped). Other models need it given (checked when the config is parsed)."""
    p = cfg.privacy
    if p.loss_bound is not None:
        return float(p.loss_bound)
    return math.log(cfg.model.vocab_size)


def is_task_spec(name: str) -> bool:
    """Whether `model.name` names your own task's factory ("package.module:factory"; imported by the nodes
    and the server, never here: `fl_userdp.local.task.load_task`)."""
    return isinstance(name, str) and _PLUGIN.match(name) is not None and name not in ("tiny", "linear")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert a raw value (from TOML, CLI strings or Flower run config) to the field's type."""
    if key in _AUTO_BOOLS:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
            return None
        default = False
    if key in _OPTIONAL_FLOATS:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "auto")):
            return None
        default = 0.0
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise ConfigError(key, value, "must be true or false")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ConfigError(key, value, "must be an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value) if not isinstance(value, float) else _raise()
        except (TypeError, ValueError):
            raise ConfigError(key, value, "must be an integer") from None
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ConfigError(key, value, "must be a number")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, value, "must be a number") from None
        if math.isnan(out):
            raise ConfigError(key, value, "must be a number")
        return out
    if not isinstance(value, str):
        raise ConfigError(key, value, "must be a string")
    return value


def _raise() -> Any:
    raise ValueError


def _check(cfg: RunConfig) -> RunConfig:
    p, t, m, d, s = cfg.privacy, cfg.train, cfg.model, cfg.data, cfg.sim

    def need(ok: bool, key: str, value: Any, requirement: str) -> None:
        if not ok:
            raise ConfigError(key, value, requirement)

    need(p.mode in ("uls", "els"), "privacy.mode", p.mode, "must be 'uls' or 'els'")
    need(0 < p.clip_norm < math.inf, "privacy.clip-norm", p.clip_norm, "must be > 0")
    need(p.noise_multiplier is None or 0 <= p.noise_multiplier < math.inf, "privacy.noise-multiplier",
         p.noise_multiplier, "must be >= 0 (or 'auto' to calibrate)")
    need(0 < p.target_epsilon < math.inf, "privacy.target-epsilon", p.target_epsilon, "must be > 0")
    sigma = MAX_SIGMA if p.noise_multiplier is None else p.noise_multiplier  # "auto": calibrated up to MAX_SIGMA
    need(sigma * p.clip_norm <= MAX_NOISE_STD, "privacy.clip-norm", p.clip_norm,
         f"times privacy.noise-multiplier ({'auto, up to ' if p.noise_multiplier is None else ''}{sigma:g}) is the "
         f"noise's standard deviation, which must be <= {MAX_NOISE_STD:g} (beyond it the release overflows)")
    need(MIN_DELTA <= p.delta < 1, "privacy.delta", p.delta, f"must be in [{MIN_DELTA:g}, 1) ({DELTA_FLOOR_WHY})")
    need(1e-7 <= p.sampling_rate <= 1, "privacy.sampling-rate", p.sampling_rate, "must be in [1e-07, 1]")
    need(p.noise_multiplier is None or p.noise_multiplier == 0 or p.noise_multiplier >= 0.01,
         "privacy.noise-multiplier", p.noise_multiplier, "must be 0 (no noise) or >= 0.01 (below it epsilon runs "
         "to the thousands and cannot be accounted accurately)")
    need(p.max_examples_per_user >= 1, "privacy.max-examples-per-user", p.max_examples_per_user, "must be >= 1")
    need(p.max_examples_per_user <= MAX_EXAMPLES_PER_USER, "privacy.max-examples-per-user", p.max_examples_per_user,
         f"must be <= {MAX_EXAMPLES_PER_USER:,} (the accountant's bound on the ELS mixture)")
    _check_mechanism(p)
    need(p.accountant in ("pld", "rdp", "group") or _PLUGIN.match(p.accountant) is not None, "privacy.accountant",
         p.accountant, "must be 'pld', 'rdp', 'group' or a plug-in 'package.module:Factory'")
    need(not (p.accountant == "rdp" and p.mode == "els"), "privacy.accountant", p.accountant,
         "'rdp' has no analysis of the ELS mixture event; use 'pld' or 'group'")
    need(not (p.accountant == "group" and p.mode == "uls"), "privacy.accountant", p.accountant,
         "'group' applies to mode 'els' only")
    need(p.max_epsilon is None or p.max_epsilon > 0, "privacy.max-epsilon", p.max_epsilon, "must be > 0")
    need(p.adaptive_clip_quantile is None or 0 < p.adaptive_clip_quantile < 1, "privacy.adaptive-clip-quantile",
         p.adaptive_clip_quantile, "must be in (0, 1) (or 'none' for a fixed clip norm)")
    need(0 < p.adaptive_clip_lr <= MAX_CLIP_LR, "privacy.adaptive-clip-lr", p.adaptive_clip_lr,
         f"must be in (0, {MAX_CLIP_LR:g}] (a round moves C by at most e^η)")
    need(p.count_noise_multiplier is None or 0 < p.count_noise_multiplier < math.inf,
         "privacy.count-noise-multiplier", p.count_noise_multiplier, "must be > 0 (or 'auto')")
    if p.adaptive_clip_quantile is not None and p.count_noise_multiplier is not None and p.noise_multiplier:
        least = min_count_noise(p.noise_multiplier, MIN_NOISE_MULTIPLIER)
        need(p.count_noise_multiplier >= least, "privacy.count-noise-multiplier", p.count_noise_multiplier,
             f"must be >= {least:.6g} with privacy.noise-multiplier {p.noise_multiplier:g}: the round's joint "
             f"release (sum and count) needs a multiplier >= {MIN_NOISE_MULTIPLIER:g}")
    need(p.loss_bound is None or 0 < p.loss_bound < math.inf, "privacy.loss-bound", p.loss_bound,
         "must be > 0 (or 'auto': ln(model.vocab-size) for model.name 'tiny')")
    need(p.loss_noise_multiplier is None or 0 < p.loss_noise_multiplier < math.inf,
         "privacy.loss-noise-multiplier", p.loss_noise_multiplier, "must be > 0 (or 'auto': expected count / 10)")
    need(not p.private_loss or p.loss_bound is not None or m.name == "tiny", "privacy.loss-bound", p.loss_bound,
         f"must be given with privacy.private-loss for model.name {m.name!r} (its default, ln(model.vocab-size), "
         "is for 'tiny'): the largest per-record training loss the release counts")
    need(not p.private_loss or p.mechanism == "independent", "privacy.private-loss", p.private_loss,
         "must be false with privacy.mechanism 'bandmf' (its loss release is accounted with independent noise)")
    need(1 <= t.rounds <= MAX_STEPS, "train.rounds", t.rounds, f"must be in [1, {MAX_STEPS:,}]")
    need(t.server_optimizer in ("sgd", "adam"), "train.server-optimizer", t.server_optimizer, "must be 'sgd' or 'adam'")
    need(0 < t.server_lr < math.inf, "train.server-lr", t.server_lr, "must be > 0")
    need(t.update in ("gradient", "local-steps"), "train.update", t.update, "must be 'gradient' or 'local-steps'")
    need(t.local_steps >= 1, "train.local-steps", t.local_steps, "must be >= 1")
    need(0 < t.local_lr < math.inf, "train.local-lr", t.local_lr, "must be > 0")
    need(t.local_batch_size >= 1, "train.local-batch-size", t.local_batch_size, "must be >= 1")
    need(1 <= t.physical_batch_size <= 65536, "train.physical-batch-size", t.physical_batch_size,
         "must be in [1, 65536] (rows per forward)")
    need(t.eval_every >= 0, "train.eval-every", t.eval_every, "must be >= 0")
    need(t.eval_examples >= 1, "train.eval-examples", t.eval_examples, "must be >= 1")
    for key, val in (("model.vocab-size", m.vocab_size), ("model.hidden-size", m.hidden_size),
                     ("model.num-layers", m.num_layers), ("model.num-heads", m.num_heads),
                     ("model.lora-rank", m.lora_rank)):
        need(val >= 1, key, val, "must be >= 1")
    need(m.seq_len >= 2, "model.seq-len", m.seq_len, "must be >= 2 (a row needs a next-token target)")
    need(m.hidden_size % m.num_heads == 0, "model.hidden-size", m.hidden_size,
         f"must be divisible by model.num-heads ({m.num_heads})")
    need(m.lora_alpha > 0, "model.lora-alpha", m.lora_alpha, "must be > 0")
    need(m.dtype in ("float32", "bfloat16", "float16"), "model.dtype", m.dtype, "must be float32, bfloat16 or float16")
    need(m.device == "cpu" or m.device.startswith("cuda") or m.device == "auto", "model.device", m.device,
         "must be 'cpu', 'cuda[:N]' or 'auto'")
    need(m.autocast in ("none", "bf16"), "model.autocast", m.autocast, "must be 'none' or 'bf16'")
    need(m.autocast == "none" or (m.name != "linear" and not is_task_spec(m.name)), "model.autocast",
         m.autocast, f"applies to the language-model path only, not model.name {m.name!r}")
    need(m.autocast == "none" or m.dtype == "float32", "model.autocast", m.autocast,
         f"needs model.dtype 'float32' (autocast computes float32 weights in bfloat16), not {m.dtype!r}")
    need(m.name in ("tiny", "linear") or Path(m.name).exists() or is_task_spec(m.name), "model.name", m.name,
         "must be 'tiny', 'linear', an existing local path or a task factory 'package.module:factory'")
    need(m.dim >= 1, "model.dim", m.dim, "must be >= 1")
    need(not m.init_weights or (m.name == "tiny" and Path(m.init_weights).is_file()), "model.init-weights",
         m.init_weights, "must name an existing file, with model.name 'tiny'")
    need(m.name != "linear" or d.source == "synthetic", "data.source", d.source,
         "must be 'synthetic' with model.name 'linear' (the linear task has its own synthetic users)")
    need(d.source in ("synthetic", "shakespeare") or Path(d.source).exists(), "data.source", d.source,
         "must be 'synthetic', 'shakespeare' or an existing path")
    need(d.num_users >= 1, "data.num-users", d.num_users, "must be >= 1")
    need(d.heldout_users >= 0, "data.heldout-users", d.heldout_users, "must be >= 0")
    need(1 <= d.examples_per_user_median <= MAX_SYNTHETIC_MEDIAN, "data.examples-per-user-median",
         d.examples_per_user_median, f"must be in [1, {MAX_SYNTHETIC_MEDIAN:g}]")
    need(0 <= d.examples_per_user_sigma <= MAX_SYNTHETIC_SIGMA, "data.examples-per-user-sigma",
         d.examples_per_user_sigma, f"must be in [0, {MAX_SYNTHETIC_SIGMA:g}] (the log-normal spread of n_u)")
    need(0 <= d.user_diversity <= 1, "data.user-diversity", d.user_diversity, "must be in [0, 1]")
    need(0 <= d.example_similarity <= 1, "data.example-similarity", d.example_similarity, "must be in [0, 1]")
    need(s.users_per_node >= 1, "sim.users-per-node", s.users_per_node, "must be >= 1")
    per_node = s.users_per_node * (p.max_examples_per_user if p.mode == "els" else 1)  # records a node can sum
    unit = "users x privacy.max-examples-per-user" if p.mode == "els" else "users"
    need(per_node <= EXACT_RECORDS, "sim.users-per-node", s.users_per_node,
         f"must hold at most {EXACT_RECORDS} records a round ({unit} = {per_node}): a node's exact sum must fit "
         "float64 (fl_userdp.mechanism.fixed_point)")
    need(s.cpus_per_node > 0, "sim.cpus-per-node", s.cpus_per_node, "must be > 0")
    need(s.num_cpus >= 1, "sim.num-cpus", s.num_cpus, "must be >= 1")
    need(s.reply_timeout > 0, "sim.reply-timeout", s.reply_timeout, "must be > 0")
    need(0 <= s.max_failed_fraction < 1, "sim.max-failed-fraction", s.max_failed_fraction, "must be in [0, 1)")
    need(s.max_failed_rounds >= 0, "sim.max-failed-rounds", s.max_failed_rounds, "must be >= 0")
    need(s.max_restarts >= 0, "sim.max-restarts", s.max_restarts, "must be >= 0")
    need(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0")
    need(cfg.checkpoint_every >= 0, "checkpoint-every", cfg.checkpoint_every, "must be >= 0")
    return cfg


def _check_mechanism(p: PrivacyConfig) -> None:
    """privacy.mechanism / bands / bandmf-coefficients / participation (one-line errors naming the key)."""
    if p.mechanism not in ("independent", "bandmf"):
        raise ConfigError("privacy.mechanism", p.mechanism, "must be 'independent' or 'bandmf'")
    if p.bands < 1 or (p.bands > 1 and p.mechanism != "bandmf"):
        raise ConfigError("privacy.bands", p.bands, "must be >= 1, and 1 unless privacy.mechanism is 'bandmf'")
    if p.bandmf_coefficients not in ("sqrt", "optimized"):
        raise ConfigError("privacy.bandmf-coefficients", p.bandmf_coefficients, "must be 'sqrt' or 'optimized'")
    if p.participation not in ("poisson", "fixed"):
        raise ConfigError("privacy.participation", p.participation, "must be 'poisson' or 'fixed'")
    if p.participation == "fixed" and p.sampling_rate != 1:
        raise ConfigError("privacy.sampling-rate", p.sampling_rate, "must be 1 with privacy.participation 'fixed' "
                          "(every user of the round's group takes part)")
    if p.mechanism == "bandmf" and p.adaptive_clip_quantile is not None:
        raise ConfigError("privacy.adaptive-clip-quantile", p.adaptive_clip_quantile,
                          "must be 'none' with privacy.mechanism 'bandmf' (banded noise is built for a fixed clip norm)")
    if p.bands > 1 and _PLUGIN.match(p.accountant) is not None:
        raise ConfigError("privacy.accountant", p.accountant, "must be 'pld', 'rdp' or 'group' with privacy.bands > 1 "
                          "(a plug-in ledger does not know the banded accounting)")


def parse_config(flat: Mapping[str, Any] | None = None, base: RunConfig | None = None) -> RunConfig:
    """Build a validated RunConfig from flat keys, on top of `base` (default: the defaults)."""
    cfg = base or RunConfig()
    sections = {name: {} for name in _SECTIONS}
    top: dict[str, Any] = {}
    for key, raw in (flat or {}).items():
        key = ALIASES.get(key, key) if isinstance(key, str) else key
        if not isinstance(key, str) or key not in SCHEMA:
            hint = difflib.get_close_matches(str(key), SCHEMA, n=1)
            raise ConfigError(str(key), raw, "is not a known key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        section, name, default = SCHEMA[key]
        value = _coerce(key, raw, default)
        (sections[section] if section else top)[name] = value
    cfg = replace(cfg, **top, **{n: replace(getattr(cfg, n), **v) for n, v in sections.items() if v})
    return _check(cfg)


def flatten_toml(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> flat dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_toml(value, full + "."))
        else:
            flat[full] = value
    return flat


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into flat keys (errors name the file)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return flatten_toml(tomllib.load(fh))
    except FileNotFoundError:
        raise ConfigError("--config", str(p), "does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError("--config", str(p), f"is not valid TOML ({err})") from None


def to_flat(cfg: RunConfig) -> dict[str, Any]:
    """RunConfig -> flat keys (None values dropped, as Flower run config cannot hold them)."""
    out: dict[str, Any] = {}
    for key, (section, name, _) in SCHEMA.items():
        value = getattr(getattr(cfg, section), name) if section else getattr(cfg, name)
        if value is not None:
            out[key] = value
    return out
