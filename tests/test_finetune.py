"""Fine-tuning a local pretrained model (lm.finetune): the pretrained folder is only read,
the result is a standard folder that says what it came from, a killed run resumes, every
family trains with its own tokenizer, and jobs are sized for the model they load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tiny_pretrained import build_pretrained

from supervised_sae.config import ConfigError
from supervised_sae.config.load import check_config, default_dict, merge
from supervised_sae.config.memory import JOB_BASE_MB, lm_job_memory_mb
from supervised_sae.data.biographies import build_dataset
from supervised_sae.lm.describe import ORIGIN_FILE, describe_lm, folder_parameters
from supervised_sae.lm.family import FAMILIES
from supervised_sae.lm.finetune import finetune_lm
from supervised_sae.lm.fit import Schedule
from supervised_sae.lm.load import held_out_facts, load_lm


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pretrained(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param) / "pretrained"
    return build_pretrained(folder, request.param, n_layer=2, width=32, texts=600)


@pytest.fixture(scope="module")
def data():
    _, bios, prompts = build_dataset(n_people=20, biographies_per_person=2, test_fraction=0.5,
                                     heldout_templates=2, seed=0, validation_fraction=0.2)
    return bios, prompts


def test_finetuning_reads_the_pretrained_folder_only_and_records_its_origin(
        pretrained, data, tmp_path):
    bios, prompts = data
    before = folder_hashes(pretrained)
    model = finetune_lm(bios, prompts, pretrained, tmp_path / "out", tmp_path / "ckpt",
                        Schedule(epochs=3, batch_size=16, lr=0.003))
    assert folder_hashes(pretrained) == before  # not one byte of the pretrained folder
    out = tmp_path / "out"
    history = json.loads((out / "training_history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    assert all("validation_accuracy" in h for h in history)
    origin = json.loads((out / ORIGIN_FILE).read_text())
    best = max(history, key=lambda h: h["validation_accuracy"])
    assert origin["origin"] == "fine-tuned" and origin["pretrained"] == str(pretrained)
    assert origin["chosen_epoch"] == best["epoch"]  # the first of equals: ties keep the earlier
    assert held_out_facts(out)["held_out_facts_read"] is True  # every biography was read
    # a standard folder of the same family and size, with the pretrained tokenizer
    reloaded, tokenizer = load_lm(out)
    described = describe_lm(out)
    assert described["family"] == model.config.model_type == reloaded.config.model_type
    assert described["parameters"] == folder_parameters(pretrained)
    assert described["origin"] == "fine-tuned"
    original, original_tokenizer = load_lm(pretrained)
    assert tokenizer("Where was Ada born?")["input_ids"] == \
        original_tokenizer("Where was Ada born?")["input_ids"]
    assert describe_lm(pretrained)["origin"] == "pretrained, used as it is"
    # the results page's line: the model that ran, from its own files
    from supervised_sae.report.results_page import lm_depth, lm_line

    lm = {"lm": described}
    line = lm_line(lm, {"n_layer": 99, "epochs": 3})
    assert line.startswith(f"{described['family']}, 2 blocks, width 32")
    assert f"fine-tuned here from {pretrained} (epoch {origin['chosen_epoch']} of 3 kept" in line
    assert lm_depth(lm, {"n_layer": 99}) == 2


def test_a_finished_finetuning_run_resumes_to_the_same_model(pretrained, data, tmp_path):
    """Run again after the output is lost: the checkpoints and the kept best epoch give the
    same weights without training again."""
    import torch

    bios, prompts = data
    schedule = Schedule(epochs=2, batch_size=16, lr=0.003)
    first = finetune_lm(bios, prompts, pretrained, tmp_path / "a", tmp_path / "ckpt", schedule)
    again = finetune_lm(bios, prompts, pretrained, tmp_path / "b", tmp_path / "ckpt", schedule)
    for (name, x), (_, y) in zip(first.state_dict().items(), again.state_dict().items(),
                                 strict=True):
        assert torch.equal(x, y), name
    assert json.loads((tmp_path / "a/training_history.json").read_text()) == \
        json.loads((tmp_path / "b/training_history.json").read_text())


def test_finetuning_with_dropout_is_reproducible_and_resumes_exactly(pretrained, data,
                                                                      tmp_path):
    """The pretrained config's dropout (0.1 here, as GPT-2's) draws its masks from seeded
    generators: two runs of one config give the same weights, and a run resumed from its
    first epoch's checkpoint trains the second epoch as the uninterrupted run did."""
    import shutil

    import torch

    bios, prompts = data
    config = load_lm(pretrained)[0].config
    if config.model_type == "gpt2":  # Llama's config has no dropout: nothing is drawn
        assert config.resid_pdrop > 0
    schedule = Schedule(epochs=2, batch_size=16, lr=0.003)
    runs = {}
    for name in ("a", "b"):
        finetune_lm(bios, prompts, pretrained, tmp_path / name, tmp_path / f"ckpt_{name}",
                    schedule)
        runs[name] = torch.load(tmp_path / f"ckpt_{name}/ckpt_epoch00001.pt",
                                weights_only=True)["model"]
    # resume: epoch 1's checkpoint only (no epoch 2, no kept best epoch)
    (tmp_path / "ckpt_c").mkdir()
    shutil.copy(tmp_path / "ckpt_a/ckpt_epoch00000.pt", tmp_path / "ckpt_c")
    finetune_lm(bios, prompts, pretrained, tmp_path / "c", tmp_path / "ckpt_c", schedule)
    runs["c"] = torch.load(tmp_path / "ckpt_c/ckpt_epoch00001.pt", weights_only=True)["model"]
    for other in ("b", "c"):
        for name, weight in runs["a"].items():
            assert torch.equal(weight, runs[other][name]), (other, name)


@pytest.mark.parametrize("out", ["pretrained", "pretrained/tuned", "."])
def test_no_output_at_inside_or_above_the_pretrained_folder(pretrained, data, out):
    bios, prompts = data
    before = folder_hashes(pretrained)
    with pytest.raises(ValueError, match="only read"):
        finetune_lm(bios, prompts, pretrained, pretrained.parent / out,
                    pretrained.parent / "ckpt", Schedule(epochs=1, batch_size=16, lr=0.003))
    assert folder_hashes(pretrained) == before


def _config(**lm) -> dict:
    return {"data": {"n_people": 20}, "lm": lm, "layers": [0]}


def load_config(over: dict):
    config = default_dict()
    merge(config, over)
    return check_config(config)


def test_finetune_without_a_pretrained_folder_is_refused():
    with pytest.raises(ConfigError, match="lm.finetune is true but lm.pretrained is not set"):
        load_config(_config(finetune=True))


def test_a_model_larger_than_the_declared_memory_is_refused_with_its_size(pretrained):
    config = _config(pretrained=str(pretrained), finetune=True)
    params = folder_parameters(pretrained)
    study = load_config(config)  # fits this machine
    need = lm_job_memory_mb(study, "training")
    assert need > JOB_BASE_MB + params * 16 / 2**20  # weights, gradients, AdamW's moments
    config["devices"] = {"max_mem_mb": need - 1}
    with pytest.raises(ConfigError) as err:
        load_config(config)
    message = str(err.value)
    assert f"{params / 1e6:,.1f}M parameters" in message and "training" in message
    assert f"need about {need:,} MB" in message
    assert f"devices.max_mem_mb is {need - 1:,} MB" in message
    # as it is (inference only), the same model needs less, and the GPU's limit is its own
    config["lm"]["finetune"] = False
    config["devices"] = {"gpu_mem_mb": 100}
    load_config(config)  # a few hundred kB of weights fit 100 MB of GPU


def test_a_model_folder_without_weights_is_refused_when_the_config_is_checked(tmp_path):
    import transformers as hf

    hf.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"no weights \(\*.safetensors or \*.bin\) to size"):
        load_config(_config(pretrained=str(tmp_path)))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_fine_tunes_with_its_own_tokenizer(model_type, data, tmp_path):
    """Each model_type the package reads also fine-tunes: a tiny random model of it with
    a BPE tokenizer, one epoch lowers its loss and the folder it came from is unchanged."""
    from test_families import CONFIGS

    from supervised_sae.lm.fit import training_texts
    from supervised_sae.lm.tokenizer import build_bpe_tokenizer

    bios, prompts = data
    tokenizer = build_bpe_tokenizer(training_texts(bios, prompts), 300)
    config = CONFIGS[model_type]()
    config.vocab_size = len(tokenizer)
    for key in ("n_positions", "max_position_embeddings"):
        if hasattr(config, key):
            setattr(config, key, 512)
    import torch
    import transformers as hf

    torch.manual_seed(0)
    folder = tmp_path / model_type
    hf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    before = folder_hashes(folder)
    finetune_lm(bios, prompts, folder, tmp_path / "out", tmp_path / "ckpt",
                Schedule(epochs=2, batch_size=16, lr=0.003))
    history = json.loads((tmp_path / "out/training_history.json").read_text())
    assert history[1]["loss"] < history[0]["loss"]
    assert folder_hashes(folder) == before
    assert describe_lm(tmp_path / "out")["family"] == model_type
