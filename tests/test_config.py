"""Config parsing: valid dicts give a config, anything else a ConfigError naming the key — never a deep traceback."""
import dataclasses
import pytest
from hypothesis import given, settings, strategies as st

from fl_userdp.config import SCHEMA, RunConfig, load_config_file, parse_config, to_flat
from fl_userdp.errors import ConfigError

KEYS = sorted(SCHEMA)
values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["uls", "els", "pld", "rdp", "group", "sgd", "adam", "auto", "tiny",
                                           "synthetic", "gradient", "local-steps", "cpu", "true", "1e-5", "0.5"]),
    st.lists(st.integers(), max_size=3),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=20))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.dictionaries(keys, values, max_size=6))
def test_random_config_dicts_are_valid_or_clear_errors(flat):
    try:
        cfg = parse_config(flat)
    except ConfigError as err:
        assert err.key in flat or err.key in SCHEMA, err
        assert str(err.key) in str(err)
        return
    assert isinstance(cfg, RunConfig)
    assert parse_config(to_flat(cfg)) == cfg  # a valid config survives a round trip


def test_defaults_round_trip_and_are_frozen():
    cfg = parse_config({})
    assert parse_config(to_flat(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.privacy.mode = "els"


@pytest.mark.parametrize("flat,key", [
    ({"privacy.sampling-rate": 1.5}, "privacy.sampling-rate"),
    ({"privacy.mode": "xls"}, "privacy.mode"),
    ({"privacy.max-examples-per-user": 0}, "privacy.max-examples-per-user"),
    ({"privacy.samplng-rate": 0.1}, "privacy.samplng-rate"),
    ({"train.rounds": "many"}, "train.rounds"),
    ({"model.name": "/no/such/folder"}, "model.name"),
    ({"model.name": "linear", "model.dim": 0}, "model.dim"),
    ({"model.name": "linear", "data.source": "shakespeare"}, "data.source"),
    ({"privacy.mode": "els", "privacy.accountant": "rdp"}, "privacy.accountant"),
    ({"model.seq-len": 1}, "model.seq-len"),
    ({"model.seq-len": 0}, "model.seq-len"),
])
def test_bad_values_name_the_key(flat, key):
    with pytest.raises(ConfigError) as info:
        parse_config(flat)
    assert info.value.key == key and key in str(info.value)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'privacy.sampling-rate'"):
        parse_config({"privacy.samplng-rate": 0.1})


def test_toml_file_nested_and_dotted(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('seed = 3\n[privacy]\nmode = "els"\n"max-examples-per-user" = 4\n[train]\nrounds = 7\n')
    cfg = parse_config(load_config_file(f))
    assert (cfg.seed, cfg.privacy.mode, cfg.privacy.max_examples_per_user, cfg.train.rounds) == (3, "els", 4, 7)
    with pytest.raises(ConfigError, match="--config"):
        load_config_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(bad)


def test_seq_len_needs_a_next_token_target():
    with pytest.raises(ConfigError, match=r"model.seq-len must be >= 2 \(a row needs a next-token target\), got 1"):
        parse_config({"model.seq-len": "1"})
    assert parse_config({"model.seq-len": 2}).model.seq_len == 2
