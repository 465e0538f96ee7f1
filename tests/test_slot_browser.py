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
from conftest import write_structured_activations

from supervised_sae.atomic import SLOT_BROWSER, marker_kind
from supervised_sae.config import SaeConfig
from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.slot_stats import FAMILIES, slot_stats
from supervised_sae.lm.readout import Readout
from supervised_sae.report.slot_browser import DATA_FILE, PAGE_FILE, write_browser
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
    *_, table = trained
    stats = stats_of(trained)
    page = write_browser(stats, table, tmp_path / "browser", "Slots of s1.pt")
    assert page == tmp_path / "browser" / PAGE_FILE
    assert marker_kind(tmp_path / "browser") == SLOT_BROWSER
    text = (tmp_path / "browser" / DATA_FILE).read_text()
    data = json.loads(text.removeprefix("window.SLOT_DATA = ").removesuffix(";\n"))
    assert data["slots"] == json.loads(json.dumps(stats["slots"]))
    shown = {r for s in stats["slots"] for r, _ in s["top"]}
    assert {int(r) for r in data["rows"]} >= shown
    some = next(iter(shown))
    assert data["rows"][str(some)]["prompt"] == f"question {some}"
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
    page = write_browser(stats, table, tmp_path / "browser", "Slots of s1.pt")
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
    # a slot's panel opens with its top prompts
    slot = live[0]
    dom, log = dump_dom(page, f"open={slot['id']}")
    assert f"slot {slot['id']} (" in dom and f"question {slot['top'][0][0]}" in dom
    assert "Uncaught" not in log
