"""One evaluation job (`supervised_sae.jobs.evaluate`) of two checkouts side by side on
the same inputs: wall time and peak memory of each, and whether their metrics agree.

    python bench/evaluation_job.py --before /path/to/old/checkout --after . \
        --config config/study.yaml --sae results/joint/layer2/sae_final.pt \
        --activations results/activations/activations.h5 \
        --prompts results/data/prompts.csv --model results/lm/model --layer 2

Each run is a fresh process (its peak RSS is its own) with one torch thread, as the
workflow runs an evaluation job; the checkouts alternate, `--repeats` times each, so a
machine's drift falls on both. Prints and writes a JSON with every run, the median
ratio after/before, and the largest difference between the two metrics.json files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads({threads})
from supervised_sae import jobs
from supervised_sae.config import load_config
config = load_config({configs!r})
start = time.perf_counter()
jobs.evaluate(config, {sae!r}, {activations!r}, {prompts!r}, {model!r}, {layer}, {out!r})
print(json.dumps({{"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def numbers(value, prefix=""):
    """(dotted key, number) of every number in a metrics.json."""
    if isinstance(value, bool | int | float):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{prefix}[{i}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout to compare")
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--config", action="append", default=[])
    for name in ("--sae", "--activations", "--prompts", "--model"):
        parser.add_argument(name, required=True)
    parser.add_argument("--before-sae", help="the before checkout's SAE (default: --sae), "
                        "e.g. one trained on its own store format")
    parser.add_argument("--before-activations", help="the before checkout's activations")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/out/evaluation_job"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for repeat in range(args.repeats):
        for side in ("before", "after"):
            metrics = args.out / f"{side}_metrics.json"
            code = CHILD.format(src=str((getattr(args, side) / "src").resolve()),
                                threads=args.threads,
                                configs=[str(Path(c).resolve()) for c in args.config],
                                sae=(side == "before" and args.before_sae) or args.sae,
                                activations=(side == "before" and args.before_activations)
                                or args.activations,
                                prompts=args.prompts, model=args.model, layer=args.layer,
                                out=str(metrics))
            done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  text=True)
            if done.returncode:
                sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(side, repeat, runs[side][-1], flush=True)
    before, after = (dict(numbers(json.loads((args.out / f"{s}_metrics.json").read_text())))
                     for s in ("before", "after"))
    shared = before.keys() & after.keys()
    diff = max((abs(before[k] - after[k]), k) for k in shared)
    median = {side: {key: statistics.median(r[key] for r in rs)
                     for key in ("seconds", "peak_rss_mb")} for side, rs in runs.items()}
    result = {"runs": runs, "median": median,
              "time_ratio": median["after"]["seconds"] / median["before"]["seconds"],
              "memory_ratio": median["after"]["peak_rss_mb"] / median["before"]["peak_rss_mb"],
              "numbers_compared": len(shared), "only_before": sorted(before.keys() - shared),
              "only_after": sorted(after.keys() - shared),
              "largest_difference": {"key": diff[1], "value": diff[0]}}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
