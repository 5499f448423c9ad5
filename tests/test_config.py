"""The validated configuration and the one preset table."""

import dataclasses
import pickle

import pytest
import torch

import alsals
from alsals.config import PRESET_KEYS, PRESETS, ALSALSConfig, resolve_config
from alsals.search import AmortizationConfig, SearchConfig


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_the_field_defaults_are_the_default_preset():
    assert ALSALSConfig() == resolve_config(None, {}) == resolve_config("default", {})
    assert alsals.ALSALS(params()).config == ALSALSConfig()


def test_the_defaults_are_v0_1_with_the_doubling_interval_rule_the_anytime_average_and_the_gave_up_rule():
    default, v01 = resolve_config(None, {}), resolve_config("v0.1", {})
    differing = {f.name for f in dataclasses.fields(ALSALSConfig)
                 if f.name != "preset" and getattr(default, f.name) != getattr(v01, f.name)}
    assert differing == {"average", "search_interval_rule", "unaccepted_search"}
    assert (default.search_interval_rule, v01.search_interval_rule) == ("doubling", "halving")
    assert (default.unaccepted_search, v01.unaccepted_search) == ("restart", "keep")
    assert (default.interpolate, default.max_increase, default.average) == (False, 1.0, None)
    # the dataclass's own defaults are the "default" preset
    assert ALSALSConfig() == default
    assert v01.average is False
    # the average is kept only when the run's length is unknown
    assert default.averages and not resolve_config(None, {"total_steps": 10}).averages and not v01.averages


def test_every_preset_sets_every_engine_setting_and_is_valid():
    for name, values in PRESETS.items():
        assert set(values) == set(PRESET_KEYS), name
        config = resolve_config(name, {})
        assert config.preset == name
        assert dataclasses.asdict(config)["preset"] == name


def test_the_classes_are_rows_of_the_table():
    sls = alsals.SLS(params(), n_batches_per_epoch=4)
    assert sls.config == resolve_config("sls", {"growth": 2 ** 0.25})
    assert alsals.SaLSa(params()).config == alsals.ALSALS(params(), preset="salsa").config
    assert alsals.ALSALS(params(), preset="sls").config.direction == "gradient"


def test_explicit_keywords_override_the_preset():
    config = alsals.ALSALS(params(), preset="paper", c=0.4, amortized=True).config
    assert (config.c, config.amortized, config.slope_smoothing) == (0.4, True, 0.99)


def test_the_configuration_is_one_frozen_recordable_object():
    opt = alsals.ALSALS(params(), total_steps=100)
    record = dataclasses.asdict(opt.config)
    assert record["total_steps"] == 100 and record["c"] == 0.5
    assert pickle.loads(pickle.dumps(opt.config)) == opt.config
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.config.c = 0.1  # type: ignore[misc]
    assert opt.search_config == opt.config.search
    assert opt.config.amortization == AmortizationConfig(max_interval=20, rule="doubling")
    assert alsals.ALSALS(params(), preset="v0.1").config.amortization == AmortizationConfig(max_interval=20, rule="halving")


@pytest.mark.parametrize(
    "kwargs",
    [dict(c=5.0), dict(c=0.0), dict(smoothing=1.0), dict(growth=0.5), dict(max_backtracks=-1),
     dict(max_step_size=1e-12), dict(growth_per="epoch"), dict(initial_step_size=100.0), dict(ascent_handling=1)],
)
def test_search_config_validates_itself(kwargs):
    with pytest.raises(ValueError):
        SearchConfig(**kwargs)


def test_search_config_has_the_real_defaults():
    assert SearchConfig() == alsals.ALSALS(params()).config.search
    assert (SearchConfig().c, SearchConfig().smoothing) == (0.5, 0.9)


@pytest.mark.parametrize("kwargs", [dict(max_interval=0), dict(rule="tripling"), dict(fast=1.0)])
def test_amortization_config_validates_itself(kwargs):
    with pytest.raises(ValueError):
        AmortizationConfig(**kwargs)


def test_unknown_settings_and_presets_are_refused():
    with pytest.raises(ValueError, match="preset must be one of"):
        alsals.ALSALS(params(), preset="adamw")
    with pytest.raises(TypeError):
        resolve_config(None, {"learning_rate": 1.0})
