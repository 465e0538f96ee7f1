"""The HDF5 layout, and stored activations equal a direct forward pass at every layer."""

import h5py
import numpy as np
import pytest
import torch

from supervised_sae.data.biographies import RELATIONS, build_dataset, load_pools
from supervised_sae.data.store_layout import ActivationFileError
from supervised_sae.data.store_reader import load_layer
from supervised_sae.lm.answers import answer_token_ids
from supervised_sae.lm.extract import extract_activations
from supervised_sae.lm.fit import training_texts
from supervised_sae.lm.tokenizer import build_word_tokenizer, encode
from supervised_sae.lm.train import build_model


@pytest.fixture(scope="module")
def model_and_prompts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    _, bios, prompts = build_dataset(12, 2, 0.5, 2, seed=0, validation_fraction=0.4)
    tokenizer = build_word_tokenizer(training_texts(bios, prompts),
                                     load_pools().attribute_values())
    model = build_model(len(tokenizer), 3, 32, 2, 64, tokenizer.eos_token_id,
                        tokenizer.pad_token_id, seed=0).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, prompts, model, tokenizer


def test_layout_and_values_match_a_direct_forward_pass(tmp_path, model_and_prompts):
    folder, prompts, model, tokenizer = model_and_prompts
    out = tmp_path / "acts.h5"
    extract_activations(folder, prompts, RELATIONS, out, batch_size=7)  # ragged batches
    n = len(prompts)
    with h5py.File(out) as f:
        assert f.attrs["d_model"] == 32 and f.attrs["n_layers"] == 3
        assert f.attrs["n_prompts"] == n and f.attrs["dtype"] == "float32"
        for key in ("model_path", "package_version", "prompts_sha256"):
            assert key in f.attrs
        for layer in range(3):
            ds = f[f"layers/{layer}"]
            assert ds.shape == (n, 32) and ds.dtype == np.float32 and ds.chunks[1] == 32
        for key, dtype in (("relation", np.int64), ("answer", np.int64), ("person", np.int64),
                           ("split", np.int8), ("template", np.int64),
                           ("template_heldout", bool), ("answer_token_id", np.int64)):
            assert f[key].shape == (n,) and f[key].dtype == dtype, key
        assert [s.decode() for s in f["relation_names"][:]] == list(RELATIONS)
        values = [s.decode() for s in f["answer_values"][:]]
        stored = [f[f"layers/{k}"][:] for k in range(3)]
        embeddings = f["layers/emb"][:]
        answer = f["answer"][:]
        split = f["split"][:]
    assert set(prompts["split"]) == {"train", "test", "validation"}
    assert (split == prompts["split"].map({"train": 0, "test": 1, "validation": 2})).all()
    # whole answers round trip: each row's value is its answer, text and token ids
    whole = answer_token_ids(tokenizer, list(prompts["prompt"]), list(prompts["answer"]))
    data = load_layer(out, 0)
    assert all(values[answer[i]] == prompts["answer"].iloc[i] for i in range(n))
    assert all(data.value_tokens[answer[i]] == tuple(whole[i]) for i in range(n))
    assert data.answer_token_id.tolist() == [w[0] for w in whole]
    assert len(data.value_tokens) == len(set(map(tuple, whole)))  # one value per answer
    assert max(map(len, whole)) == 4  # dates are several tokens: month, day, comma, year
    ids = encode(tokenizer, prompts["prompt"])
    with torch.no_grad():
        for i in range(0, n, 13):
            hidden = model(input_ids=torch.tensor([ids[i]]), output_hidden_states=True)
            hidden = hidden.hidden_states
            # layer L is hidden_states[L + 1]; the embedding output is hidden_states[0],
            # the published work's "layer 0"
            assert np.abs(embeddings[i] - hidden[0][0, -1].numpy()).max() <= 1e-5
            for layer in range(2):
                direct = hidden[layer + 1][0, -1].numpy()
                assert np.abs(stored[layer][i] - direct).max() <= 1e-4
            # the last entry of hidden_states has the final layer norm applied
            last = model.transformer.ln_f(torch.from_numpy(stored[2][i])).numpy()
            assert np.abs(last - hidden[3][0, -1].numpy()).max() <= 1e-4


def test_a_store_of_first_token_answers_is_refused_with_how_to_rebuild(tmp_path):
    from conftest import write_structured_activations

    path = write_structured_activations(tmp_path / "acts.h5")
    with h5py.File(path, "r+") as f:  # what a file of format 1 looked like
        f.attrs["store_format"] = 1
        del f["answer_values"], f["value_token_ids"], f["value_token_offsets"]
        f.create_dataset("answer_tokens", data=["a"], dtype=h5py.string_dtype())
    with pytest.raises(ActivationFileError, match=r"acts.h5: activation store format 1, "
                       r"this version reads format 2 \(answers as first tokens only\); "
                       r"delete the file and extract again"):
        load_layer(path, 0)


def test_the_file_records_the_lm_it_came_from(tmp_path, model_and_prompts):
    from conftest import lm_hash

    folder, prompts, _, _ = model_and_prompts
    out = tmp_path / "acts.h5"
    extract_activations(folder, prompts.head(12), RELATIONS, out)
    with h5py.File(out, "r") as f:
        assert f.attrs["lm_sha256"] == lm_hash(folder)


def test_float16_storage(tmp_path, model_and_prompts):
    folder, prompts, _, _ = model_and_prompts
    out = tmp_path / "acts16.h5"
    extract_activations(folder, prompts.head(20), RELATIONS, out, dtype="float16")
    with h5py.File(out) as f:
        assert f["layers/0"].dtype == np.float16 and f.attrs["dtype"] == "float16"


def test_layer_fingerprint_is_stored_and_equals_a_recomputed_one(tmp_path, model_and_prompts):
    from supervised_sae.data.store_layout import FINGERPRINT_ATTR
    from supervised_sae.data.store_reader import layer_fingerprint

    folder, prompts, _, _ = model_and_prompts
    out = tmp_path / "acts.h5"
    extract_activations(folder, prompts, RELATIONS, out, batch_size=5)
    with h5py.File(out, "r+") as f:
        stored = [f[f"layers/{k}"].attrs[FINGERPRINT_ATTR] for k in range(3)]
        assert len(set(stored)) == 3
        for k in range(3):  # a file written elsewhere, without the attribute
            del f[f"layers/{k}"].attrs[FINGERPRINT_ATTR]
            assert layer_fingerprint(f, k) == stored[k]


def test_prompts_with_unknown_words_are_counted_and_shown(tmp_path, model_and_prompts,
                                                          caplog):
    folder, prompts, _, _ = model_and_prompts
    odd = prompts.copy()
    odd.loc[odd.index[:3], "prompt"] = odd["prompt"][:3].str.replace("?", "zxqv?")
    extract_activations(folder, odd, RELATIONS, tmp_path / "acts.h5")
    assert f"3 of {len(odd)} prompts hold a token unknown to the tokenizer" in caplog.text
    assert "zxqv" in caplog.text


def test_too_little_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """HDF5 that runs out of disk mid-extraction used to end in a segfault (rc 139)."""
    import shutil
    from collections import namedtuple

    from supervised_sae.data.store_writer import write_activation_file

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9, 4096))
    out = tmp_path / "acts.h5"
    rows = np.zeros((100, 8), np.float32)
    with pytest.raises(OSError, match=rf"cannot write {out}: No space left on device \(it "
                                      r"needs about 1.0 MiB and 0.0 MiB are free there\)"):
        write_activation_file(out, {0: rows}, relation=np.zeros(100), person=np.arange(100),
                              split=np.zeros(100), template=np.zeros(100),
                              template_heldout=np.zeros(100, bool), relation_names=["r"],
                              answer_ids=[[0]] * 100, answer_texts=["a"] * 100)
    assert not list(tmp_path.iterdir())
