"""The kinds of SAE run, in one table: names, folders, losses, initialisation, labels.

Torch-free on purpose: the Snakefile imports it to build the DAG, and training,
losses, plotting and the scripts all read the same table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from supervised_sae.layers import layer_name, parse_layer
from supervised_sae.registry import (
    BUDGET_KEYS,
    REFERENCE_ENCODER,
    SEED_ENCODER,
    SWEEP_KEYS,
    encoder_spec,
    lookup,
)

COMPONENTS = ("recon", "sparse", "align", "indep", "ortho", "value")


@dataclass(frozen=True)
class RunKind:
    """One kind of SAE training run."""

    name: str
    """What the config (`modes`), the CLI (`--mode`) and the metadata call it."""
    folder: str
    """Its results folder: results/{folder}/layer{L}/."""
    label: str
    """Name in plots and tables."""
    colour: str
    """Matplotlib colour in across-layer plots."""
    components: tuple[str, ...]
    """The loss components it optimises."""
    init_from: str | None
    """The run kind whose finished SAE it starts from (None: a fresh SAE)."""
    seed_offset: int
    """Keeps its batch order apart from the other kinds' under one seed."""
    epochs: tuple[str, ...]
    """The `sae` config keys whose sum is its number of epochs."""
    relation_slots: bool = True
    """Whether the SAE it trains has relation slots in use."""
    is_mode: bool = True
    """A stage-2 mode the config's `modes` list can name."""
    encoder: str | None = None
    """The encoder (`registry.ENCODERS`) this kind always uses; None: the config's
    `sae.encoder`."""
    l0_matched: bool = False
    """When the config's encoder has no k (relu, jumprelu), its k is the mean free-slot
    L0 of a supervised run (`TOPK_REFERENCE`); else it is the config's `sae.k`."""

    @property
    def trains_values_only(self) -> bool:
        """Trains value heads on a frozen SAE (its slots are another run's)."""
        return self.components == ("value",)

    @property
    def has_value_heads(self) -> bool:
        return "value" in self.components


RUN_KINDS: dict[str, RunKind] = {k.name: k for k in (
    RunKind("stage1", "stage1", "stage 1", "0.5", ("recon",), None, 1, ("stage1_epochs",),
            relation_slots=False, is_mode=False),
    RunKind("joint", "joint", "joint", "C0", COMPONENTS, "stage1", 2, ("stage2_epochs",)),
    RunKind("separate_activation", "feature_activation", "separate_activation", "C1",
            ("recon", "sparse", "align", "indep", "ortho"), "stage1", 3, ("stage2_epochs",)),
    RunKind("separate_value", "next_token_prediction", "separate_value", "C2", ("value",),
            "separate_activation", 4, ("stage2_epochs",)),
    # Baseline: the same SAE (the config's encoder) without relation slots, with the
    # budget of both stages.
    RunKind("unsupervised", "unsupervised", "unsupervised SAE", "C3", ("recon", "sparse"),
            None, 5, ("stage1_epochs", "stage2_epochs"), relation_slots=False,
            is_mode=False),
    # The field's standard reference: a TopK SAE at the supervised free bank's k (or, for
    # encoders without one, its free-slot L0).
    RunKind("topk", "topk", "TopK SAE", "C5", ("recon",), None, 6,
            ("stage1_epochs", "stage2_epochs"), relation_slots=False, is_mode=False,
            encoder=REFERENCE_ENCODER, l0_matched=True),
)}
BASELINES = ("unsupervised", "topk")  # SAEs without relation slots, scored after training
# the supervised run whose mean free-slot L0 on train data sets the TopK baseline's k
TOPK_REFERENCE = ("joint", "separate_activation")

MODES = tuple(name for name, kind in RUN_KINDS.items() if kind.is_mode)
KIND_OF_FOLDER = {kind.folder: kind for kind in RUN_KINDS.values()}
# Evaluated runs that learn their own slots (binding, reconstruction, swaps) ...
SLOT_FOLDERS = tuple(k.folder for k in RUN_KINDS.values()
                     if k.name != "stage1" and not k.trains_values_only)
# ... and those with value heads (value accuracy).
VALUE_FOLDERS = tuple(k.folder for k in RUN_KINDS.values() if k.has_value_heads)
# Reference read-outs that appear beside run kinds in summaries and plots.
REFERENCE_LABELS = {"probe": "linear probe", "logit_lens": "logit lens", "lm": "LM (clean)"}
REFERENCE_COLOURS = {"probe": "0.35", "logit_lens": "C4", "lm": "k"}


def run_kind(name: str) -> RunKind:
    """The run kind called `name`, or an error listing the known ones."""
    return lookup(RUN_KINDS, name, "run kind")


def folder_of(name: str) -> str:
    return run_kind(name).folder


def label_of(folder_or_reference: str) -> str:
    """Plot label of a results folder name or a reference ("probe", "lm")."""
    kind = KIND_OF_FOLDER.get(folder_or_reference)
    return kind.label if kind else REFERENCE_LABELS.get(folder_or_reference,
                                                        folder_or_reference)


def colour_of(folder_or_reference: str) -> str:
    kind = KIND_OF_FOLDER.get(folder_or_reference)
    return kind.colour if kind else REFERENCE_COLOURS.get(folder_or_reference, "0.5")


def folders_pattern(names: list[str] | tuple[str, ...]) -> str:
    """A Snakemake wildcard constraint matching exactly these kinds' folders."""
    return "|".join(folder_of(n) for n in names)


def topk_reference(modes: list[str] | tuple[str, ...]) -> str | None:
    """The configured mode whose L0 sets the TopK baseline's k (None: no such mode)."""
    return next((m for m in TOPK_REFERENCE if m in modes), None)


def encoder_of(kind: str, sae_encoder: str) -> str:
    """The encoder a run of `kind` trains, given the config's `sae.encoder`: the
    supervised runs and the unsupervised baseline use the config's (so with relu the
    unsupervised baseline is the seed's ReLU + L1), the TopK baseline TopK."""
    return run_kind(kind).encoder or sae_encoder


def matches_l0(kind: str, sae_encoder: str) -> bool:
    """Whether `kind` takes its k from a supervised run's L0 (the encoder has no k)."""
    return run_kind(kind).l0_matched and encoder_spec(sae_encoder).budget is None


def evaluated_kinds(modes: list[str] | tuple[str, ...], baselines: bool,
                    sae_encoder: str = SEED_ENCODER) -> list[str]:
    """Run kinds that get metrics, curves and an export: the modes, then the baselines
    (TopK needs a mode that trains relation slots to match its L0; with a topk encoder
    the unsupervised baseline is already the TopK SAE at the same k: one run, not two)."""
    if not baselines:
        return list(modes)
    topk = [k.name for k in RUN_KINDS.values() if k.l0_matched
            and k.encoder != sae_encoder
            and (topk_reference(modes) or not matches_l0(k.name, sae_encoder))]
    return [*modes, "unsupervised", *topk]


# Replicate SAE seeds (`sae_seeds`): replicate 0 lives in results/{folder}/layer{L}/ as
# before, replicate r >= 1 in results/{folder}/layer{L}_seed{r}/ and trains with seed
# `seed + r`. Replicates share the data, the LM and the activations.
REPLICATE_PATTERN = r"(_seed[1-9]\d*)?"  # wildcard constraint of {replicate}
LAYER_PATTERN = r"\d+|emb"  # wildcard constraint of {layer}: a block, or the embeddings
_RUN_DIR = re.compile(rf"^layer({LAYER_PATTERN})(?:_seed([1-9]\d*))?$")


def replicate_suffix(replicate: int) -> str:
    """The `{replicate}` part of a run folder's layer directory."""
    return "" if replicate == 0 else f"_seed{replicate}"


def replicate_of(suffix: str) -> int:
    return int(suffix.removeprefix("_seed")) if suffix else 0


# Draws (`draws`): the whole chain again (people, LM, activations, SAEs) with seed
# `seed + d`. Draw 0 lives in results/ as before, draw d >= 1 in results/draw{d}/: the
# `{draw}` wildcard right after results/ is "" or "draw{d}/".
DRAW_PATTERN = r"(draw[1-9]\d*/)?"  # wildcard constraint of {draw}
_DRAW_DIR = re.compile(r"^draw([1-9]\d*)$")


def draw_prefix(draw: int) -> str:
    """The `{draw}` part of a path under results/."""
    return "" if draw == 0 else f"draw{draw}/"


def draw_of(prefix: str) -> int:
    return int(prefix.removeprefix("draw").removesuffix("/")) if prefix else 0


def _folder_under(path: str | Path, above: str, folder: re.Pattern[str]) -> str | None:
    """The value group of the first folder matching `folder` right under one named
    `above` in `path`, else None."""
    parts = Path(path).parts
    return next((match.group(1) for parent, part in zip(parts, parts[1:], strict=False)
                 if parent == above and (match := folder.match(part))), None)


def draw_of_path(path: str | Path) -> int:
    """The draw a file under results/ belongs to: d for results/draw{d}/..., else 0."""
    return int(_folder_under(path, "results", _DRAW_DIR) or 0)


# The L0 sweep (`sweep`): SAE runs again at each value of one `sae` key, in
# results/{draw}sweep/{key}={value}/ (the `{sweep}` wildcard: "" or "sweep/k=8/"), from
# the draw's activations.
# The reproduction row (`reproduction`): the seed's SAE as written (a ReLU free bank and
# the seed's L1 term, the study's other settings) at one layer of the first draw, in
# results/reproduction/: the `{sweep}` wildcard's other value, so its runs, like a sweep
# point's, are the study's rules with other `sae` settings.
REPRODUCTION_PREFIX = "reproduction/"
REPRODUCTION_SAE = {"encoder": SEED_ENCODER, "sparsity": "seed"}
REPRODUCTION_MODES = ("joint",)
_REPRODUCTION_DIR = re.compile(rf"^({REPRODUCTION_PREFIX.rstrip('/')})$")
# wildcard constraint of {sweep}: "", a sweep point's "sweep/k=8/", or "reproduction/"
_SWEEP_KEYS = "|".join(map(re.escape, SWEEP_KEYS))
SWEEP_PATTERN = rf"(sweep/({_SWEEP_KEYS})=\d+(\.\d+)?/|reproduction/)?"
SWEEP_MODES = ("joint",)  # the supervised runs of a sweep, beside its sparse baseline
_SWEEP_DIR = re.compile(rf"^(?:{_SWEEP_KEYS})=(\d+(?:\.\d+)?)$")


def sweep_value_text(value: float) -> str:
    """A swept value as its folder names it: exactly, in plain decimals (8, 0.5, 0.00001;
    never 1e-05, never rounded to six digits)."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def sweep_prefix(key: str, value: float) -> str:
    """The `{sweep}` part of a swept run's path."""
    return f"sweep/{key}={sweep_value_text(value)}/"


def sweep_of(prefix: str) -> tuple[str, float] | None:
    """(key, value) of a `{sweep}` prefix; None for the main study's ("")."""
    key, _, value = prefix.removeprefix("sweep/").removesuffix("/").partition("=")
    return (key, float(value)) if prefix and _SWEEP_DIR.match(f"{key}={value}") else None


def sae_overrides(prefix: str) -> dict[str, float | int | str]:
    """The `sae` settings a `{sweep}` prefix changes: a sweep point's key (k as a whole
    number), the reproduction row's encoder and sparsity; none for the main study's."""
    if prefix == REPRODUCTION_PREFIX:
        return dict(REPRODUCTION_SAE)
    swept = sweep_of(prefix)
    if swept is None:
        return {}
    key, value = swept
    return {key: int(value) if key in BUDGET_KEYS else value}


def is_reproduction_path(path: str | Path) -> bool:
    """Whether a file lies in the reproduction row's tree, results/reproduction/ (it runs
    on the first draw only)."""
    return _folder_under(path, "results", _REPRODUCTION_DIR) is not None


def sweep_of_path(path: str | Path) -> float | None:
    """The swept value of a file under results/[draw{d}/]sweep/{key}={value}/, else None."""
    value = _folder_under(path, "sweep", _SWEEP_DIR)
    return None if value is None else float(value)


def final_file(kind: str, layer: int | str, replicate: str = "", root: str = "") -> str:
    """results/... path of the finished SAE a run of `kind` writes (stage 1's own file);
    `layer` as in paths ("emb", "3") or as a number (-1, 3); `root` its draw and sweep
    prefixes ("", "draw1/", "sweep/k=8/")."""
    run = run_kind(kind)
    name = "sae_stage1.pt" if run.name == "stage1" else "sae_final.pt"
    layer_dir = f"layer{layer_name(parse_layer(layer))}{replicate}"
    return f"results/{root}{run.folder}/{layer_dir}/{name}"


def start_file(kind: str, modes: list[str] | tuple[str, ...], layer: int | str,
               replicate: str = "", sae_encoder: str = SEED_ENCODER, root: str = "") -> str | None:
    """The finished SAE a run of `kind` needs first: its init (stage 1's, or another
    mode's), or for an L0-matched TopK baseline the supervised SAE whose L0 sets k;
    else None. Always from the same draw, sweep value and replicate."""
    run = run_kind(kind)
    if run.init_from:
        return final_file(run.init_from, layer, replicate, root)
    reference = topk_reference(modes) if matches_l0(kind, sae_encoder) else None
    return final_file(reference, layer, replicate, root) if reference else None


def run_location(path: str | Path) -> tuple[str, int, int]:
    """(folder, layer, replicate) of a file in results/{folder}/layer{L}{replicate}/."""
    path = Path(path)
    match = _RUN_DIR.match(path.parent.name)
    if match is None:
        raise ValueError(f"{path}: not inside a run's layer directory "
                         "(results/<run>/layer<L>[_seed<r>]/)")
    return path.parent.parent.name, parse_layer(match.group(1)), int(match.group(2) or 0)
