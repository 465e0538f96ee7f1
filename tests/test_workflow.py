"""Real Snakemake runs: the DAG's shape at full scale, and a tiny study end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, read_slot_script

from supervised_sae.data.biographies import MONTHS
from supervised_sae.train.devices import job_spans, max_concurrency

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def job_counts(output: str) -> dict[str, int]:
    stats = output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def test_full_study_dry_run_has_12_stage1_and_36_stage2_jobs(seed_dag_dry_run):
    out = seed_dag_dry_run
    counts = job_counts(out)
    assert counts["train_stage1"] == 12
    assert counts["train_stage2"] == 36  # 3 modes x 12 layers
    # separate_value of layer 3 waits for feature_activation of layer 3
    assert "results/feature_activation/layer3/sae_final.pt" in out


def test_one_target_builds_only_what_it_needs(tmp_path):
    out = snakemake(tmp_path, "-n", "results/joint/layer7/sae_final.pt").stdout
    counts = job_counts(out)
    assert counts == {"biographies": 1, "train_lm": 1, "extract_activations": 1,
                      "train_stage1": 1, "train_stage2": 1, "total": 5}
    assert "results/stage1/layer7/sae_stage1.pt" in out


STEERING_ALPHAS = (0.5, 1.0, 2.0)
TINY = {
    "data": {"n_people": 40, "biographies_per_person": 2},
    "lm": {"n_layer": 3, "n_embd": 48, "n_head": 2, "epochs": 4, "batch_size": 32,
           "lr": 0.003},
    "activations": {"dtype": "float32"},
    "sae": {"n_free": 64, "stage1_epochs": 20, "stage2_epochs": 6, "eval_every": 3,
            "checkpoint_every": 3, "batch_size": 8},
    "devices": {"ids": ["gpu0", "gpu1", "gpu2"], "simulate": True},
    "evaluation": {"alphas": [1, 5], "latent_alphas": [1, 20], "published_alphas": [1, 50],
                   "max_new_tokens": 4, "swap_people": 4, "probe_steps": 20,
                   "steering_alphas": list(STEERING_ALPHAS)},
}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("study")
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    # each training job asks for 1 GPU: 6 cores and 3 GPUs run 3 training jobs at once
    snakemake(work, "--cores", "6", "--resources", "gpu=3", "--configfile",
              str(work / "tiny.yaml"))
    snakemake(work, "--configfile", str(work / "tiny.yaml"), "--report", "report.html")
    return work


def test_tiny_study_builds_every_mode_and_layer(tiny_study):
    accuracy = json.loads((tiny_study / "results/lm/accuracy.json").read_text())
    assert set(accuracy) >= {"train_seen_templates", "validation_seen_templates",
                             "test_seen_templates", "model"}
    for folder in ("joint", "feature_activation", "next_token_prediction"):
        for layer in range(3):
            run = tiny_study / f"results/{folder}/layer{layer}"
            blob = torch.load(run / "sae_final.pt", weights_only=True)
            assert blob["metadata"]["layer"] == layer
            history = json.loads((run / "training_history.json").read_text())
            assert len(history["stages"]["stage2"]) == 6
    # the LM is a standard Hugging Face folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_study / "results/lm/model")
    assert model.config.n_layer == 3
    # whole answers: a birth date is four tokens (month first), every other value one
    from supervised_sae.data.store_reader import load_layer

    data = load_layer(tiny_study / "results/activations/activations.h5", 0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_study / "results/lm/model")
    lengths = {r: {len(data.value_tokens[a]) for a in data.answer[data.relation == r].tolist()}
               for r in range(len(data.relation_names))}
    assert lengths[0] == {4} and all(lengths[r] == {1} for r in range(1, 6))
    months = {tokenizer.convert_ids_to_tokens(data.value_tokens[a][0])
              for a in data.answer[data.relation == 0].tolist()}
    assert months <= set(MONTHS)
    # nothing half-written left behind
    assert not list((tiny_study / "results").rglob("*.tmp"))


def test_every_json_a_run_writes_is_strict_json(tiny_study):
    """No NaN or Infinity (which JSON does not have) in any file the study wrote."""

    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")

    files = list((tiny_study / "results").rglob("*.json"))
    assert len(files) > 30
    for path in files:
        json.loads(path.read_text(), parse_constant=refuse)


def test_concurrent_training_jobs_never_share_a_device(tiny_study):
    spans = job_spans(tiny_study / "results/logs")
    assert len(spans) == 3 * 6  # stage 1, three modes and two baselines, 3 layers
    for i, a in enumerate(spans):
        for b in spans[i + 1 :]:
            if a.start < b.end and b.start < a.end:  # overlapping in time
                assert a.device != b.device, (a, b)
    assert {s.device for s in spans} <= {"gpu0", "gpu1", "gpu2"}
    # several jobs at once, each on its own device. (Three stage-1 jobs start together and
    # usually overlap all three; on a loaded 2-core machine one may finish before the third
    # starts training, so only "more than one" is asserted.)
    n, running = max_concurrency(spans)
    assert n >= 2 and len({s.device for s in running}) == n


def test_tiny_study_evaluates_summarises_and_reports(tiny_study):
    import pandas as pd

    results = tiny_study / "results"

    def metrics_of(run_dir: str, layer: int) -> dict:
        return json.loads((results / f"{run_dir}/layer{layer}/metrics.json").read_text())["swap"]
    for run_dir in ("joint", "feature_activation", "next_token_prediction", "unsupervised",
                    "topk"):
        for layer in range(3):
            metrics = json.loads((results / f"{run_dir}/layer{layer}/metrics.json").read_text())
            assert set(metrics["slices"]) == {"train_seen", "train_heldout", "test_seen",
                                              "test_heldout"}
            assert ("value_accuracy" in metrics["slices"]["test_seen"]) == (
                run_dir in ("joint", "next_token_prediction"))
            swap = metrics["swap"]
            assert swap["decoder"]["alphas"] == [1, 5] and swap["latent"]["alphas"] == [1, 20]
            for variant in ("decoder", "latent"):
                assert sum(swap[variant]["outcomes_at_best_alpha"].values()) == \
                    pytest.approx(1.0)
            walk = swap["published_protocol"]["walk"]
            assert len(walk) == 7 and walk[0]["alpha"] in (1, 50)
            # the walk ends at the strict latent number
            assert walk[-1]["success_rate"] == swap["latent"]["best_success_rate"]
            for side in ("entity", "entity_train"):  # held-out people, train people
                assert 0 <= swap[side]["cause"] <= swap[side]["isolation"] <= 1
            # the field's core numbers at the edited position: splicing in a trained
            # SAE's reconstruction costs less than zero-ablating the residual there
            core = metrics["spliced"]["test_seen"]
            assert core["clean_ce"] <= core["zero_ablated_ce"] and core["spliced_kl"] >= 0
            assert core["spliced_ce"] < core["zero_ablated_ce"], core
            assert (results / f"{run_dir}/layer{layer}/training_curves.png").stat().st_size
    # the baselines that are not SAEs, per layer, on the same swap pairs
    for layer in range(3):
        steering = json.loads((results / f"baselines/layer{layer}/steering.json").read_text())
        swap = steering["swap"]
        for method in ("diffmean", "probe_direction"):
            assert swap[method]["alphas"] == list(STEERING_ALPHAS)
            assert sum(swap[method]["outcomes_at_best_alpha"].values()) == pytest.approx(1.0)
            assert swap[method]["n_pairs"] == metrics_of("joint", layer)["decoder"]["n_pairs"]
        assert sum(swap["ceiling"]["outcomes"].values()) == pytest.approx(1.0)
        for side in ("entity", "entity_train"):
            assert 0 <= swap[side]["cause"] <= swap[side]["isolation"] <= 1
            # the same donors as the SAEs' entity swaps: the same ceiling
            assert swap[side]["ceiling"] == metrics_of("joint", layer)[side]["ceiling"]
    summary = pd.read_csv(results / "summary/metrics.csv")
    assert not summary.duplicated(["mode", "layer", "slice", "metric"]).any()
    assert set(summary["mode"]) == {"joint", "feature_activation", "next_token_prediction",
                                    "unsupervised", "topk", "probe", "logit_lens", "lm",
                                    "steering"}
    steered = summary[summary["mode"] == "steering"]
    assert {"diffmean.best_success_rate", "probe_direction.best_success_rate",
            "ceiling.success_rate", "entity.cause"} <= set(steered["metric"])
    for name in ("accuracy_by_layer", "reconstruction_by_layer", "binding_heatmaps", "swaps",
                 "simplest_tools"):
        assert (results / f"figures/{name}.png").stat().st_size > 10_000
    report = (tiny_study / "report.html").read_text()
    assert "accuracy_by_layer.png" in report and "training_curves.png" in report
    # each joint SAE's slot browser: a folder that opens from disk, and one file that the
    # report carries
    for layer in range(3):
        assert (results / f"joint/layer{layer}/slot_browser/index.html").is_file()
        single = (results / f"joint/layer{layer}/slot_browser.html").read_text()
        assert "window.SLOT_DATA = " in single and 'src="slot_data.js"' not in single
    assert "slot_browser.html" in report and "Slot browser" in report


def test_the_command_line_tool_summarises_plots_and_writes_a_page_as_the_rules_do(
        tiny_study, tmp_path):
    """summarize, figures and page: the workflow's reporting steps outside Snakemake,
    on the tiny study's own files, give the rule's table and the same figures."""
    import pandas as pd

    from supervised_sae.cli import main

    results = tiny_study / "results"
    metrics = sorted(str(p) for p in results.glob("*/layer[0-9]/metrics.json"))
    probes = sorted(str(p) for p in results.glob("baselines/layer*/probes.json"))
    steering = sorted(str(p) for p in results.glob("baselines/layer*/steering.json"))
    lm = str(results / "lm/accuracy.json")
    config = ["--config", str(tiny_study / "tiny.yaml")]
    main([*config, "summarize", "--metrics", *metrics, "--probes", *probes, "--lm", lm,
          "--steering", *steering, "--out", str(tmp_path / "summary")])
    ours = pd.read_csv(tmp_path / "summary/metrics.csv")
    rule = pd.read_csv(results / "summary/metrics.csv")
    keys = ["mode", "layer", "slice", "metric"]
    assert len(ours) == len(rule)
    pd.testing.assert_frame_equal(ours.sort_values(keys).reset_index(drop=True),
                                  rule.sort_values(keys).reset_index(drop=True))
    main([*config, "figures", "--summary", str(tmp_path / "summary/metrics.csv"),
          "--metrics", *metrics, "--heatmap-layer", "1", "--out", str(tmp_path / "figures")])
    for name in ("accuracy_by_layer", "reconstruction_by_layer", "binding_heatmaps", "swaps"):
        assert (tmp_path / f"figures/{name}.png").stat().st_size > 10_000
    main([*config, "page", "--summary", str(tmp_path / "summary/metrics.csv"), "--lm", lm,
          "--figures", str(tmp_path / "figures"), "--out", str(tmp_path / "page.md")])
    page = (tmp_path / "page.md").read_text()
    assert "swaps.png" in page and (tmp_path / "page/swaps.png").is_file()
    assert "## Against the simplest tools" in page and "**Against the simplest tools:**" in page
    assert (tmp_path / "page/simplest_tools.png").is_file()


def test_the_command_line_slot_browser_equals_the_rules_and_exports_for_neuronpedia(
        tiny_study, tmp_path):
    """`supervised-sae slot-browser` on a joint SAE of the tiny study writes the rule's
    index, and with --neuronpedia the slots in SAEDashboard's batch layout: every slot,
    each top prompt as the LM's tokens with the slot's activation on the one it reads."""
    from supervised_sae.cli import main
    from supervised_sae.lm.load import load_lm
    from supervised_sae.lm.tokenizer import encode
    from supervised_sae.report.neuronpedia import ACTIVATION_FIELDS, FEATURE_FIELDS

    results = tiny_study / "results"
    main(["--config", str(tiny_study / "tiny.yaml"), "slot-browser",
          "--sae", str(results / "joint/layer1/sae_final.pt"),
          "--activations", str(results / "activations/activations.h5"),
          "--prompts", str(results / "data/prompts.csv"), "--model", str(results / "lm/model"),
          "--layer", "1", "--out", str(tmp_path / "browser"),
          "--neuronpedia", str(tmp_path / "np")])
    ours = tmp_path / "browser/slot_data.js"
    rule = results / "joint/layer1/slot_browser/slot_data.js"
    assert read_slot_script(ours, "window.SLOT_DATA = ")["index"] == read_slot_script(
        rule, "window.SLOT_DATA = ")["index"]
    features = [f for path in sorted((tmp_path / "np").glob("batch-*.json"))
                for f in json.loads(path.read_text())["features"]]
    assert sorted(f["feature_index"] for f in features) == list(range(len(features)))
    assert all(tuple(f) == FEATURE_FIELDS for f in features)
    _, tokenizer = load_lm(results / "lm/model")
    table = pd.read_csv(results / "data/prompts.csv", keep_default_na=False)
    panels = {}  # the browser's panels: each slot's top rows of the prompts table
    for part in (tmp_path / "browser/slots").glob("part_*.js"):
        p = int(part.stem.removeprefix("part_"))
        panels.update(read_slot_script(part, f"SLOT_PART({p}, ")["slots"])
    fired = [f for f in features if f["activations"]]
    assert fired and len(fired) == len(panels)
    for f in fired:
        assert sum(f["freq_hist_data_bar_heights"]) == round(f["frac_nonzero"] * len(table))
        top = panels[str(f["feature_index"])]["top"]
        ids = encode(tokenizer, table["prompt"].iloc[[row for row, _ in top]].tolist())
        for act, (_, value), row_ids in zip(f["activations"], top, ids, strict=True):
            assert tuple(act) == ACTIVATION_FIELDS
            assert act["tokens"] == tokenizer.convert_ids_to_tokens(row_ids)
            assert act["values"][act["qualifying_token_index"]] == value
            assert act["qualifying_token_index"] == len(row_ids) - 1
            assert not any(act["values"][:-1])  # only the last token is read


def test_gpu_check_reads_every_evaluated_run_of_a_study(tiny_study):
    """bench/gpu_check.py compares a CUDA study with a CPU one through these numbers."""
    out = subprocess.run([sys.executable, str(REPO / "bench/gpu_check.py"), "--headline",
                          str(tiny_study / "results")], capture_output=True, text=True,
                         check=True).stdout
    headline = json.loads(out)
    assert {"lm/test_seen_templates", "lm/test_heldout_templates"} <= set(headline)
    for folder in ("joint", "feature_activation", "unsupervised", "topk"):
        for layer in range(3):
            assert f"{folder}/layer{layer}/fvu" in headline
            assert f"{folder}/layer{layer}/swap_decoder" in headline
            assert f"{folder}/layer{layer}/swap_latent" in headline
    assert "next_token_prediction/layer2/value_accuracy" in headline
    assert "probes/layer1/logit_lens" in headline
    assert all(0 <= v <= 1 for k, v in headline.items() if "accuracy" in k)


def test_own_model_and_prompts_replace_training_and_generation(tiny_study, tmp_path):
    own = {**TINY, "data": {**TINY["data"],
                            "prompts": str(tiny_study / "results/data/prompts.csv")},
           "lm": {**TINY["lm"], "pretrained": str(tiny_study / "results/lm/model")}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(own))
    run = snakemake(tmp_path, "results/activations/activations.h5", "results/lm/accuracy.json",
                    "--cores", "2", "--configfile", str(tmp_path / "own.yaml"))
    out = run.stdout + run.stderr  # a real run logs its job table to stderr
    counts = job_counts(out)
    assert counts == {"import_prompts": 1, "extract_activations": 1, "lm_accuracy": 1,
                      "total": 3}
    import h5py

    with h5py.File(tmp_path / "results/activations/activations.h5") as a, \
            h5py.File(tiny_study / "results/activations/activations.h5") as b:
        assert np.allclose(a["layers/1"][:], b["layers/1"][:], atol=1e-5)


def test_config_edits_rerun_exactly_what_they_affect(tiny_study, tmp_path):
    import shutil

    work = tmp_path / "study"
    shutil.copytree(tiny_study, work, symlinks=True)  # keeps mtimes and .snakemake/

    def jobs_after(edit: dict, *targets: str) -> dict[str, int]:
        (work / "edit.yaml").write_text(yaml.safe_dump(edit))
        out = snakemake(work, "-n", *targets, "--configfile", str(work / "tiny.yaml"),
                        str(work / "edit.yaml")).stdout
        return job_counts(out) if "Job stats:" in out else {}

    assert jobs_after({}) == {}  # nothing changed: nothing to do
    upstream = {"biographies", "train_lm", "lm_accuracy", "extract_activations"}
    sae = jobs_after({"sae": {"lr": 0.002}})
    assert {"train_stage1", "train_stage2", "train_baseline", "evaluate",
            "summarize"} <= set(sae)
    assert not (upstream | {"probes", "steering"}) & set(sae), sae
    lm = jobs_after({"lm": {"lr": 0.004}})
    assert {"train_lm", "lm_accuracy", "extract_activations", "train_stage1", "probes",
            "evaluate"} <= set(lm) and "biographies" not in lm, lm
    alphas = jobs_after({"evaluation": {"alphas": [1, 2]}})
    assert {"evaluate", "summarize", "study_figures"} <= set(alphas)
    assert not {name for name in alphas if name.startswith("train_")} | (
        upstream | {"probes", "steering"}) & set(alphas), alphas
    # the baselines that are not SAEs read their own grid: no SAE is evaluated again
    steering = jobs_after({"evaluation": {"steering_alphas": [1, 3]}})
    assert steering.get("steering") == 3 and "summarize" in steering
    assert "evaluate" not in steering and not upstream & set(steering), steering

    # and a real rerun trains new tensors, with metadata that says so
    target = "results/joint/layer0/sae_final.pt"
    before = torch.load(work / target, weights_only=True)
    (work / "edit.yaml").write_text(yaml.safe_dump({"sae": {"lr": 0.002}}))
    snakemake(work, target, "--cores", "2", "--configfile", str(work / "tiny.yaml"),
              str(work / "edit.yaml"))
    after = torch.load(work / target, weights_only=True)
    assert after["metadata"]["settings"]["lr"] == 0.002
    assert not torch.equal(before["state_dict"]["W_enc"], after["state_dict"]["W_enc"])


def test_replicate_seeds_train_beside_seed_0_and_summarise_their_spread(tiny_study,
                                                                         tmp_path):
    import shutil

    import pandas as pd

    work = tmp_path / "study"
    shutil.copytree(tiny_study, work, symlinks=True)  # keeps mtimes and .snakemake/
    # at one layer of the three: a second seed per layer is the same rule at each
    (work / "seeds.yaml").write_text(yaml.safe_dump({"sae_seeds": 2, "layers": [1]}))
    config = ["--configfile", str(work / "tiny.yaml"), str(work / "seeds.yaml")]
    targets = ["results/summary/metrics_over_seeds.csv", "results/figures/accuracy_by_layer.png"]
    planned = job_counts(snakemake(work, "-n", *targets, *config).stdout)
    # the second seed's 6 runs at the layer, and nothing of seed 0 or upstream
    assert planned["train_stage1"] == 1 and planned["train_stage2"] == 3
    assert planned["train_baseline"] == 2 and planned["evaluate"] == 5
    assert not {"train_lm", "extract_activations", "probes"} & set(planned)
    snakemake(work, "--cores", "2", *targets, *config)

    first = torch.load(work / "results/joint/layer1/sae_final.pt", weights_only=True)
    second = torch.load(work / "results/joint/layer1_seed1/sae_final.pt", weights_only=True)
    assert first["metadata"]["settings"]["seed"] == 0
    assert second["metadata"]["settings"]["seed"] == 1
    assert not torch.equal(first["state_dict"]["W_enc"], second["state_dict"]["W_enc"])
    # the published protocol (a diagnostic) runs on seed 0 only, by default
    swaps = [json.loads((work / f"results/joint/layer1{r}/metrics.json").read_text())["swap"]
             for r in ("", "_seed1")]
    assert "published_protocol" in swaps[0] and "published_protocol" not in swaps[1]
    assert "latent" in swaps[1] and "entity" in swaps[1]
    summary = pd.read_csv(work / "results/summary/metrics.csv")
    assert set(summary["replicate"]) == {0, 1}
    spread = pd.read_csv(work / "results/summary/metrics_over_seeds.csv")
    binding = spread[(spread["metric"] == "binding_accuracy") & (spread["slice"] == "test_seen")]
    assert set(binding["mode"]) >= {"joint", "feature_activation", "unsupervised", "topk"}
    assert (binding["n"] == 2).all() and binding["sd"].notna().all()
    assert (spread.loc[spread["mode"] == "probe", "n"] == 1).all()


def test_the_published_protocol_runs_on_the_run_kinds_the_config_names(tiny_study, tmp_path):
    """evaluation.published_protocol_runs [joint]: a baseline's evaluation keeps its
    strict swaps and entity swaps but skips the published protocol's generation."""
    from supervised_sae import jobs
    from supervised_sae.config import load_config

    (tmp_path / "runs.yaml").write_text(yaml.safe_dump(
        {"evaluation": {"published_protocol_runs": ["joint"]}}))
    config = load_config([tiny_study / "tiny.yaml", tmp_path / "runs.yaml"])
    results = tiny_study / "results"
    swaps = {}
    for run_dir in ("joint", "unsupervised"):
        jobs.evaluate(config, results / f"{run_dir}/layer1/sae_final.pt",
                      results / "activations/activations.h5", results / "data/prompts.csv",
                      results / "lm/model", 1, tmp_path / f"{run_dir}.json")
        swaps[run_dir] = json.loads((tmp_path / f"{run_dir}.json").read_text())["swap"]
    assert "published_protocol" in swaps["joint"]
    assert "published_protocol" not in swaps["unsupervised"]
    assert {"latent", "decoder", "entity"} <= set(swaps["unsupervised"])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(
        {"evaluation": {"published_protocol_runs": ["stage1"]}}))
    with pytest.raises(ValueError, match="published_protocol_runs"):
        load_config([tiny_study / "tiny.yaml", tmp_path / "bad.yaml"])


def test_draws_run_the_whole_chain_again_with_seed_plus_d_in_their_own_tree(tiny_study,
                                                                           tmp_path):
    """draws: 2 adds results/draw1/: its own people, LM, activations and SAEs, exactly
    the study run with seed 1; draw 0 keeps today's paths and is not rerun; the summary
    and the page give the spread over draws and each draw left out."""
    import shutil

    import pandas as pd

    from supervised_sae import jobs
    from supervised_sae.config import load_config

    work = tmp_path / "study"
    shutil.copytree(tiny_study, work, symlinks=True)  # keeps mtimes and .snakemake/
    extra = {"draws": 2, "layers": [1], "modes": ["joint"], "results_page": "page.md"}
    (work / "draws.yaml").write_text(yaml.safe_dump(extra))
    config = ["--configfile", str(work / "tiny.yaml"), str(work / "draws.yaml")]
    planned = job_counts(snakemake(work, "-n", *config).stdout)
    # draw 1's chain (joint, unsupervised and TopK at layer 1), none of draw 0's
    one_each = ("biographies", "train_lm", "extract_activations", "lm_accuracy", "probes",
                "train_stage1", "train_stage2")
    assert all(planned.get(k) == 1 for k in one_each), planned
    assert planned["train_baseline"] == 2 and planned["evaluate"] == 3
    snakemake(work, "--cores", "2", *config)

    draw1 = work / "results/draw1"
    seed1 = load_config([work / "tiny.yaml", work / "draws.yaml"]).model_copy(
        update={"seed": 1})
    jobs.make_data(seed1, tmp_path / "people.csv", tmp_path / "bios.csv",
                   tmp_path / "prompts.csv")
    assert (draw1 / "data/prompts.csv").read_text() == (tmp_path / "prompts.csv").read_text()
    assert ((draw1 / "data/people.csv").read_text()
            != (work / "results/data/people.csv").read_text())
    sae = torch.load(draw1 / "joint/layer1/sae_final.pt", weights_only=True)
    assert sae["metadata"]["settings"]["seed"] == 1
    assert (draw1 / "lm/accuracy.json").is_file() and (draw1 / "topk/layer1/saelens").is_dir()

    summary = pd.read_csv(work / "results/summary/metrics.csv")
    assert set(summary["draw"]) == {0, 1}
    spread = pd.read_csv(work / "results/summary/metrics_over_seeds.csv")
    binding = spread[(spread["metric"] == "binding_accuracy")
                     & (spread["slice"] == "test_seen") & (spread["mode"] == "joint")]
    assert (binding["over"] == "draws").all() and (binding["n"] == 2).all()
    page = (work / "page.md").read_text()
    assert "mean ± sd over 2 draws" in page and "| target | all draws | without draw 0 |" in page
    # the run's own command: its --cores, not the page job's one thread
    assert "- Command: `snakemake --cores 2 --configfile " in page, page[:1500]


def test_an_l0_sweep_trains_joint_and_its_baseline_at_each_k_from_the_same_activations(
        tiny_study, tmp_path):
    """sweep.values [4, 8] at layer 1 with a TopK encoder: stage 1, joint and the TopK
    baseline again per k in results/sweep/k={k}/, nothing upstream rerun; the summary's
    sweep column carries k, and the code is as sparse as k says."""
    import shutil

    from supervised_sae.evaluation.summary import build_summary

    work = tmp_path / "study"
    shutil.copytree(tiny_study, work, symlinks=True)  # keeps mtimes and .snakemake/
    extra = {"sae": {"encoder": "topk", "k": 8}, "sweep": {"values": [4, 8], "layer": 1}}
    (work / "sweep.yaml").write_text(yaml.safe_dump(extra))
    config = ["--configfile", str(work / "tiny.yaml"), str(work / "sweep.yaml")]
    targets = [f"results/sweep/k={k}/{run}/layer1/metrics.json" for k in (4, 8)
               for run in ("joint", "unsupervised")]
    planned = job_counts(snakemake(work, "-n", *targets, *config).stdout)
    assert planned == {"train_stage1": 2, "train_stage2": 2, "train_baseline": 2,
                       "evaluate": 4, "total": 10}
    snakemake(work, "--cores", "2", *targets, *config)

    for k in (4, 8):
        sae = torch.load(work / f"results/sweep/k={k}/joint/layer1/sae_final.pt",
                         weights_only=True)
        assert sae["metadata"]["settings"]["k"] == k
        assert sae["metadata"]["settings"]["encoder"] == "topk"
    summary = build_summary([work / t for t in targets], [], None)
    l0 = summary[(summary["metric"] == "l0_free") & (summary["slice"] == "test_seen")]
    by_k = l0.groupby("sweep")["value"].max()
    assert list(by_k.index) == [4.0, 8.0] and (by_k <= by_k.index).all()
    assert by_k[4.0] < by_k[8.0]


def test_with_several_draws_no_job_holds_two_cores(tmp_path):
    """With several draws every job asks for one thread, so on two cores a job of one
    draw never waits for both (the extraction once asked for two and idled a core while
    the last draw's LM trained); with one draw, the LM and the extraction take both."""
    for draws, most in ((3, 1), (1, 2)):
        (tmp_path / "draws.yaml").write_text(yaml.safe_dump({**TINY, "draws": draws}))
        planned = snakemake(tmp_path, "-n", "--cores", "2", "--configfile",
                            str(tmp_path / "draws.yaml")).stdout
        threads = [int(n) for n in re.findall(r"^\s+threads: (\d+)$", planned, re.M)]
        assert max(threads, default=1) == most


def test_the_sweeps_own_seeds_reach_every_value_and_the_main_studys_point(tmp_path):
    """sweep.sae_seeds 2 beside a study of one SAE seed: each swept value runs seeds 0
    and 1, and so do the main study's runs at the swept layer of the first draw (its
    point of the fronts), and no other layer or run kind."""
    extra = {**TINY, "sae": {**TINY["sae"], "encoder": "topk", "k": 8},
             "sweep": {"values": [4], "layer": 1, "sae_seeds": 2}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(extra))
    planned = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "sweep.yaml")).stdout
    for run in ("joint", "unsupervised"):
        for layer in ("layer1", "layer1_seed1"):
            assert f"results/sweep/k=4/{run}/{layer}/metrics.json" in planned
        assert f"results/{run}/layer1_seed1/metrics.json" in planned
    assert "results/joint/layer0_seed1/" not in planned
    assert "results/feature_activation/layer1_seed1/" not in planned


def test_the_reproduction_row_trains_the_seeds_sae_beside_a_topk_study(tiny_study, tmp_path):
    """reproduction.layer 1 beside a TopK study: stage 1 and joint again with the seed's
    ReLU and L1 in results/reproduction/, from the same activations, nothing upstream
    rerun; the study's default targets include it and the summary marks its rows."""
    import shutil

    from supervised_sae.evaluation.summary import build_summary, main_study

    work = tmp_path / "study"
    shutil.copytree(tiny_study, work, symlinks=True)  # keeps mtimes and .snakemake/
    extra = {"sae": {"encoder": "topk", "k": 8}, "reproduction": {"layer": 1}}
    (work / "reproduction.yaml").write_text(yaml.safe_dump(extra))
    config = ["--configfile", str(work / "tiny.yaml"), str(work / "reproduction.yaml")]
    target = "results/reproduction/joint/layer1/metrics.json"
    assert target in snakemake(work, "-n", *config).stdout
    planned = job_counts(snakemake(work, "-n", target, *config).stdout)
    assert planned == {"train_stage1": 1, "train_stage2": 1, "evaluate": 1, "total": 3}
    snakemake(work, "--cores", "2", target, *config)

    sae = torch.load(work / "results/reproduction/joint/layer1/sae_final.pt",
                     weights_only=True)
    settings = sae["metadata"]["settings"]
    assert (settings["encoder"], settings["sparsity"], settings["n_free"]) == ("relu", "seed", 64)
    summary = build_summary([work / target, work / "results/joint/layer1/metrics.json"],
                            [], None)
    assert set(summary["reproduction"]) == {True, False}
    assert not main_study(summary)["reproduction"].any()
    l0 = summary[(summary["metric"] == "l0_free") & (summary["slice"] == "test_seen")
                 & summary["reproduction"]]
    assert l0["value"].iloc[0] > 8  # the seed's L1 leaves the code denser than TopK's k


def test_embedding_output_is_a_layer_beside_the_blocks(tiny_study, tmp_path):
    """layers: [emb, ...] trains and evaluates on the embedding output that extraction
    already stored; every prompt ends in "?", so only the position there tells relations
    apart, and a linear probe reads the relation far worse than after a block."""
    import shutil

    work = tmp_path / "study"
    shutil.copytree(tiny_study, work, symlinks=True)  # keeps mtimes and .snakemake/
    (work / "emb.yaml").write_text(yaml.safe_dump({"layers": ["emb", 0, 1, 2]}))
    config = ["--configfile", str(work / "tiny.yaml"), str(work / "emb.yaml")]
    planned = job_counts(snakemake(work, "-n", *config).stdout)
    assert planned["train_stage1"] == 1 and planned["train_stage2"] == 3
    assert planned["evaluate"] == 5 and planned["probes"] == 1
    assert not {"train_lm", "extract_activations"} & set(planned)
    targets = ["results/joint/layeremb/metrics.json", "results/baselines/layeremb/probes.json"]
    snakemake(work, "--cores", "2", *targets, *config)

    emb = json.loads((work / targets[0]).read_text())
    assert emb["layer"] == -1 and 0 <= emb["slices"]["test_seen"]["fvu"] < 1
    probes = json.loads((work / targets[1]).read_text())
    block = json.loads((work / "results/baselines/layer2/probes.json").read_text())
    assert probes["layer"] == -1
    assert probes["relation"]["test_seen"] < block["relation"]["test_seen"] - 0.2


def ci_slurm_cluster_answers() -> bool:
    """Whether the one-node cluster of .ci/slurm-cluster is up (never a real cluster:
    the test submits jobs)."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return shown.returncode == 0 and re.search(r"^ClusterName\s*=\s*saeci$", shown.stdout,
                                               re.M) is not None


@pytest.mark.slurm
def test_slurm_profile_runs_each_job_on_the_cluster_like_a_local_run(tiny_study, tmp_path):
    """profiles/slurm on a real (one-node) Slurm: `.ci/slurm-cluster start` makes one."""
    if not ci_slurm_cluster_answers():
        pytest.skip("the test cluster is not up (CI starts it: .ci/slurm-cluster start)")
    work = tmp_path / "slurm_study"
    work.mkdir()
    # ids auto + simulate: each GPU job uses the GPU Slurm gave it, computing on the CPU
    config = {**TINY, "devices": {"ids": "auto", "simulate": True}}
    (work / "tiny.yaml").write_text(yaml.safe_dump(config))
    # the GPU rules up to stage 2 (evaluation would add one more ~30 s polling round)
    targets = [f"results/joint/layer{layer}/sae_final.pt" for layer in range(3)]
    snakemake(work, "--profile", str(REPO / "profiles/slurm"), "--configfile",
              str(work / "tiny.yaml"),
              # no slurmdbd here, so no sacct: poll squeue, and start polling soon
              "--slurm-status-command", "squeue",
              "--slurm-init-seconds-before-status-checks", "1",
              "--slurm-keep-successful-logs", *targets)

    # every job of the DAG ran as a Slurm job: the plugin keeps one log per job id
    job_ids = {}
    for log in (work / ".snakemake/slurm_logs").rglob("*.log"):
        rule = next(p for p in log.parts if p.startswith("rule_"))[len("rule_"):]
        job_ids.setdefault(rule, []).append(log.stem)
    assert {rule: len(ids) for rule, ids in job_ids.items()} == {
        "biographies": 1, "train_lm": 1, "extract_activations": 1, "train_stage1": 3,
        "train_stage2": 3}
    # GPU rules went to the GPU partition with one GPU each; the data rule did not
    for rule, ids in job_ids.items():
        for job_id in ids:
            shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True,
                                   text=True, check=True).stdout
            partition = re.search(r"Partition=(\S+)", shown).group(1)
            assert partition == ("cpu" if rule == "biographies" else "gpu"), (rule, shown)
            if rule != "biographies":
                assert re.search(r"gres[/:]gpu[:=]1\b", shown), (rule, shown)
    # concurrent training jobs held distinct GPUs (Slurm's CUDA_VISIBLE_DEVICES)
    spans = job_spans(work / "results/logs")
    assert len(spans) == 6 and {s.device for s in spans} <= {"0", "1", "2"}
    for i, a in enumerate(spans):
        for b in spans[i + 1 :]:
            if a.start < b.end and b.start < a.end:
                assert a.device != b.device, (a, b)
    # the same SAE tensors as the local run of the same config
    for layer in range(3):
        ours = torch.load(work / f"results/joint/layer{layer}/sae_final.pt", weights_only=True)
        local = torch.load(tiny_study / f"results/joint/layer{layer}/sae_final.pt",
                           weights_only=True)
        for key, value in local["state_dict"].items():
            assert torch.allclose(ours["state_dict"][key], value, atol=1e-5), (layer, key)


def test_the_built_in_lm_runs_end_to_end_with_a_bpe_tokenizer(tiny_study, tmp_path):
    """lm.tokenizer: bpe trains the LM on a byte-level BPE (values several tokens), and
    every rule after it runs and scores whole answers: the store holds multi-token
    values, the LM's whole-answer accuracy sits beside its first token's."""
    import shutil

    from supervised_sae.data.store_reader import load_layer

    work = tmp_path / "study"
    shutil.copytree(tiny_study, work, symlinks=True)
    extra = {"lm": {"tokenizer": "bpe", "bpe_vocab_size": 600, "n_positions": 256},
             "layers": [1],
             "modes": ["joint"], "results_page": "page.md"}
    (work / "bpe.yaml").write_text(yaml.safe_dump(extra))
    snakemake(work, "--cores", "2", "--configfile", str(work / "tiny.yaml"),
              str(work / "bpe.yaml"))
    data = load_layer(work / "results/activations/activations.h5", 1)
    assert max(len(v) for v in data.value_tokens) > 2
    accuracy = json.loads((work / "results/lm/accuracy.json").read_text())
    train = accuracy["train_seen_templates"]
    assert train["accuracy"] <= train["first_token_accuracy"]
    metrics = json.loads((work / "results/joint/layer1/metrics.json").read_text())
    assert "first_token_names_value_share" in metrics["slices"]["test_seen"]
    assert "whole answer" in (work / "page.md").read_text()
