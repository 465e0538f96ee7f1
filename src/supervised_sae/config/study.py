"""The study's configuration: checked once, then a frozen, typed object.

The defaults live in one place, the package's `defaults/config.yaml` (the repository's
`config/config.yaml` is a link to it); the JSON schema beside it gives types and
ranges. `check_config` adds the rules a schema cannot say and messages a user can act
on; `StudyConfig.from_dict` turns the checked dict into dataclasses, one per section.

Torch-free: the Snakefile imports this module to build the DAG.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from supervised_sae.data.biographies import RELATIONS
from supervised_sae.layers import EMBEDDINGS_NAME, parse_layer


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what was expected."""


def _package_file(name: str) -> Path:
    return Path(str(resources.files("supervised_sae.config") / "defaults" / name))


DEFAULT_CONFIG = _package_file("config.yaml")
SCHEMA = _package_file("config.schema.yaml")


# --- sections ------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    prompts: str | None
    """The user's own prompts table (CSV/Parquet); None: built-in synthetic biographies."""
    n_people: int
    """Synthetic people."""
    biographies_per_person: int
    """Permuted biographies per person (knowledge augmentation)."""
    test_fraction: float
    """Share of people held out of QA training."""
    validation_fraction: float
    """Share of those held-out people that only choose SAE epochs (never reported)."""
    heldout_templates: int
    """Question templates per relation used only in evaluation."""
    relations: tuple[str, ...]
    """Relation names, in slot order."""


@dataclass(frozen=True)
class LmConfig:
    pretrained: str | None
    """A local Hugging Face model folder; None: train the GPT-2 below."""
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    epochs: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class ActivationsConfig:
    batch_size: int
    """Prompts per forward pass during extraction."""
    dtype: str
    """Storage type in the HDF5 file (float16 or float32)."""


@dataclass(frozen=True)
class SaeConfig:
    n_free: int
    """Free slots; relation slots = number of relations."""
    stage1_epochs: int
    stage2_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    weights: dict[str, float]
    """Loss weights: recon, sparse, align, indep, ortho, value."""
    indep_policy: str
    """skip_above_threshold (the seed's) or exact."""
    indep_threshold: int
    """No indep loss above this many free slots under skip_above_threshold."""
    normalize_per_pair: bool
    """Divide indep and ortho by their number of slot pairs."""
    decorrelation: str
    """excess (default): indep and ortho less their chance level over the batch, so a
    silent slot earns nothing; raw: the seed's literal sums."""
    value_head: str
    """lens, gated or slot_only."""
    lens_prior: float
    """Weight of the `lens` head's distance from the LM's own read-out (A_r = I,
    c_r = b_dec), added to the loss of runs that train value heads."""
    slot_only_hidden: int
    decoder_norm: str
    """none or unit (free decoder rows renormalised after each step)."""
    eval_every: int
    """Epochs between held-out accuracy checks (does not change the result)."""
    checkpoint_every: int
    """Epochs between checkpoints (does not change the result)."""
    keep_checkpoints: int
    """Checkpoints kept (does not change the result)."""
    bf16: bool
    compile: bool
    tf32: bool

    # Settings that cannot change a trained SAE, so they stay out of its identity.
    BOOKKEEPING = ("eval_every", "checkpoint_every", "keep_checkpoints")

    @classmethod
    def default(cls, **overrides: Any) -> SaeConfig:
        """The package's defaults with some fields replaced (tests, benchmarks)."""
        base = cls(**_default_dict()["sae"])
        weights = {**base.weights, **overrides.pop("weights", {})}
        return dataclasses.replace(base, weights=weights, **overrides)

    def result_identity(self) -> dict[str, Any]:
        """Every setting that changes the trained tensors."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.BOOKKEEPING}


@dataclass(frozen=True)
class DevicesConfig:
    ids: str | tuple[int | str, ...]
    """auto (the GPUs a job sees), cpu, or some of those GPUs' ids."""
    simulate: bool
    """Lock device ids but compute on the CPU (scheduling tests)."""
    lock_dir: str | None
    """Folder of the device locks; None: one per machine, under the temp directory."""


@dataclass(frozen=True)
class EvaluationConfig:
    alphas: tuple[float, ...]
    """Swap steering strengths."""
    swap_people: int
    lm_prompts_per_slice: int
    rho_rows: int
    probe_steps: int
    heatmap_layer: int | str | None
    unsupervised_baseline: bool


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


SECTIONS = {"data": DataConfig, "lm": LmConfig, "activations": ActivationsConfig,
            "sae": SaeConfig, "devices": DevicesConfig, "evaluation": EvaluationConfig}


def results_notes_path(page: str | Path) -> Path:
    """`<page stem>_notes.md` beside a results page: the maintainers' reading of it."""
    page = Path(page)
    return page.with_name(f"{page.stem}_notes.md")


@dataclass(frozen=True)
class StudyConfig:
    seed: int
    """Every random choice: data, LM, SAE init, batch order."""
    sae_seeds: int
    """Replicate SAEs per run kind and layer; replicate r trains with seed + r."""
    data: DataConfig
    lm: LmConfig
    activations: ActivationsConfig
    layers: str | tuple[int | str, ...]
    """all (every block), or the layers to train SAEs on; "emb" is the embedding output."""
    modes: tuple[str, ...]
    sae: SaeConfig
    devices: DevicesConfig
    evaluation: EvaluationConfig
    results_page: str | None
    """A Markdown results page the run writes (figures beside it), or None."""

    @property
    def results_notes(self) -> Path | None:
        """The hand-written reading kept beside the results page (`<stem>_notes.md`)."""
        return results_notes_path(self.results_page) if self.results_page else None

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> StudyConfig:
        """From a checked config dict; a missing section or key is `NotPassed`."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in config:
                values[field.name] = NotPassed(field.name)
            elif field.name in SECTIONS:
                values[field.name] = _section(field.name, config[field.name])
            else:
                values[field.name] = _frozen(config[field.name])
        return cls(**values)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _section(name: str, values: dict[str, Any]) -> Any:
    """One section's dataclass; keys a rule did not pass are `NotPassed`."""
    kind = SECTIONS[name]
    return kind(**{f.name: (dict(values[f.name]) if f.name == "weights"
                            else _frozen(values[f.name])) if f.name in values
                   else NotPassed(f"{name}.{f.name}") for f in dataclasses.fields(kind)})


def _default_dict() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


# --- loading and checking --------------------------------------------------------------


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


def load_config(paths: list[str | Path]) -> StudyConfig:
    """The package defaults, then each file over them; checked."""
    config = _default_dict()
    for path in paths:
        merge(config, read_config_file(path))
    check_config(config)
    return StudyConfig.from_dict(config)


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


def _in_words(error: Any) -> str:
    """What is wrong with a value, as a sentence (not a schema dump)."""
    value, rule = error.instance, error.validator_value
    if error.validator == "uniqueItems":
        seen, twice = set(), []
        for item in value:
            if item in seen and item not in twice:
                twice.append(item)
            seen.add(item)
        return f"lists {', '.join(map(repr, twice))} more than once; each may appear once"
    if error.validator == "minItems":
        return "is empty; give at least one" if not value else f"needs at least {rule} items"
    if error.validator in ("enum", "const"):
        allowed = rule if error.validator == "enum" else [rule]
        return f"expected one of {allowed}"
    return error.message


def _alternatives(branches: list[dict[str, Any]]) -> str:
    """The choices of a oneOf in words: "'all' or a list", "an integer >= 0 or 'emb'"."""
    words: list[str] = []
    for branch in branches:
        if "const" in branch or "enum" in branch:
            words += [repr(v) for v in branch.get("enum", [branch.get("const")])]
        elif branch.get("type") == "array":
            words.append("a list")
        elif branch.get("type") in ("integer", "number"):
            low = f" >= {branch['minimum']}" if "minimum" in branch else ""
            words.append(f"{'an integer' if branch['type'] == 'integer' else 'a number'}{low}")
        elif branch.get("type") == "null":
            words.append("null")
        # a string with a pattern is another spelling of a listed choice: not repeated
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator in ("oneOf", "anyOf") and error.context:
        if isinstance(error.instance, list):
            # the list alternative says what is wrong: with the list, or with an item
            inside = [e for e in error.context if e.relative_path]
            if inside:
                return _describe(inside[0])
            fitting = [e for e in error.context if e.schema.get("type") == "array"]
            if fitting:
                return f"config key {where!r} = {error.instance!r}: {_in_words(fitting[0])}"
        alternatives = _alternatives(error.validator_value)
        if alternatives:
            return f"config key {where!r} = {error.instance!r}: expected {alternatives}"
    return f"config key {where!r} = {error.instance!r}: {_in_words(error)}"


def check_config(config: dict[str, Any], schema_path: str | Path = SCHEMA) -> None:
    """Unknown keys (with the nearest known one), types and ranges from the JSON schema,
    and the cross-key rules the schema cannot say."""
    import jsonschema

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
        if not data.get("prompts"):
            n_held = round(data["n_people"] * data["test_fraction"])
            n_test = n_held - round(n_held * data.get("validation_fraction", 0.0))
            if not 0 < n_held < data["n_people"] or n_test == 0:
                side = "no training" if n_held == data["n_people"] else "no held-out (test)"
                problems.append(f"data.n_people={data['n_people']} with data.test_fraction="
                                f"{data['test_fraction']} and data.validation_fraction="
                                f"{data.get('validation_fraction', 0.0)} leaves {side} people; "
                                "both sides of the split need people")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


# --- what the config implies -----------------------------------------------------------


def model_depth(lm: LmConfig) -> int:
    """Number of transformer blocks of the LM the workflow will use."""
    if not lm.pretrained:
        return int(lm.n_layer)
    from supervised_sae.lm.family import UnsupportedModelError, folder_depth

    try:
        return folder_depth(lm.pretrained)
    except UnsupportedModelError as err:
        raise ConfigError(f"lm.pretrained={lm.pretrained!r}: {err}") from err


def selected_layers(config: StudyConfig) -> list[int]:
    """The config's `layers` as numbers (-1: the embedding output), checked against the
    model's depth."""
    depth = model_depth(config.lm)
    if config.layers == "all":
        return list(range(depth))
    layers = [parse_layer(x) for x in config.layers]
    bad = [x for x, layer in zip(config.layers, layers, strict=True) if layer >= depth]
    if bad:
        raise ConfigError(f"config layers {bad} are outside the model's depth: it has "
                          f"layers 0..{depth - 1} (and {EMBEDDINGS_NAME!r}, the embeddings)")
    return layers


def sections(config: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The parts of a config dict a rule passes as `params: config=`: whole sections
    ("sae") or single keys ("evaluation.probe_steps"), nested as in the config."""
    picked: dict[str, Any] = {}
    for key in keys:
        section, _, name = key.partition(".")
        if name:
            picked.setdefault(section, {})[name] = config[section][name]
        else:
            picked[section] = config[section]
    return picked
