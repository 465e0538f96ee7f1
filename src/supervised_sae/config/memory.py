"""The memory a job asks for, from the models it loads, and the refusal of a model too
large for the declared limits before anything runs.

Torch-free: the config check and the Snakefile read it. The LM's size comes from the
weights in its folder (`lm.describe.folder_parameters`) or, for the GPT-2 trained here,
from its shape.
"""

from __future__ import annotations

import math
import os
from typing import Literal

from supervised_sae.config.spec import LmConfig, StudyConfig

JOB_BASE_MB = 2000
"""A job's own needs beside its models: Python, PyTorch, tables, an activation batch."""
BYTES_PER_PARAMETER = {"inference": 4 * 1.25, "training": 16 * 1.25}
"""float32 weights (models load and train in float32), and for training their gradients
and AdamW's two moments; +25% for activations, logits and cached prefixes."""
WORD_VOCAB_BOUND = 8192
"""The word tokenizer's vocabulary at the seed's scale is ~3,000 words; a bound."""
Use = Literal["inference", "training"]


def built_in_parameters(lm: LmConfig) -> int:
    """Parameters of the GPT-2 trained here: embeddings (tied head), 12 d^2 + 13 d per
    block, the final norm."""
    vocab = lm.bpe_vocab_size if lm.tokenizer == "bpe" else WORD_VOCAB_BOUND
    d = lm.n_embd
    return (vocab + lm.n_positions) * d + lm.n_layer * (12 * d * d + 13 * d) + 2 * d


def lm_parameters(lm: LmConfig) -> int:
    """Parameters of the LM the workflow loads (a fine-tuned model keeps its size)."""
    if not lm.pretrained:
        return built_in_parameters(lm)
    from supervised_sae.lm.describe import folder_parameters

    return folder_parameters(lm.pretrained)


def lm_memory_mb(lm: LmConfig, use: Use) -> int:
    """Memory the LM takes in one job: loaded for inference, or trained (the LM rule)."""
    return math.ceil(lm_parameters(lm) * BYTES_PER_PARAMETER[use] / 2**20)


def lm_job_memory_mb(config: StudyConfig, use: Use = "inference", attempt: int = 1) -> int:
    """Host memory of a job whose one model is the LM (extraction, accuracy, probes,
    steering, the LM rule); more on each retry."""
    return attempt * (JOB_BASE_MB + lm_memory_mb(config.lm, use))


def machine_memory_mb() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def memory_problems(config: StudyConfig) -> list[str]:
    """The LM jobs' needs against `devices.max_mem_mb` (default: this machine's memory)
    and `devices.gpu_mem_mb`: a model that cannot fit is refused before any job."""
    lm, devices = config.lm, config.devices
    built_here = not lm.pretrained or lm.finetune
    use: Use = "training" if built_here else "inference"
    try:
        params = lm_parameters(lm)
    except ValueError as err:
        return [f"lm.pretrained={lm.pretrained!r}: {err}"]
    need = lm_job_memory_mb(config, use)
    what = (f"lm.pretrained={lm.pretrained!r}" if lm.pretrained else
            f"the LM built here (lm.n_layer={lm.n_layer}, lm.n_embd={lm.n_embd})")
    size = (f"{what}: {params / 1e6:,.1f}M parameters ({params * 4 / 2**30:.1f} GiB as "
            f"float32) need about {need:,} MB in one job for "
            f"{'training' if use == 'training' else 'inference'}")
    problems = []
    host = devices.max_mem_mb or machine_memory_mb()
    if host is not None and need > host:
        source = ("devices.max_mem_mb" if devices.max_mem_mb else
                  "this machine's memory (set devices.max_mem_mb where jobs run elsewhere)")
        problems.append(f"{size}; {source} is {host:,} MB")
    gpu_need = lm_memory_mb(lm, use)
    if devices.gpu_mem_mb is not None and gpu_need > devices.gpu_mem_mb:
        problems.append(f"{size}, {gpu_need:,} MB of it on the GPU; devices.gpu_mem_mb is "
                        f"{devices.gpu_mem_mb:,} MB")
    return problems
