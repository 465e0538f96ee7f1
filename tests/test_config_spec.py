"""The config spec is the one source: the defaults file, the JSON schema and the
configuration reference are generated from it and agree with it."""

from __future__ import annotations

import jsonschema
import pytest
import yaml
from conftest import REPO

from supervised_sae.config import ConfigError, SaeConfig, StudyConfig, check_config
from supervised_sae.config.generate import OUTPUTS, main
from supervised_sae.config.load import default_dict


@pytest.mark.parametrize("path", sorted(OUTPUTS), ids=lambda p: p.name)
def test_generated_file_is_up_to_date(path):
    assert path.read_text() == OUTPUTS[path](), (
        f"{path} is out of date: run python -m supervised_sae.config.generate")


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "config.yaml"
    stale.write_text("seed: 1\n")
    monkeypatch.setitem(OUTPUTS, stale, OUTPUTS[next(iter(OUTPUTS))])
    assert main(["--check"]) == 1
    assert str(stale) in capsys.readouterr().err


def test_defaults_file_is_the_spec_defaults_and_passes_the_schema():
    shipped = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert shipped == default_dict()
    check_config(shipped)
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(shipped)


def test_schema_refuses_what_the_check_refuses():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    bad = default_dict()
    bad["sae"]["n_free"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)
    with pytest.raises(ConfigError, match="'sae.n_free' = 0"):
        check_config(bad)


def test_every_key_is_documented_in_the_reference():
    text = (REPO / "docs/configuration.md").read_text()
    for name, field in StudyConfig.model_fields.items():
        sub = field.annotation
        keys = ([f"{name}.{k}" for k in sub.model_fields] if hasattr(sub, "model_fields")
                else [name])
        for key in keys:
            assert f"| `{key}` |" in text, key


@pytest.mark.parametrize("key,value", [("sae.lr", float("nan")), ("sae.lens_prior",
                                       float("inf")), ("data.test_fraction", float("nan"))])
def test_non_finite_floats_are_refused_by_key(key, value):
    config = default_dict()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=f"'{key}' = {value!r}"):
        check_config(config)


def test_default_overrides_are_checked():
    assert SaeConfig.default(n_free=8).n_free == 8
    with pytest.raises(ValueError, match="n_free"):
        SaeConfig.default(n_free=0)
