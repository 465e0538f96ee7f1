"""Shared fixtures: small but real HDF5 activation files, configs and a tiny GPT-2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

# Before torch loads, here and in every process a test starts: two processes of two
# OpenMP threads on two cores spin-wait on each other, ~4x slower each (bench/RESULTS.md,
# "The test suite on two workers"); passive waiting leaves them about as fast as one
# thread each. The suite runs two workers, so that is every workflow test's LM job.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from supervised_sae.data.store_writer import write_activation_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_LM_VOCAB, TINY_LM_WIDTH, TINY_LM_EOS = 40, 16, 0
RELATIONS = ["birth_date", "birth_city", "university", "major", "employer", "employer_city"]


def write_structured_activations(path: Path, n_people: int = 24, d_model: int = 32,
                                 n_layers: int = 2, n_templates: int = 3, seed: int = 0,
                                 validation_people: int = 0, lm_sha256: str | None = None
                                 ) -> Path:
    """An activation file in the workflow's layout whose rows carry a relation direction
    plus a person direction plus noise, so a supervised SAE can learn the relation. The
    second half of the people are held out: the last `validation_people` of them are
    validation people, the rest test people. `lm_sha256`: the LM it claims to come from
    (`lm_hash`), for tests that pair it with one."""
    rng = np.random.default_rng(seed)
    rel_dirs = rng.normal(size=(len(RELATIONS), d_model)) * 3
    person_dirs = rng.normal(size=(n_people, d_model))
    rows = [(p, r, t) for p in range(n_people) for r in range(len(RELATIONS))
            for t in range(n_templates)]
    person = np.array([p for p, _, _ in rows])
    relation = np.array([r for _, r, _ in rows])
    template = np.array([t for _, _, t in rows])
    answer = (person * 7 + relation * 3) % 20
    split = (person >= n_people // 2).astype(np.int8)
    split[person >= n_people - validation_people] = 2
    layers = {layer: (rel_dirs[relation] + person_dirs[person]
                      + 0.1 * rng.normal(size=(len(rows), d_model))).astype(np.float32)
              for layer in range(n_layers)}
    write_activation_file(path, layers, relation=relation, person=person, split=split,
                          template=template, template_heldout=template == n_templates - 1,
                          relation_names=RELATIONS,
                          answer_ids=[[int(a) + 100] for a in answer],
                          answer_texts=[f"tok{a}" for a in answer],
                          model_path="synthetic", prompts_sha256="0",
                          **({"lm_sha256": lm_sha256} if lm_sha256 else {}))
    return path


# The suite runs on pytest-xdist workers (`-n auto --dist loadscope`, pyproject.toml): a
# module is one unit of work, so a module's fixtures (the tiny study) are built once.
# These modules build whole studies (minutes each, most of the suite's time): they start
# first, one per worker, and the quick modules fill in around them (xdist's own order,
# most tests first, is off: it started them last).
STUDY_MODULES = ("test_workflow.py", "test_finetune_workflow.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = {name: rank for rank, name in enumerate(STUDY_MODULES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable


@pytest.fixture
def activations(tmp_path: Path) -> Path:
    return write_structured_activations(tmp_path / "activations.h5")



@pytest.fixture(scope="session")
def seed_dag_dry_run(tmp_path_factory) -> str:
    """stdout and stderr of one dry run of the seed's study (the default config, 12
    layers) as the three-GPU command runs it: several tests read the same DAG."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("seed_dag")
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                          "--directory", str(work), "-n", "--cores", "12", "--resources",
                          "gpu=3"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout + run.stderr


def read_slot_script(path: Path, prefix: str):
    """The JSON a slot browser data file holds: `window.SLOT_DATA = {...};` (prefix
    "window.SLOT_DATA = ") or a part's `SLOT_PART(p, {...});` (prefix "SLOT_PART(p, ")."""
    text = path.read_text()
    end = ");\n" if "(" in prefix else ";\n"
    assert text.startswith(prefix) and text.endswith(end), path
    return json.loads(text.removeprefix(prefix).removesuffix(end))


def one_token_values(token_ids):
    """LayerData's answer fields for answers of one token each (`token_ids` per row):
    value index per row, each value's tokens and its text."""
    import torch

    tokens = torch.as_tensor(token_ids)
    firsts = sorted(set(tokens.tolist()))
    index = {t: k for k, t in enumerate(firsts)}
    return {"answer": torch.tensor([index[t] for t in tokens.tolist()]),
            "answer_token_id": tokens, "value_tokens": [(t,) for t in firsts],
            "answer_values": [f"t{t}" for t in firsts]}


def lm_hash(model_dir: Path) -> str:
    """The identity of the LM in a folder, as extraction records it."""
    from supervised_sae.lm.load import lm_sha256, load_lm

    return lm_sha256(load_lm(model_dir)[0])


def tiny_lm(n_layer: int = 3):
    """A real, randomly initialised GPT-2 of `n_layer` blocks (seed 0), for checks of
    edits against full forward passes."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=TINY_LM_VOCAB, n_positions=32, n_embd=TINY_LM_WIDTH, n_layer=n_layer,
        n_head=2, bos_token_id=TINY_LM_EOS, eos_token_id=TINY_LM_EOS)).eval()
