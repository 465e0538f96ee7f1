"""Generate the files derived from the config spec: the defaults file, the JSON schema
and the configuration reference. `python -m supervised_sae.config.generate` rewrites
them; `--check` fails (exit 1, naming the file) when one is out of date."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from supervised_sae.config.spec import StudyConfig

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parents[2]
DEFAULTS_FILE = PACKAGE / "defaults" / "config.yaml"
SCHEMA_FILE = PACKAGE / "defaults" / "config.schema.yaml"
REFERENCE_FILE = REPO / "docs" / "configuration.md"
GENERATED = ("generated from src/supervised_sae/config/spec.py by\n"
             "`python -m supervised_sae.config.generate`; do not edit")


def _value(value: Any) -> str:
    """A value in YAML flow style, on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    flat = " ".join(text.split())
    return [f"{indent}# {line}" for line in textwrap.wrap(flat, 88 - len(indent))]


def _yaml_lines(model: type[BaseModel], values: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        lines += _comment(field.description, indent)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            lines += [f"{indent}{name}:", *_yaml_lines(sub, values[name], indent + "  "), ""]
        else:
            lines.append(f"{indent}{name}: {_value(values[name])}")
    return lines


def defaults_yaml() -> str:
    header = ["# The seed's full-scale study: every key and its default. Override any key",
              "# with --configfile or --config.",
              *(f"# {line}" for line in GENERATED.splitlines()), ""]
    values = StudyConfig().model_dump(mode="json")
    return "\n".join(header + _yaml_lines(StudyConfig, values)).rstrip() + "\n"


def schema_yaml() -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$comment": " ".join(GENERATED.split()), **StudyConfig.model_json_schema()}
    return yaml.safe_dump(schema, sort_keys=False, allow_unicode=True, width=100)


def _bounds(meta: list[Any]) -> str:
    words = []
    for m in meta:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                words.append(f"{sign} {getattr(m, attr)}")
    return ", ".join(words)


def reference_markdown() -> str:
    lines = ["# Configuration reference", "", f"<!-- {' '.join(GENERATED.split())} -->", "",
             "Every key of the workflow's config with its default and bounds. The defaults "
             "file is [`config/config.yaml`](../config/config.yaml) (the seed's numbers); "
             "the smaller studies override some keys "
             "([`config/quickstart.yaml`](../config/quickstart.yaml), "
             "[`config/study.yaml`](../config/study.yaml)). A value that breaks a rule is "
             "refused before any job runs, with the key named.", ""]
    values = StudyConfig().model_dump(mode="json")

    def row(key: str, value: Any, field: Any) -> str:
        meaning = " ".join((field.description or "").split())
        return f"| `{key}` | `{_value(value)}` | {_bounds(field.metadata)} | {meaning} |"

    head = ["| key | default | bounds | meaning |", "|---|---|---|---|"]
    sections, top = [], ["## Top-level keys", "", *head]
    for name, field in StudyConfig.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            sections += [f"## `{name}`", "", *head,
                         *(row(f"{name}.{key}", values[name][key], f)
                           for key, f in sub.model_fields.items()), ""]
        else:
            top.append(row(name, values[name], field))
    return "\n".join([*lines, *top, "", *sections]).rstrip() + "\n"


OUTPUTS = {DEFAULTS_FILE: defaults_yaml, SCHEMA_FILE: schema_yaml,
           REFERENCE_FILE: reference_markdown}


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for path, make in OUTPUTS.items():
        text = make()
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python -m supervised_sae.config.generate): "
              + json.dumps(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
