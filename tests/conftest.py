"""Shared fixtures: small but real HDF5 activation files and configs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RELATIONS = ["birth_date", "birth_city", "university", "major", "employer", "employer_city"]


def write_structured_activations(path: Path, n_people: int = 24, d_model: int = 32,
                                 n_layers: int = 2, n_templates: int = 3, seed: int = 0,
                                 validation_people: int = 0) -> Path:
    """An activation file in the workflow's layout whose rows carry a relation direction
    plus a person direction plus noise, so a supervised SAE can learn the relation. The
    second half of the people are held out: the last `validation_people` of them are
    validation people, the rest test people."""
    rng = np.random.default_rng(seed)
    rel_dirs = rng.normal(size=(len(RELATIONS), d_model)) * 3
    person_dirs = rng.normal(size=(n_people, d_model))
    rows = [(p, r, t) for p in range(n_people) for r in range(len(RELATIONS))
            for t in range(n_templates)]
    person = np.array([p for p, _, _ in rows])
    relation = np.array([r for _, r, _ in rows])
    template = np.array([t for _, _, t in rows])
    answer = (person * 7 + relation * 3) % 20
    with h5py.File(path, "w") as f:
        for layer in range(n_layers):
            x = rel_dirs[relation] + person_dirs[person] + 0.1 * rng.normal(size=(len(rows),
                                                                               d_model))
            f[f"layers/{layer}"] = x.astype(np.float32)
        f["relation"] = relation
        f["answer"] = answer
        f["answer_token_id"] = answer + 100
        f["person"] = person
        split = (person >= n_people // 2).astype(np.int8)
        split[person >= n_people - validation_people] = 2
        f["split"] = split
        f["template"] = template
        f["template_heldout"] = template == n_templates - 1
        f.create_dataset("relation_names", data=RELATIONS, dtype=h5py.string_dtype())
        f.create_dataset("answer_tokens", data=[f"tok{k}" for k in range(20)],
                         dtype=h5py.string_dtype())
        f.attrs.update(d_model=d_model, n_layers=n_layers, model_path="synthetic",
                       dtype="float32", package_version="test", prompts_sha256="0",
                       n_prompts=len(rows))
    return path


@pytest.fixture
def activations(tmp_path: Path) -> Path:
    return write_structured_activations(tmp_path / "activations.h5")

