"""The results page's targets file (`results_targets`, e.g. config/targets.yaml), with the
config's rigour: known keys only, types and ranges, every target's direction stated.
Checked when the config is (the Snakefile, before any job), and read through here by the
page, so a typo is refused up front instead of dropping a target or turning a ceiling
into a floor at the study's last job.

Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from supervised_sae.config.types import Section
from supervised_sae.runs import KIND_OF_FOLDER

Share = Annotated[float, Field(ge=0, le=1)]

# the modes a summary row can have: every run folder, and the references beside them
MODES = (*KIND_OF_FOLDER, "probe", "logit_lens", "steering", "lm")
SLICES = tuple(f"{people}_{kind}" for people in ("train", "validation", "test")
               for kind in ("seen", "heldout")) + ("swap",)
"""The slices a target reads: people x kind of wording, and the swaps."""


class LmTargets(Section):
    seen_templates: Share
    """The LM's whole-answer accuracy on held-out people, seen wordings, at least."""
    heldout_templates: Share
    """The same on held-out wordings."""


class JointTarget(Section):
    claim: str = Field(min_length=1)
    """How the page states it; `{goal}` is replaced by the goal."""
    report: tuple[str, str]
    """[slice, metric] of the joint SAE reported on held-out people."""
    goal: float
    at_most: bool
    """The direction, always stated: true, a ceiling (met at or below the goal, its layer
    where `choose` is lowest); false, a floor."""
    choose: tuple[str, str, str] | None = None
    """[run folder, slice, metric] on train people that picks the layer."""
    every_layer: bool = False
    """No layer chosen: the worst layer must meet it."""

    @model_validator(mode="after")
    def _layer_rule(self) -> JointTarget:
        if self.every_layer == (self.choose is not None):
            raise ValueError("give `choose` (the layer picked on train people) or "
                             "`every_layer: true`, exactly one")
        if self.choose and self.choose[0] not in MODES:
            raise ValueError(f"choose mode {self.choose[0]!r} is not one of {', '.join(MODES)}")
        for what, slice_ in (("report", self.report[0]),
                             ("choose", self.choose[1] if self.choose else "swap")):
            if slice_ not in SLICES:
                raise ValueError(f"{what} slice {slice_!r} is not one of {', '.join(SLICES)}")
        return self


class Published(Section):
    model: str
    n_blocks: int = Field(ge=1)
    binding_layer: int = Field(ge=0)
    """Its layer index (Hugging Face's hidden_states: 0 is the embedding output)."""
    binding: Share
    early_binding: Share
    swap_success: Share
    swap_alpha: float = Field(gt=0)


class TargetsFile(Section):
    lm: LmTargets
    joint: list[JointTarget]
    published: Published
    beats_topk: bool = False
    beats_diffmean: bool = False
    early_layer_gap: float | None = Field(None, ge=0)


def read_targets(path: str | Path) -> dict[str, Any]:
    """The targets file, checked against `TargetsFile`, as a plain dict; every problem
    at once, each naming its key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"results_targets {path}: cannot read it as YAML: {err}") from err
    try:
        return TargetsFile.model_validate(raw or {}).model_dump()
    except ValidationError as err:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}"
                    for e in err.errors(include_url=False)]
        raise ValueError(f"results_targets {path}: " + "; ".join(problems)) from None
