"""Check a workflow config before any work starts, with messages a user can act on."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .biographies import RELATIONS


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what was expected."""


def _unknown_keys(config: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    problems = []
    if not isinstance(config, dict) or "properties" not in schema:
        return problems
    known = schema["properties"]
    for key, value in config.items():
        where = f"{path}.{key}" if path else key
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {path + '.' if path else ''}{close[0]}?" if close else (
                f"; known keys here: {', '.join(sorted(known))}")
            problems.append(f"unknown config key {where!r}{hint}")
        else:
            problems += _unknown_keys(value, known[key], where)
    return problems


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    expected = {k: v for k, v in error.schema.items() if k not in ("description",)} \
        if isinstance(error.schema, dict) else error.schema
    return f"config key {where!r} = {error.instance!r}: {error.message} (expected {expected})"


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Unknown keys (with the nearest known one), types and ranges from the JSON schema,
    and the cross-key rules the schema cannot say."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    problems = _unknown_keys(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        if error.validator == "additionalProperties":
            continue  # reported above, with a suggestion
        problems.append(_describe(error))
    if not problems:
        lm, data = config["lm"], config["data"]
        if not lm.get("pretrained") and lm["n_embd"] % lm["n_head"]:
            problems.append(f"lm.n_embd={lm['n_embd']} must be divisible by "
                            f"lm.n_head={lm['n_head']}")
        if not data.get("prompts") and tuple(data["relations"]) != RELATIONS:
            problems.append(f"data.relations={data['relations']}: the built-in biographies "
                            f"have exactly the relations {list(RELATIONS)} (in this order); "
                            "other relations need your own data.prompts")
        if lm.get("pretrained") and not Path(lm["pretrained"]).is_dir():
            problems.append(f"lm.pretrained={lm['pretrained']!r}: no such folder; expected a "
                            "local Hugging Face model folder (save_pretrained)")
        if data.get("prompts") and not Path(data["prompts"]).is_file():
            problems.append(f"data.prompts={data['prompts']!r}: no such file")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
