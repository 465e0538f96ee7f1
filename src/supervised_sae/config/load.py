"""Reading and checking a config: the spec's types and ranges (pydantic), said in words,
plus the rules across keys that a type cannot say; and a job's partial config.

Torch-free: the Snakefile checks its config through this module.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from supervised_sae.config.spec import GENERATOR_SEEDS, RELATIONS, SECTIONS, StudyConfig
from supervised_sae.data.templates import MIN_PEOPLE_PER_SIDE
from supervised_sae.registry import BUDGET_KEYS, encoder_spec, sweepable_by
from supervised_sae.runs import REPRODUCTION_SAE, sweep_value_text


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what was expected."""


def default_dict() -> dict[str, Any]:
    """The defaults as plain data (what `defaults/config.yaml` holds)."""
    return StudyConfig().model_dump(mode="json")


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Nested update in place, key by key (like Snakemake's --configfile)."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def read_config_file(path: str | Path) -> dict[str, Any]:
    """One YAML config file as a dict; a syntax error or a non-mapping names the file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values; "
                          f"found a {type(loaded).__name__}")
    return loaded


def load_config(paths: list[str | Path] | str | Path) -> StudyConfig:
    """The defaults, then each file over them (one path, or a list); checked."""
    if isinstance(paths, str | Path):  # a bare string would be read as its characters
        paths = [paths]
    config = default_dict()
    for path in paths:
        merge(config, read_config_file(path))
    return check_config(config)


def _known_keys(location: tuple[Any, ...]) -> list[str]:
    """The key names a model accepts at `location` (a path of field names)."""
    model: Any = StudyConfig
    for part in location:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        prefix = ".".join(str(p) for p in loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = (f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close
                else f"; known keys here: {', '.join(sorted(known))}")
        return f"unknown config key {where!r}{hint}"
    if kind == "missing":
        return f"config key {where!r} is missing"
    if kind == "literal_error":
        words = f"expected one of {error['ctx']['expected']}"
    elif kind == "value_error":
        words = str(error["ctx"]["error"])
    else:
        words = error["msg"]
    return f"config key {where!r} = {error['input']!r}: {words}"


def _sweep_problems(study: StudyConfig) -> list[str]:
    sweep, sae = study.sweep, study.sae
    if not sweep.values:
        return []
    encoders = sweepable_by(sweep.key)
    problems = []
    if sae.encoder not in encoders:
        problems.append(f"sweep.key={sweep.key} with sae.encoder={sae.encoder}: the sweep "
                        f"sets sae.{sweep.key}, which only {' and '.join(encoders)} read")
    if sweep.layer is None:
        problems.append("sweep.values is set but sweep.layer is not: name the swept layer")
    folders = [sweep_value_text(v) for v in sweep.values]
    twice = sorted({f for f in folders if folders.count(f) > 1})
    if twice:  # one folder, one metrics.json, read as two seeds' spread
        problems.append(f"sweep.values={list(sweep.values)}: {', '.join(twice)} given more "
                        f"than once (one folder, results/sweep/{sweep.key}={twice[0]}/); give "
                        "each value once")
    if sweep.key in BUDGET_KEYS and any(v != int(v) or v > sae.n_free for v in sweep.values):
        problems.append(f"sweep.values={list(sweep.values)}: {sweep.key} must be whole "
                        f"numbers at most sae.n_free ({sae.n_free})")
    return problems


def _seed_problems(study: StudyConfig) -> list[str]:
    """The largest seed any job uses, seed + draw + replicate + layer (an SAE's init), must
    stay below 2^32: PyTorch's CPU generator keeps the low 32 bits, so a larger one
    silently repeats a small seed's tensors."""
    from supervised_sae.lm.family import folder_depth

    depth = folder_depth(study.lm.pretrained) if study.lm.pretrained else study.lm.n_layer
    replicates = max(study.sae_seeds, study.sweep.sae_seeds or 0)
    offset = (study.draws - 1) + (replicates - 1) + (depth - 1)
    if study.seed + offset < GENERATOR_SEEDS:
        return []
    return [f"seed={study.seed}: with draws={study.draws}, {replicates} SAE seeds and "
            f"{depth} blocks, the last SAE starts from seed {study.seed} + {offset} = "
            f"{study.seed + offset}, past PyTorch's 2^32 seeds, where it would repeat seed "
            f"{(study.seed + offset) % GENERATOR_SEEDS}; use seed <= "
            f"{GENERATOR_SEEDS - 1 - offset}"]


def _cross_key_problems(study: StudyConfig) -> list[str]:
    lm, data = study.lm, study.data
    problems = []
    if not lm.pretrained and lm.n_embd % lm.n_head:
        problems.append(f"lm.n_embd={lm.n_embd} must be divisible by lm.n_head={lm.n_head}")
    if not data.prompts and tuple(data.relations) != RELATIONS:
        problems.append(f"data.relations={list(data.relations)}: the built-in biographies have "
                        f"exactly the relations {list(RELATIONS)} (in this order); other "
                        "relations need your own data.prompts")
    if lm.finetune and not lm.pretrained:
        problems.append("lm.finetune is true but lm.pretrained is not set: name the local "
                        "model folder to fine-tune")
    if lm.pretrained and not Path(lm.pretrained).is_dir():
        problems.append(f"lm.pretrained={lm.pretrained!r}: no such folder; expected a local "
                        "Hugging Face model folder (save_pretrained)")
    elif lm.pretrained:  # a family this package cannot read is refused now, by name
        from supervised_sae.lm.family import UnsupportedModelError, folder_depth

        try:
            folder_depth(lm.pretrained)
        except UnsupportedModelError as err:
            problems.append(f"lm.pretrained={lm.pretrained!r}: {err}")
    if not problems:  # a model that cannot fit is refused before any job, with its size
        from supervised_sae.config.memory import memory_problems

        problems += memory_problems(study) + _seed_problems(study)
    sae = study.sae
    budget = encoder_spec(sae.encoder).budget
    if budget and getattr(sae, budget) > sae.n_free:
        problems.append(f"sae.{budget}={getattr(sae, budget)} with sae.encoder={sae.encoder}: "
                        f"that many free slots fire per row, so it must be at most "
                        f"sae.n_free ({sae.n_free})")
    problems += _sweep_problems(study)
    if study.reproduction.layer is not None and all(
            getattr(sae, key) == value for key, value in REPRODUCTION_SAE.items()):
        problems.append(f"reproduction.layer={study.reproduction.layer} with sae.encoder="
                        f"{sae.encoder} and sae.sparsity={sae.sparsity}: the study's SAEs "
                        "already are the seed's, so there is nothing to reproduce beside "
                        "them; set reproduction.layer to null")
    if data.prompts and not Path(data.prompts).is_file():
        problems.append(f"data.prompts={data.prompts!r}: no such file")
    if not data.prompts:
        # the same minimums as a user's table: MIN_PEOPLE_PER_SIDE train and test people,
        # and validation people (when asked for) to choose epochs on
        n_held = round(data.n_people * data.test_fraction)
        n_validation = round(n_held * data.validation_fraction)
        sides = {"train": data.n_people - n_held, "test": n_held - n_validation}
        short = [f"{n} {side}" for side, n in sides.items() if n < MIN_PEOPLE_PER_SIDE]
        if data.validation_fraction > 0 and n_validation == 0:
            short.append("0 validation")
        if short:
            problems.append(f"data.n_people={data.n_people} with data.test_fraction="
                            f"{data.test_fraction} and data.validation_fraction="
                            f"{data.validation_fraction} leaves {', '.join(short)} people; "
                            f"train and test need at least {MIN_PEOPLE_PER_SIDE} each, and "
                            "validation at least 1 when validation_fraction > 0")
    return problems


def check_config(config: dict[str, Any]) -> StudyConfig:
    """Unknown keys (with the nearest known one), types and ranges, and the cross-key
    rules; every problem at once, each naming its key. Returns the typed config."""
    # every section must be there (the defaults file has them all): one that is missing
    # is a broken config file, not a wish for defaults
    problems = [f"config key {name!r} is missing: the {name} section"
                for name in SECTIONS if name not in config]
    try:
        study = StudyConfig.model_validate(config)
    except ValidationError as err:
        problems += [_describe(e) for e in err.errors(include_url=False)]
    else:
        problems += [] if problems else _cross_key_problems(study)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return study


class NotPassed:
    """A config section a workflow job was not given (not in its rule's params), so it
    must not read it: reading it is a bug in the rule, and says so."""

    def __init__(self, name: str):
        self._name = name

    def _refuse(self, *_args: Any) -> Any:
        raise ConfigError(f"config {self._name!r} is not among this rule's params.config, "
                          "so the job cannot read it; add it to the rule (a params change "
                          "is what makes Snakemake rerun the job)")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self._refuse()

    # used as a number, a flag or a sequence, it refuses too
    __bool__ = __int__ = __float__ = __index__ = __iter__ = __len__ = _refuse
    __add__ = __radd__ = __mul__ = __rmul__ = __sub__ = __truediv__ = _refuse

    def __repr__(self) -> str:
        return f"<config {self._name!r} not passed to this job>"


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _partial(model: type[BaseModel], values: dict[str, Any], name: str) -> Any:
    """A section built from the keys a rule passed (checked when the DAG was built);
    the others are `NotPassed`."""
    fields = {f: (dict(values[f]) if isinstance(values[f], dict) else _frozen(values[f]))
              if f in values else NotPassed(f"{name}.{f}" if name else f)
              for f in model.model_fields}
    return model.model_construct(**fields)


def from_rule_params(config: dict[str, Any]) -> StudyConfig:
    """A job's config from the (already checked) sections its rule passed; a missing
    section or key is `NotPassed`."""
    values: dict[str, Any] = {}
    for field in StudyConfig.model_fields:
        if field not in config:
            values[field] = NotPassed(field)
        elif field in SECTIONS:
            values[field] = _partial(SECTIONS[field], config[field], field)
        else:
            values[field] = _frozen(config[field])
    return StudyConfig.model_construct(**values)
