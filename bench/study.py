"""Wall time of the quickstart study, and a projection of the full study.

    python bench/study.py --run-quickstart                 # run it in a scratch folder
    python bench/study.py --step-json step.json            # project from measured steps

--run-quickstart runs `snakemake --cores 2 --configfile config/quickstart.yaml` in a
fresh scratch copy of the workflow and reports its wall time and the time per rule from
Snakemake's `benchmark:` files.

The projection counts the SAE training steps of a config (people, test fraction,
relations, seen question templates, epochs, batch size, layers, modes, the unsupervised
baseline) and multiplies them by per-step times measured by bench/train_step.py
(--step-json, any device), serially on one device and on `--devices` at once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import yaml
from train_step import OPTIMIZER_BYTES_PER_PARAM, step_work

from supervised_sae.data.biographies import QUESTION_TEMPLATES

REPO = Path(__file__).resolve().parents[1]
COPIED = ("Snakefile", "workflow", "config", "profiles")
# Nominal H100 SXM figures, for a floor estimate where no GPU was measured: HBM3
# bandwidth and dense TF32 tensor-core rate (NVIDIA data sheet). Not a measurement.
H100_NOMINAL = {"bandwidth_gbs": 3350.0, "tf32_gflops": 495_000.0}


def run_quickstart(config: str, cores: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        for name in COPIED:
            src = REPO / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, Path(tmp) / name)
        t0 = time.perf_counter()
        command = [sys.executable, "-m", "snakemake", "--cores", str(cores),
                   "--configfile", config]
        subprocess.run(command, cwd=tmp, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        per_rule: dict[str, float] = defaultdict(float)
        for tsv in (Path(tmp) / "results/benchmarks").rglob("*.tsv"):
            rel = tsv.relative_to(Path(tmp) / "results/benchmarks")
            rule = rel.parts[0].removesuffix(".tsv") if len(rel.parts) > 1 else rel.stem
            per_rule[rule] += float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
    return {"config": config, "cores": cores, "wall_s": round(wall, 1),
            "benchmarked_job_s_by_group": {k: round(v, 1) for k, v in sorted(per_rule.items())}}


def training_steps(config: dict) -> dict:
    """SAE training steps per stage (`steps`), summed over layers, for a config."""
    data, sae = config["data"], config["sae"]
    n_train_people = round(data["n_people"] * (1 - data["test_fraction"]))
    statements = int(data.get("statement_wordings", False))
    seen = {r: len(QUESTION_TEMPLATES[r]) - data["heldout_templates"] + statements
            for r in data["relations"]}
    n_train = n_train_people * sum(seen.values())
    steps_per_epoch = -(-n_train // sae["batch_size"])
    layers = config["layers"]
    n_layers = config["lm"]["n_layer"] if layers == "all" else len(layers)
    steps = {"stage1": sae["stage1_epochs"] * steps_per_epoch * n_layers}
    for mode in config["modes"]:
        steps[mode] = sae["stage2_epochs"] * steps_per_epoch * n_layers
    if "separate_value" in steps and "separate_activation" not in steps:
        steps["separate_activation"] = steps["separate_value"]  # its starting point
    if config.get("evaluation", {}).get("unsupervised_baseline", True):
        # the baselines train without value heads for both stages' epochs: timed as
        # stage1 (a lower bound: sparsity adds a few elementwise passes; TopK's k
        # largest of each row is cheap next to the products)
        for baseline in ("unsupervised", "topk"):
            steps[baseline] = (sae["stage1_epochs"] + sae["stage2_epochs"]) * \
                steps_per_epoch * n_layers
    return {"train_examples_per_layer": n_train, "steps_per_epoch": steps_per_epoch,
            "layers": n_layers, "steps": steps}


def project(config: dict, step_json: dict, devices: int) -> dict:
    steps = training_steps(config)["steps"]
    ms = {r["mode"]: r["ms_per_step"] for r in step_json["results"]
          if r["batch"] == config["sae"]["batch_size"]}
    if "stage1" in ms:
        for baseline in ("unsupervised", "topk"):
            ms.setdefault(baseline, ms["stage1"])
    missing = [stage for stage in steps if stage not in ms]
    if missing:
        raise SystemExit(f"--step-json has no batch-{config['sae']['batch_size']} time for "
                         f"{missing}; run bench/train_step.py with those modes")
    hours = {stage: n * ms[stage] / 3.6e6 for stage, n in steps.items()}
    total = sum(hours.values())
    return {"device": step_json["device"], "steps": steps,
            "ms_per_step": {stage: ms[stage] for stage in steps},
            "hours_by_stage": {k: round(v, 2) for k, v in hours.items()},
            "hours_one_device": round(total, 1),
            f"hours_{devices}_devices": round(total / devices, 1)}


def h100_floor_step_ms(config: dict) -> dict:
    """Floor per step on an H100 from nominal specs (optimizer bytes + matrix FLOPs)."""
    sae = config["sae"]
    d = config["lm"]["n_embd"]
    n_answers = 1000  # order of the answer vocabulary at full scale; minor in the sum
    out = {}
    for mode in ("stage1", "joint", "separate_activation", "separate_value"):
        work = step_work(mode, d, sae["n_free"], n_answers, sae["batch_size"])
        out[mode] = (work["flops"] / H100_NOMINAL["tf32_gflops"] / 1e6 + work["params"]
                     * OPTIMIZER_BYTES_PER_PARAM / H100_NOMINAL["bandwidth_gbs"] / 1e6)
    return {"device": "H100 floor from nominal specs (not measured)",
            "results": [{"mode": m, "batch": sae["batch_size"], "ms_per_step": round(v, 3)}
                        for m, v in out.items()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-quickstart", action="store_true")
    parser.add_argument("--quickstart-config", default="config/quickstart.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--config", default=str(REPO / "config/config.yaml"),
                        help="the config to project (default: the full study)")
    parser.add_argument("--step-json", type=Path, action="append", default=[],
                        help="output of bench/train_step.py --json (repeatable)")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    out: dict = {}
    if args.run_quickstart:
        out["quickstart"] = run_quickstart(args.quickstart_config, args.cores)
        print(json.dumps(out["quickstart"], indent=1), flush=True)
    config = yaml.safe_load(Path(args.config).read_text())
    out["full_study_steps"] = training_steps(config)
    measured = [json.loads(p.read_text()) for p in args.step_json]
    out["projections"] = [project(config, m, args.devices)
                          for m in [*measured, h100_floor_step_ms(config)]]
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
