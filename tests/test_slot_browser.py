"""The slot browser: its numbers equal a direct encode of the store's rows, however the
rows are chunked; the page folder holds them with the prompts it shows; and, where a
Chromium is installed, the page loads from disk, sorts, filters and opens a slot."""

from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest
import torch
from conftest import read_slot_script, write_structured_activations

from supervised_sae.atomic import SLOT_BROWSER, marker_kind
from supervised_sae.config import SaeConfig
from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.slot_stats import FAMILIES, slot_stats
from supervised_sae.lm.readout import Readout, apply_readout
from supervised_sae.report.slot_browser import (
    DATA_FILE,
    PAGE_FILE,
    PARTS_DIR,
    part_file,
    write_browser,
)
from supervised_sae.sae.io import load_sae
from supervised_sae.train.stages import run_stage1

N_TEMPLATES = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("browser")
    acts = write_structured_activations(work / "a.h5", n_templates=N_TEMPLATES)
    settings = SaeConfig.default(n_free=24, stage1_epochs=2, batch_size=16)
    run_stage1(acts, 1, work / "s1.pt", settings, seed=0)
    data = load_layer(acts, 1)
    sae, _ = load_sae(work / "s1.pt")
    torch.manual_seed(0)
    d = data.d_model
    readout = Readout("layer", 1e-5, torch.ones(d), torch.zeros(d), torch.randn(30, d),
                      torch.zeros(30))
    template = torch.arange(len(data.x)) % N_TEMPLATES  # the fixture's row order
    table = pd.DataFrame({
        "person": data.person.tolist(), "relation": [data.relation_names[r] for r in
                                                     data.relation.tolist()],
        "prompt": [f"question {i}" for i in range(len(data.x))],
        "answer": [data.answer_values[a] for a in data.answer.tolist()],
        "split": ["train"] * len(data.x), "template_heldout": data.heldout.tolist()})
    return work, sae, data, template, readout, table


def stats_of(trained, chunk_elements=1 << 24, label_budget=1 << 26):
    _, sae, data, template, readout, _ = trained
    return slot_stats(sae, data, template, readout, [f"tok{i}" for i in range(30)],
                      chunk_elements=chunk_elements, label_budget=label_budget)


def test_each_slots_numbers_equal_a_direct_encode(trained):
    _, sae, data, template, readout, _ = trained
    stats = stats_of(trained)
    z = sae.encode(data.x).detach()
    for slot in stats["slots"]:
        k = slot["id"]
        assert slot["fires"] == int((z[:, k] > 0).sum())
        values, rows = z[:, k].topk(8)
        expected = [[int(r), round(float(v), 4)] for v, r in zip(values, rows, strict=True)
                    if v > 0]
        assert [v for _, v in slot["top"]] == [v for _, v in expected]
        assert all(z[r, k] == pytest.approx(v, abs=1e-4) for r, v in slot["top"])
        # where it fires: 12 bins from 0 to its largest activation, every firing once
        on = z[:, k][z[:, k] > 0]
        if len(on):
            bins = (on / on.max() * 12).long().clamp(max=11)
            assert slot["act_hist"] == torch.bincount(bins, minlength=12).tolist()
        assert sum(slot["act_hist"]) == slot["fires"]
    # the logit lens: the decoder row through the read-out, most and least promoted
    logits = apply_readout(readout, sae.W_dec.detach())
    for slot in stats["slots"][:3]:
        top = logits[slot["id"]].topk(6)
        assert slot["tokens"] == [f"tok{i}" for i in top.indices.tolist()]
        assert slot["token_logits"] == pytest.approx(top.values.tolist(), abs=1e-4)
        low = logits[slot["id"]].topk(6, largest=False).indices.tolist()
        assert slot["bottom_tokens"] == [f"tok{i}" for i in low]
    # a free slot's best label: its F1 recomputed from the rows that fire
    free = next(s for s in stats["slots"] if s["kind"] == "free" and s["fires"])
    on = z[:, free["id"]] > 0
    by_family = {"relation": data.relation, "value": data.answer, "person": data.person,
                 "wording": data.relation * N_TEMPLATES + template}
    best = 0.0
    for labels in by_family.values():
        for value in labels.unique():
            hit = labels == value
            best = max(best, float(2 * (on & hit).sum() / (on.sum() + hit.sum())))
    assert free["best"]["f1"] == pytest.approx(best, abs=1e-4)
    assert set(FAMILIES) | {"nothing"} >= {s["best"]["family"] for s in stats["slots"]
                                           if s["kind"] == "free"}
    # relation slot r's histogram counts every row once, by the relation asked
    rel = next(s for s in stats["slots"] if s["kind"] == "relation")
    assert sum(sum(c) for c in rel["hist"].values()) == len(data.x)
    r = data.relation_names.index(rel["relation"])
    act = z[:, rel["id"]]
    assert rel["wrong_fires"] == int(((data.relation != r) & (act > 0)).sum())
    assert rel["silent"] == int(((data.relation == r) & (act <= 0)).sum())


def test_chunking_rows_and_slots_changes_nothing(trained):
    """Rows a few at a time, and label counts for a few slots at a time (what keeps the
    memory bounded at the seed's 100,000 slots), give the same numbers."""
    assert stats_of(trained, chunk_elements=1, label_budget=1) == stats_of(trained)


def test_the_page_folder_holds_the_numbers_and_the_prompts_it_shows(trained, tmp_path):
    """The index lists every live slot once; each live slot's panel is in its part file,
    whole, with every prompt it shows; dead slots are counted, not listed."""
    *_, table = trained
    stats = stats_of(trained)
    page = write_browser(stats, table, tmp_path / "browser", "Slots of s1.pt", part_slots=10)
    folder = tmp_path / "browser"
    assert page == folder / PAGE_FILE
    assert marker_kind(folder) == SLOT_BROWSER
    index = read_slot_script(folder / DATA_FILE, "window.SLOT_DATA = ")
    live = [s for s in stats["slots"] if s["fires"]]
    assert [r[0] for r in index["index"]] == [s["id"] for s in live]
    for (_, fires, label, _family, f1, tokens), slot in zip(index["index"], live, strict=True):
        assert fires == slot["fires"] and [index["tokens"][t] for t in tokens] == slot["tokens"]
        if slot["kind"] == "free":
            assert index["labels"][label] == slot["best"]["label"] and f1 == slot["best"]["f1"]
    panels, rows = {}, {}
    for part in sorted((folder / PARTS_DIR).iterdir()):
        p = int(part.stem.removeprefix("part_"))
        assert part.name == part_file(p)
        data = read_slot_script(part, f"SLOT_PART({p}, ")
        assert all(int(k) // 10 == p for k in data["slots"])
        panels.update(data["slots"])
        shown = {r for s in data["slots"].values() for r, _ in s["top"]}
        assert {int(r) for r in data["rows"]} >= shown
        rows.update(data["rows"])
    assert panels == json.loads(json.dumps({s["id"]: s for s in live}))
    some = next(iter(rows))
    assert rows[some]["prompt"] == f"question {some}"
    assert 'src="slot_data.js"' in page.read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(page, hash_: str = "") -> tuple[str, str]:
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--enable-logging=stderr", "--virtual-time-budget=5000",
                          "--dump-dom", f"file://{page}#{hash_}"],
                         capture_output=True, text=True, timeout=120)
    return run.stdout, run.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine "
                    "(apt-get install chromium)")
def test_the_page_loads_sorts_filters_and_opens_a_slot_in_a_real_browser(trained, tmp_path):
    import re

    *_, table = trained
    stats = stats_of(trained)
    # panels 10 slots to a file, so opening a slot loads a part file on demand
    page = write_browser(stats, table, tmp_path / "browser", "Slots of s1.pt",
                         tmp_path / "one.html", part_slots=10)
    dom, log = dump_dom(page)
    assert "Uncaught" not in log and "SyntaxError" not in log, log[-2000:]
    live = [s for s in stats["slots"] if s["fires"]]
    assert dom.count('class="slot"') == len(live)
    assert "Free slots best explained by a relation" in dom
    # sorted by density, highest first
    order = [int(i) for i in re.findall(r'class="slot" data-id="(\d+)"', dom)]
    by_density = sorted(live, key=lambda s: -s["density"])
    assert [stats["slots"][i]["density"] for i in order] == [s["density"] for s in by_density]
    # filtered to the relation slots, ascending by id
    dom, _ = dump_dom(page, "kind=relation&sort=id&up=1")
    ids = [int(i) for i in re.findall(r'class="slot" data-id="(\d+)"', dom)]
    assert ids == sorted(s["id"] for s in live if s["kind"] == "relation")
    # a slot's panel opens with its top prompts: a free slot of the first part, and a
    # relation slot of the last, from the folder and from the single file
    for slot in (live[0], live[-1]):
        for opened in (page, tmp_path / "one.html"):
            dom, log = dump_dom(opened, f"open={slot['id']}")
            assert f"slot {slot['id']} (" in dom, (opened, log[-2000:])
            assert f"question {slot['top'][0][0]}" in dom
            assert "Uncaught" not in log and ".js: keep the folder whole" not in dom
    assert "<script src" not in (tmp_path / "one.html").read_text().replace(
        '<script src="slot_data.js">', "")  # the single file needs no other file


def test_the_neuronpedia_batches_hold_every_slot_in_saedashboards_layout(trained, tmp_path):
    from supervised_sae.report.neuronpedia import (
        ACTIVATION_FIELDS,
        BATCH_FEATURES,
        FEATURE_FIELDS,
        write_neuronpedia,
    )

    stats = stats_of(trained)
    tokens = {r: ["<s>", "question", str(r)] for s in stats["slots"] for r, _ in s["top"]}
    paths = write_neuronpedia(stats, tokens, tmp_path / "np", tmp_path / "lm",
                              tmp_path / "joint/layer1/sae_final.pt")
    batches = [json.loads(p.read_text()) for p in paths]
    assert len(paths) == -(-len(stats["slots"]) // BATCH_FEATURES)
    assert {(b["model_id"], b["layer"], b["sae_set"]) for b in batches} == {
        ("lm", 1, "supervised-sae-joint")}
    features = [f for b in batches for f in b["features"]]
    assert [f["feature_index"] for f in features] == [s["id"] for s in stats["slots"]]
    for f, slot in zip(features, stats["slots"], strict=True):
        assert tuple(f) == FEATURE_FIELDS
        assert f["pos_str"] == slot["tokens"] and f["neg_values"] == slot["bottom_logits"]
        assert sum(f["freq_hist_data_bar_heights"]) == slot["fires"]
        assert len(f["activations"]) == len(slot["top"])
        for act, (row, value) in zip(f["activations"], slot["top"], strict=True):
            assert tuple(act) == ACTIVATION_FIELDS
            assert act["tokens"] == tokens[row] and act["values"] == [0.0, 0.0, value]
    # the folder is the export's own: a slot browser folder there is not replaced
    write_browser(stats, trained[-1], tmp_path / "browser", "Slots")
    with pytest.raises(FileExistsError, match="slot browser, not a Neuronpedia export"):
        write_neuronpedia(stats, tokens, tmp_path / "browser", tmp_path / "lm",
                          tmp_path / "joint/layer1/sae_final.pt")
