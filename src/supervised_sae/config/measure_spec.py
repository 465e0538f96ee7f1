"""The config sections of what is measured: evaluation (interventions, probes, the LM's
accuracy), the L0 sweep and the reproduction row. Part of the config spec (`spec.py`), in
its own module."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from supervised_sae.config.types import HeatmapLayer, Section, UniqueTuple
from supervised_sae.registry import SWEEP_KEYS
from supervised_sae.runs import RUN_KINDS

# every evaluated run kind (all but stage 1, which only initialises stage 2)
PROTOCOL_RUNS = tuple(name for name in RUN_KINDS if name != "stage1")


class EvaluationConfig(Section):
    alphas: Annotated[tuple[Annotated[float, Field(gt=0)], ...], UniqueTuple] = (
        0.5, 1, 2, 5, 10)
    """Decoder swap strengths, in units of |h| / |d_B| (h + alpha |h| / |d_B| d_B)."""
    latent_alphas: Annotated[tuple[Annotated[float, Field(gt=0)], ...], UniqueTuple] = (
        0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)
    """Latent swap strengths (slot A to 0, slot B to alpha), in units of slot B's typical
    value on train questions about B. Up to 500: a joint SAE's relation slots write little
    (0.5% of |h| per typical value at the study's block 2), so the edit moves the answer
    only far above the typical value (the published best is 2 in its units); with the
    grid up to 100 the study's sparse joint SAEs chose 100 in 21 of 30 runs."""
    steering_alphas: Annotated[tuple[Annotated[float, Field(gt=0)], ...], UniqueTuple] = (
        0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 5, 10)
    """Strengths of the steering baselines that are not SAEs (DiffMean, h + alpha (mu_B -
    mu_A), and the relation probe's direction at the same length), in units of |mu_B -
    mu_A|: alpha 1 moves relation A's mean activation onto B's. As many points as the
    latent swap's grid, densest near 1, so the baseline is not short of strengths."""
    published_alphas: Annotated[tuple[Annotated[float, Field(gt=0)], ...], UniqueTuple] = (
        0.1, 0.5, 1, 2, 5, 10, 20, 50, 100)
    """The published protocol's strengths: absolute slot values (its align target's "on"
    value is 1), as in AlignSAE's swap evaluation."""
    published_protocol_seeds: int = Field(1, ge=0)
    """The first this many SAE seeds' evaluations run the published protocol (0: none).
    It is a diagnostic beside the published number, not a target, and its generation is
    most of an evaluation job (14 of 23 s at study scale), so by default only seed 0
    runs it and the page shows that seed's number."""
    published_protocol_runs: Annotated[tuple[Literal[PROTOCOL_RUNS], ...],  # type: ignore[valid-type]
                                       UniqueTuple] = PROTOCOL_RUNS
    """The run kinds whose evaluations run it (e.g. [joint]: the published number and its
    walk to the strict one are the joint SAE's; each other kind's costs as much again)."""
    max_new_tokens: int = Field(8, ge=1, le=512)
    """Greedy tokens the published protocol generates at most; it stops at the end of
    text, which ends every answer the LM trained on (the longest, a date, is 4 words).
    The published script allows 100 and keeps the first line."""
    swap_people: int = Field(100, ge=1)
    """People per side (train: choose alpha; held-out: report) whose questions are
    steered, one per relation, to each other relation."""
    lm_prompts_per_slice: int = Field(2000, ge=1)
    """Prompts per slice for the LM's clean and spliced accuracy."""
    rho_rows: int = Field(4096, ge=2)
    """Rows for the exact mean rho^2 (Gram identity)."""
    probe_steps: int = Field(100, ge=1)
    """L-BFGS iterations of the linear probes."""
    heatmap_layer: HeatmapLayer = None
    """Layer of the binding heatmaps; null: the middle layer."""
    unsupervised_baseline: bool = True
    """Train the SAE without relation slots (and the TopK SAE) per layer."""

    # keys that other jobs read (the probes, the figures, the DAG's shape); every other
    # key is the evaluation job's, so a new key reaches its rule with no list to edit
    READ_ELSEWHERE: ClassVar[tuple[str, ...]] = ("probe_steps", "heatmap_layer",
                                                 "unsupervised_baseline", "steering_alphas")

    @classmethod
    def evaluation_job_keys(cls) -> tuple[str, ...]:
        """The dotted keys the evaluation rule passes its job (`params: config=`)."""
        return tuple(f"evaluation.{k}" for k in cls.model_fields if k not in cls.READ_ELSEWHERE)


class SweepConfig(Section):
    """An L0 sweep: the supervised joint SAE and its sparse baseline again at each value
    of one sparsity key, at one layer of the first draw, from the same activations; each
    value's runs in results/sweep/{key}={value}/ (e.g. results/sweep/k=8/joint/layer2/)."""

    key: Literal[SWEEP_KEYS] = SWEEP_KEYS[0]  # type: ignore[valid-type]
    """The swept `sae` key: one an encoder's row of `registry.ENCODERS` names as
    sweepable (k: topk, batchtopk; target_l0: jumprelu)."""
    values: tuple[Annotated[float, Field(gt=0)], ...] = ()
    """Its values, e.g. [8, 16, 32, 64, 128]; empty: no sweep."""
    layer: HeatmapLayer = None
    """The swept layer (e.g. the one where joint binding on train people is best); needed
    with values."""
    sae_seeds: int | None = Field(None, ge=1, le=100)
    """SAE seeds of each swept value, and of the main study's own value at the swept layer
    of the first draw (its seeds beyond the study's `sae_seeds` run there too): the
    spread its fronts and its ahead-by-2-sd target are judged on; null: the study's
    `sae_seeds`."""


class ReproductionConfig(Section):
    """The seed's SAE as written, beside a study on another encoder: stage 1 and joint
    again with the seed's ReLU free bank and L1 term (`sae.encoder` relu, `sae.sparsity`
    seed; every other setting the study's) at one layer of the first draw, from the same
    activations, in results/reproduction/ (e.g. results/reproduction/joint/layer2/)."""

    layer: HeatmapLayer = None
    """Its layer (e.g. the one where joint binding on train people is best); null: no
    reproduction row."""
