"""Every config key, written once: its type, default, bounds and docstring.

The JSON schema (`defaults/config.schema.yaml`), the defaults file
(`defaults/config.yaml`, the repository's `config/config.yaml`) and the configuration
reference (`docs/configuration.md`) are generated from these models
(`python -m supervised_sae.config.generate`); a test checks they agree. Pydantic does
the type and range checks; `config.load` says what is wrong in words.

What is measured (`evaluation`, `sweep`) lives in `measure_spec.py`. Torch-free: the
Snakefile imports this module to build the DAG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from supervised_sae.config.measure_spec import (
    EvaluationConfig,
    ReproductionConfig,
    SweepConfig,
)
from supervised_sae.config.types import (
    DeviceIds,
    Fraction,
    LayerList,
    Section,
    UniqueTuple,
)
from supervised_sae.data.templates import RELATIONS
from supervised_sae.registry import (
    ACTIVATION_NORMS,
    DECODER_NORMS,
    ENCODERS,
    SEED_ENCODER,
    SPARSITY,
    VALUE_HEADS,
    encoder_settings,
)
from supervised_sae.runs import COMPONENTS, MODES

# PyTorch's CPU generator (mt19937) keeps the low 32 bits of a seed: larger seeds would
# silently repeat smaller ones; 200 more are left for draws and replicate seeds (seed + d + r,
# draws <= 100, sae_seeds <= 100), and the config check also counts the layer an SAE's init
# adds (seed + d + r + layer, `config.load`)
GENERATOR_SEEDS = 2**32  # seeds PyTorch's CPU generator tells apart
MAX_SEED = GENERATOR_SEEDS - 1 - 200


class DataConfig(Section):
    prompts: str | None = None
    """Your own prompts table (CSV/Parquet: person, relation, prompt, answer[, split,
    template, template_heldout]); null: the built-in synthetic biographies."""
    n_people: int = Field(10000, ge=4, le=10_000_000)
    """Synthetic people."""
    biographies_per_person: int = Field(5, ge=1, le=1000)
    """Permuted biographies per person (knowledge augmentation)."""
    test_fraction: Fraction = 0.5
    """Share of people held out of QA training."""
    validation_fraction: float = Field(0.2, ge=0, lt=1)
    """Share of those held-out people that only choose SAE training epochs (the LM never
    saw their QA, as for test people); never reported. 0: every run keeps its last epoch."""
    heldout_templates: int = Field(2, ge=0, le=4)
    """Question templates per relation used only in evaluation."""
    statement_wordings: bool = False
    """Synthetic prompts only: one more seen wording per relation, a statement ending in
    "which X?" (e.g. "{name} was born in which city?"), so the LM and SAEs see that form
    of question; the held-out wordings stay the same."""
    relations: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], UniqueTuple] = RELATIONS
    """Relation names, in slot order."""


class LmConfig(Section):
    pretrained: str | None = None
    """A local Hugging Face causal-LM folder (e.g. /models/gpt2); null: train the GPT-2
    below."""
    finetune: bool = False
    """With lm.pretrained: fine-tune that model (its own tokenizer and architecture) on
    every biography and the train people's QA for lm.epochs at lm.lr, as the published
    work does, keeping the epoch whose validation people answer best; false: use it as it
    is (it never read these people, so held-out answers measure nothing). The
    pretrained folder is only read."""
    n_layer: int = Field(12, ge=1, le=512)
    """Transformer blocks (GPT-2 small: 12)."""
    n_embd: int = Field(768, ge=8, le=65536)
    """Width of the residual stream."""
    n_head: int = Field(12, ge=1)
    """Attention heads; must divide n_embd."""
    n_positions: int = Field(128, ge=16)
    """Context length in tokens."""
    epochs: int = Field(20, ge=1, le=100_000)
    """LM training (or fine-tuning) epochs."""
    batch_size: int = Field(64, ge=1)
    """Texts per LM training step."""
    lr: float = Field(0.0005, gt=0)
    """Peak learning rate (linear warm-up, cosine decay to 10%)."""
    tokenizer: Literal["word", "bpe"] = "word"
    """The trained LM's tokenizer: `word` (every attribute value one token, a date four)
    or `bpe`, a byte-level BPE like GPT-2's trained on the corpus (values several
    tokens, many sharing their first). Answers are scored whole under either."""
    bpe_vocab_size: int = Field(2000, ge=300, le=1_000_000)
    """Vocabulary size of the `bpe` tokenizer (256 bytes and the merges learnt)."""


class ActivationsConfig(Section):
    batch_size: int = Field(256, ge=1)
    """Prompts per forward pass during extraction."""
    dtype: Literal["float32", "float16"] = "float16"
    """Storage type in the HDF5 file; float16 halves it, training reads float32."""


class SaeConfig(Section):
    n_free: int = Field(100_000, ge=1, le=4_000_000)
    """Free slots; relation slots = number of relations."""
    stage1_epochs: int = Field(50, ge=1, le=100_000)
    """Stage 1: reconstruction only."""
    stage2_epochs: int = Field(100, ge=1, le=100_000)
    """Stage 2: the mode's losses."""
    batch_size: int = Field(64, ge=2)
    """Activations per step."""
    lr: float = Field(0.001, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay (its default)."""
    weights: dict[Literal[COMPONENTS], Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"recon": 1.0, "sparse": 0.001, "align": 1.0, "indep": 0.01,
                                 "ortho": 0.01, "value": 0.5})
    """Loss weights: recon, sparse, align, indep, ortho, value (the seed's)."""
    indep_policy: Literal["skip_above_threshold", "exact"] = "skip_above_threshold"
    """The seed's: no indep loss above indep_threshold free slots; or exact at any width."""
    indep_threshold: int = Field(10000, ge=0)
    """No indep loss above this many free slots under skip_above_threshold."""
    normalize_per_pair: bool = True
    """indep and ortho as means over slot pairs, so a weight means the same at any width
    (false: the seed's sums, which grow as D^2 and R*D: at 2,048 free slots raw ortho
    x 0.01 outweighs align and separate_activation's relation slots die)."""
    decorrelation: Literal["excess", "raw"] = "excess"
    """excess: indep and ortho less their chance level 1/(B-1) per varying pair (the same
    gradient for slots that vary; silencing a slot earns nothing); raw: the seed's sums."""
    value_head: Literal[tuple(VALUE_HEADS)] = "lens"  # type: ignore[valid-type]
    """lens (the LM's own read-out, tuned per relation), gated, or slot_only (the
    published variant)."""
    lens_prior: float = Field(0.01, ge=0)
    """lens head: weight of mean_r ||A_r - I||^2 + ||c_r - b_dec||^2, its distance from the
    LM's own read-out (0.01: best of 0-1 on the quickstart's validation people)."""
    slot_only_hidden: int = Field(256, ge=1)
    """Hidden width of the slot_only head's MLP."""
    decoder_norm: Literal[DECODER_NORMS] = "none"  # type: ignore[valid-type]
    """none (the seed's) or unit: free decoder rows renormalised after each step."""
    encoder: Literal[tuple(ENCODERS)] = SEED_ENCODER  # type: ignore[valid-type]
    """The free slots' encoder: relu (the seed's; sparsity from the L1 term), topk (the k
    largest fire), batchtopk (k x rows per batch while training, one learned threshold
    after), matryoshka (batchtopk whose nested prefixes of the bank each reconstruct) or
    jumprelu (a learned threshold per slot, an L0 penalty). Relation slots are always a
    ReLU outside any budget. Stage 1 trains the sparse code."""
    k: int = Field(64, ge=1)
    """topk, batchtopk and matryoshka: free slots that fire per row (batchtopk and
    matryoshka: on average)."""
    matryoshka_levels: int = Field(3, ge=1, le=16)
    """matryoshka: nested prefixes that reconstruct besides the whole bank, its first
    n_free / 2^l slots for l = 1..levels (3: halves, quarters, eighths)."""
    matryoshka_weight: float = Field(1.0, ge=0)
    """matryoshka: weight of the prefixes' reconstruction losses, summed (1: each prefix
    counts as much as the whole bank's recon term, as in Bussmann et al. 2025)."""
    sparsity: Literal[SPARSITY] = "seed"  # type: ignore[valid-type]
    """relu's L1 term: seed (the mean of z over rows and all slots, as written) or
    per_example (per row, sum_j |z_j| ||W_dec,j|| over free slots; mean over rows: the
    field's convention, whose pull does not vanish with width and cannot be escaped by
    shrinking z and growing W_dec)."""
    sparse_warmup: float = Field(0.0, ge=0, le=1)
    """Fraction of each stage's steps over which the sparsity weight (L1, or JumpReLU's
    L0) ramps linearly from 0 to its value."""
    normalize_activations: Literal[ACTIVATION_NORMS] = "none"  # type: ignore[valid-type]
    """none (the seed's), or mean_norm: train on activations scaled to mean norm
    sqrt(d_model) over train rows, folded back into the saved weights (a saved SAE reads
    and writes raw activations), so settings mean the same at every layer."""
    auxk_weight: float = Field(1 / 32, ge=0)
    """topk and batchtopk: weight of AuxK, the dead slots' reconstruction of the residual
    (Gao et al. 2024); 0 turns it off."""
    auxk_k: int | None = Field(None, ge=1)
    """Dead slots AuxK lets fire per row; null: d_model / 2."""
    dead_rows: int = Field(4096, ge=1)
    """A free slot is dead (for AuxK) when it fired on none of the last this many
    training rows."""
    l0_weight: float = Field(0.1, ge=0)
    """jumprelu: weight of its L0 penalty (or, with target_l0, of (L0 / target - 1)^2)."""
    target_l0: float | None = Field(None, gt=0)
    """jumprelu: the mean free-slot L0 to aim for; null: penalise L0 itself."""
    jumprelu_threshold: float = Field(0.001, gt=0)
    """jumprelu: every free slot's starting threshold."""
    jumprelu_bandwidth: float = Field(0.001, gt=0)
    """jumprelu: width of the straight-through estimator's kernel."""
    eval_every: int = Field(5, ge=1)
    """Epochs between held-out accuracy checks (does not change the result)."""
    checkpoint_every: int = Field(5, ge=1)
    """Epochs between checkpoints (does not change the result)."""
    keep_checkpoints: int = Field(3, ge=1)
    """Checkpoints kept (does not change the result)."""
    bf16: bool = False
    """bf16 autocast (GPU)."""
    compile: bool = False
    """torch.compile the training step."""
    tf32: bool = True
    """TF32 matmuls on CUDA (Ampere and newer)."""

    # Settings that cannot change a trained SAE, so they stay out of its identity.
    BOOKKEEPING: ClassVar[tuple[str, ...]] = ("eval_every", "checkpoint_every",
                                              "keep_checkpoints")

    @classmethod
    def default(cls, **overrides: Any) -> SaeConfig:
        """The defaults with some fields replaced, checked (tests, benchmarks)."""
        base = cls().model_dump()
        weights = {**base["weights"], **overrides.pop("weights", {})}
        return cls.model_validate({**base, **overrides, "weights": weights})

    def encoder_settings(self, name: str | None = None) -> dict[str, Any]:
        """The settings an encoder (this config's, or `name`) is built with (its row of
        `registry.ENCODERS` names the keys)."""
        return encoder_settings(self, name)

    def result_identity(self) -> dict[str, Any]:
        """Every setting that changes the trained tensors."""
        return self.model_dump(exclude=set(self.BOOKKEEPING))


class DevicesConfig(Section):
    ids: DeviceIds = "auto"
    """auto: the GPUs the job sees (CUDA_VISIBLE_DEVICES, else nvidia-smi); cpu; or some
    of those GPUs' ids, e.g. [0, 1, 2]."""
    simulate: bool = False
    """Lock device ids but compute on the CPU (scheduling tests)."""
    lock_dir: str | None = None
    """Folder of the device locks; null: one per machine, under the temp directory."""
    max_mem_mb: int | None = Field(None, ge=100)
    """The most host memory one job may use (e.g. a cluster node's); null: this machine's
    memory. An LM whose jobs need more is refused before any job, with its size."""
    gpu_mem_mb: int | None = Field(None, ge=100)
    """Memory of one GPU; null: not checked. An LM that cannot fit on it (for fine-tuning:
    weights, gradients and AdamW state) is refused before any job."""


class StudyConfig(Section):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    """Every random choice: data, LM, SAE init, batch order. At most 2^32 - 201, so that
    every draw's and replicate's seed (seed + d + r) reaches PyTorch's 32-bit generators
    whole."""
    draws: int = Field(1, ge=1, le=100)
    """Draws of the whole chain: draw d has its own people, LM, activations and SAEs, run
    with seed + d (exactly the study with `--config seed=<seed + d>`), in results/draw{d}/
    (draw 0 in results/). With more than one, every +- on the results page is over draws."""
    sae_seeds: int = Field(1, ge=1, le=100)
    """Replicate SAE seeds per run kind and layer (seed, seed + 1, ...), sharing the data,
    LM and activations of their draw; the summary gives mean, sd and n."""
    results_page: Annotated[str, Field(pattern=r"\.md$")] | None = None
    """A Markdown results page the run writes (figures beside it), e.g. docs/study.md."""
    results_targets: str = "config/targets.yaml"
    """The results page's targets and published numbers (YAML)."""
    data: DataConfig = DataConfig()
    lm: LmConfig = LmConfig()
    activations: ActivationsConfig = ActivationsConfig()
    layers: LayerList = "all"
    """all (every block), or the layers to train SAEs on, e.g. [emb, 0, 6, 11]. Layer L is
    the residual stream after block L; emb is the embedding output (Hugging Face's
    hidden_states[0], the published work's layer 0)."""
    modes: Annotated[tuple[Literal[MODES], ...], UniqueTuple] = MODES  # type: ignore[valid-type]
    """Stage-2 training modes."""
    sae: SaeConfig = SaeConfig()
    devices: DevicesConfig = DevicesConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    sweep: SweepConfig = SweepConfig()
    reproduction: ReproductionConfig = ReproductionConfig()

    @property
    def results_notes(self) -> Path | None:
        """The hand-written reading kept beside the results page (`<stem>_notes.md`)."""
        return results_notes_path(self.results_page) if self.results_page else None


def results_notes_path(page: str | Path) -> Path:
    """`<page stem>_notes.md` beside a results page: the maintainers' reading of it."""
    page = Path(page)
    return page.with_name(f"{page.stem}_notes.md")


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation for name, field in StudyConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)}
