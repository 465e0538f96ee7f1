"""Bad input is rejected before compute, with a message naming the file, key or value.

Each case is a (name, make-the-bad-input, expected message) row.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, write_structured_activations

from supervised_sae.checkpoints import CheckpointError, CheckpointStore
from supervised_sae.config import ConfigError, check_config, from_rule_params, selected_layers
from supervised_sae.data.store_layout import ActivationFileError, check_activation_file
from supervised_sae.lm.load import load_lm
from supervised_sae.sae.io import load_sae, save_sae
from supervised_sae.sae.model import SupervisedSAE

BASE = yaml.safe_load((REPO / "config/config.yaml").read_text())


def config_with(path: str, value, delete: bool = False) -> dict:
    config = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return config


CONFIG_CASES = [
    ("zero epochs", "sae.stage1_epochs", 0, "'sae.stage1_epochs' = 0"),
    ("negative learning rate", "sae.lr", -0.001, "'sae.lr' = -0.001"),
    ("batch of one", "sae.batch_size", 1, "'sae.batch_size' = 1"),
    ("negative loss weight", "sae.weights.sparse", -1, "'sae.weights.sparse' = -1"),
    ("unknown mode", "modes", ["joint", "fancy"], "'modes.1' = 'fancy'"),
    ("negative layer", "layers", [0, -1],
     "'layers' = [0, -1]: item 1 = -1: expected an integer >= 0 or 'emb'"),
    ("no free slots", "sae.n_free", 0, "'sae.n_free' = 0"),
    ("malformed device list", "devices.ids", "gpus", "'devices.ids' = 'gpus'"),
    ("unknown value head", "sae.value_head", "mlp", "'sae.value_head' = 'mlp'"),
    ("unknown storage dtype", "activations.dtype", "int8", "'activations.dtype' = 'int8'"),
    ("test fraction of 1", "data.test_fraction", 1, "'data.test_fraction' = 1"),
    ("misspelt key", "sae.n_fre", 10, "unknown config key 'sae.n_fre'; did you mean sae.n_free?"),
    ("misspelt top-level key", "layer", [1], "unknown config key 'layer'; did you mean layers?"),
    ("relation count differs from the data", "data.relations", ["birth_date", "major"],
     "the built-in biographies have exactly the relations"),
    ("heads do not divide the width", "lm.n_head", 7, "lm.n_embd=768 must be divisible by"),
    ("pretrained folder missing", "lm.pretrained", "/nonexistent/model", "no such folder"),
    ("prompts file missing", "data.prompts", "/nonexistent/p.csv", "data.prompts="),
    ("missing section", "sae", None, "config key 'sae' is missing"),
    # in words, not a schema dump
    ("a layer twice", "layers", [1, 1], "'layers' = [1, 1]: lists 1 more than once"),
    ("no layers", "layers", [], "'layers' = []: is empty; give at least one"),
    ("layers neither all nor a list", "layers", "some",
     "'layers' = 'some': expected 'all' or a list"),
    ("a device twice", "devices.ids", [0, 0], "'devices.ids' = [0, 0]: lists 0 more than once"),
    ("no devices", "devices.ids", [], "'devices.ids' = []: is empty; give at least one"),
    ("no replicate seeds", "sae_seeds", 0, "'sae_seeds' = 0"),
    ("absurd width", "sae.n_free", 10**9,
     "'sae.n_free' = 1000000000: Input should be less than or equal to 4000000"),
    ("absurd number of people", "data.n_people", 10**9, "'data.n_people' = 1000000000"),
]


@pytest.mark.parametrize("name,key,value,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(name, key, value, message):
    config = config_with(key, value, delete=value is None)
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert message in str(err.value)


@pytest.mark.parametrize("people,fraction,validation,short", [
    (10, 0.01, 0.2, "0 test, 0 validation"), (10, 0.99, 0.2, "0 train"),
    (16, 0.5, 0.9, "1 test"),  # a user table needs 2 a side: so does the built-in data
    (10, 0.5, 0.05, "0 validation")])
def test_split_that_leaves_a_side_too_small(people, fraction, validation, short):
    config = config_with("data.n_people", people)
    config["data"]["test_fraction"] = fraction
    config["data"]["validation_fraction"] = validation
    message = (f"data.n_people={people} with data.test_fraction={fraction} and "
               f"data.validation_fraction={validation} leaves {short} people; train and "
               "test need at least 2 each")
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(config)


def test_shipped_configs_are_valid():
    check_config(BASE)
    quick = copy.deepcopy(BASE)
    for section, values in yaml.safe_load((REPO / "config/quickstart.yaml").read_text()).items():
        quick[section].update(values)
    check_config(quick)


def test_layers_beyond_the_model_depth():
    with pytest.raises(ValueError, match=r"config layers \[12\] are outside the model's depth"):
        selected_layers(from_rule_params(config_with("layers", [3, 12])))


def test_embedding_output_is_layer_emb_and_numbered_minus_one():
    config = config_with("layers", ["emb", 0, 11])
    check_config(config)
    assert selected_layers(from_rule_params(config)) == [-1, 0, 11]
    with pytest.raises(ConfigError, match="item 0 = 'embeddings': expected an integer"):
        check_config(config_with("layers", ["embeddings", 0]))


def test_embedding_output_asked_of_a_file_without_it(tmp_path):
    path = write_structured_activations(tmp_path / "a.h5")  # written without layers/emb
    with pytest.raises(ActivationFileError, match=r"embedding output \(layers/emb\) was asked "
                       "for, but the file has none; extract the activations again"):
        check_activation_file(path, [-1])


@pytest.mark.workflow  # starts Snakemake
def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"sae": {"lr": -1}}))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path), "-n", "--configfile",
                          str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert run.returncode != 0
    assert "'sae.lr' = -1" in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()


# --- activation files ----------------------------------------------------------------


def _edit_h5(path: Path, fn) -> Path:
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def _replace(name, data):
    def edit(f):
        del f[name]
        f[name] = data
    return edit


def _set_row(layer, row, value):
    def edit(f):
        f[f"layers/{layer}"][row, 3] = value
    return edit


H5_CASES = [
    ("missing dataset", lambda f: f.__delitem__("answer"), "dataset(s) ['answer'] missing"),
    ("missing layer", lambda f: f.__delitem__("layers/1"), "dataset(s) ['layers/1'] missing"),
    ("label of wrong length", _replace("person", np.zeros(5, dtype=np.int64)),
     "dataset 'person' has shape (5,)"),
    ("float labels", _replace("relation", np.zeros(432, dtype=np.float32)),
     "dataset 'relation' has shape (432,) and dtype float32"),
    ("relation out of range", _replace("relation", np.full(432, 9)),
     "relation[0] = 9 is out of range; expected 0..5"),
    ("split out of range", _replace("split", np.full(432, 3, dtype=np.int8)),
     "split[0] = 3 is out of range; expected 0..2"),
    ("NaN activation", _set_row(1, 17, np.nan), "layers/1 row 17 holds NaN or Inf"),
    ("Inf activation", _set_row(0, 400, np.inf), "layers/0 row 400 holds NaN or Inf"),
    ("activations of the wrong width",
     _replace("layers/0", np.zeros((432, 5), dtype=np.float32)),
     "layers/0 has shape (432, 5) and dtype float32; expected (432, 32) floats"),
]


@pytest.mark.parametrize("name,edit,message", H5_CASES, ids=[c[0] for c in H5_CASES])
def test_bad_activation_file(tmp_path, name, edit, message):
    path = _edit_h5(write_structured_activations(tmp_path / "a.h5"), edit)
    with pytest.raises(ActivationFileError) as err:
        check_activation_file(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_truncated_and_foreign_activation_files(tmp_path):
    path = write_structured_activations(tmp_path / "a.h5")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ActivationFileError, match="not a readable HDF5 file"):
        check_activation_file(path)
    text = tmp_path / "b.h5"
    text.write_text("layer,value\n0,1\n")
    with pytest.raises(ActivationFileError, match="not a readable HDF5 file"):
        check_activation_file(text)
    with pytest.raises(ActivationFileError, match="does not exist"):
        check_activation_file(tmp_path / "missing.h5")
    good = write_structured_activations(tmp_path / "c.h5")
    with pytest.raises(ActivationFileError, match="layer 5 requested; the file has layers 0..1"):
        check_activation_file(good, [5])


# --- model folders -------------------------------------------------------------------


def test_model_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_lm(tmp_path)


def test_model_folder_without_tokenizer_or_weights(tmp_path):
    from transformers import GPT2Config

    from supervised_sae.lm.tokenizer import build_word_tokenizer

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_lm(tmp_path)
    build_word_tokenizer(["a b c"], []).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot load as a causal language model.*model.safet"):
        load_lm(tmp_path)


def test_model_folder_that_is_not_a_causal_lm(tmp_path):
    from transformers import T5Config

    from supervised_sae.lm.tokenizer import build_word_tokenizer

    build_word_tokenizer(["a b c"], []).save_pretrained(tmp_path)
    T5Config(d_model=8, num_layers=1, num_heads=1, d_kv=4, d_ff=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot load as a causal language model"):
        load_lm(tmp_path)


def test_model_hidden_size_disagrees_with_activations(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from supervised_sae.evaluation.job import evaluate_sae
    from supervised_sae.lm.tokenizer import build_word_tokenizer

    acts = write_structured_activations(tmp_path / "a.h5", n_people=4)  # d_model 32
    lm_dir = tmp_path / "lm"
    GPT2LMHeadModel(GPT2Config(vocab_size=10, n_layer=1, n_embd=16, n_head=2)).save_pretrained(
        lm_dir)
    build_word_tokenizer(["a b c"], []).save_pretrained(lm_dir)
    sae = SupervisedSAE(32, 8, 6, 20)
    save_sae(tmp_path / "sae.pt", sae, {"mode": "joint", "layer": 0, "stage": "joint"})
    with pytest.raises(ValueError, match="hidden size 16, but .* holds 32-dimensional"):
        evaluate_sae(tmp_path / "sae.pt", acts, tmp_path / "p.csv", lm_dir, 0)


# --- checkpoints and model files -----------------------------------------------------


class Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/supervised_sae_exploit_ran"),))


def test_model_file_with_code_is_never_unpickled(tmp_path):
    marker = Path("/tmp/supervised_sae_exploit_ran")
    marker.unlink(missing_ok=True)
    path = tmp_path / "sae_final.pt"
    torch.save({"format": "supervised_sae.sae.v2", "payload": Exploit()}, path)
    with pytest.raises(ValueError, match="cannot load as a supervised_sae model file"):
        load_sae(path)
    assert not marker.exists()


def test_model_file_of_another_project_or_truncated(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a supervised_sae model file"):
        load_sae(other)
    good = tmp_path / "good.pt"
    save_sae(good, SupervisedSAE(4, 4, 6, 2), {"mode": "joint"})
    good.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="cannot load as a supervised_sae model file"):
        load_sae(good)


def test_checkpoint_of_another_project_is_refused(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "ckpt_epoch00003.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of supervised_sae"):
        CheckpointStore(tmp_path).load_latest()


def test_checkpoint_from_another_run_is_set_aside_not_resumed(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    CheckpointStore(folder, identity={"stage": "joint", "sae": {"lr": 1e-3}}).save(
        0, {"epoch": 0})
    other = CheckpointStore(folder, identity={"stage": "joint", "sae": {"lr": 2e-3}})
    assert other.load_latest() is None
    assert "other sae.lr" in caplog.text  # one line naming what differs
    assert not folder.exists() and (tmp_path / "checkpoints.stale/ckpt_epoch00000.pt").exists()




def test_evaluation_with_another_lm_of_the_same_width_is_refused(tmp_path):
    """The activations record the LM they came from (a weights hash); an LM of the same
    width but other weights used to be accepted (clean accuracy 1.0 -> 0.04)."""
    import torch
    from conftest import lm_hash
    from transformers import GPT2Config, GPT2LMHeadModel

    from supervised_sae.evaluation.job import evaluate_sae
    from supervised_sae.lm.tokenizer import build_word_tokenizer

    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = tmp_path / f"lm{seed}"
        GPT2LMHeadModel(GPT2Config(vocab_size=160, n_layer=1, n_embd=32, n_head=2)
                        ).save_pretrained(folder)
        build_word_tokenizer(["a b c"], []).save_pretrained(folder)
        folders.append(folder)
    acts = write_structured_activations(tmp_path / "a.h5", n_people=4,
                                        lm_sha256=lm_hash(folders[0]))
    save_sae(tmp_path / "sae.pt", SupervisedSAE(32, 8, 6, 20),
             {"mode": "joint", "layer": 0, "stage": "joint"})
    with pytest.raises(ValueError, match=f"{folders[1]} is not the LM {acts} was extracted"):
        evaluate_sae(tmp_path / "sae.pt", acts, tmp_path / "p.csv", folders[1], 0)
