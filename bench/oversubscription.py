"""Two torch processes on a 2-core machine: what OpenMP's wait policy costs them.

    python bench/oversubscription.py [--steps 40] [--json out.json]

Each process trains the study's LM shape (6 blocks, 128 wide, vocabulary 2,049; batch
32 x 20 tokens) for `--steps` steps and reports its time. Side by side in one run:
one process of 2 threads alone; two at once of 2 threads each (OpenMP's default,
active waiting); the same with OMP_WAIT_POLICY=PASSIVE; two at once of 1 thread each.
This is why the test suite's workers (and every process they start) wait passively:
two workers on two cores start LM jobs of two threads each (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import time, torch
import torch.nn.functional as F
from supervised_sae.lm.train import build_model
model = build_model(2049, 6, 128, 4, 128, 0, 1, seed=0)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(2, 2049, (32, 20), generator=torch.Generator().manual_seed(0))
def step():
    optimizer.zero_grad()
    logits = model(input_ids=ids).logits[:, :-1]
    F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    optimizer.step()
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range({steps}):
    step()
print(time.perf_counter() - start)
"""

SETTINGS = {  # name: (processes at once, threads each, OMP_WAIT_POLICY or None)
    "one process, 2 threads, alone": (1, 2, None),
    "two at once, 2 threads each (active waiting, the default)": (2, 2, None),
    "two at once, 2 threads each, OMP_WAIT_POLICY=PASSIVE": (2, 2, "PASSIVE"),
    "two at once, 1 thread each": (2, 1, None),
}


def run(processes: int, threads: int, policy: str | None, steps: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = str(threads)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    children = [subprocess.Popen([sys.executable, "-c", CHILD.format(steps=steps)], env=env,
                                 stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [float(c.communicate()[0].strip().splitlines()[-1]) for c in children]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    results = {name: run(*setting, args.steps) for name, setting in SETTINGS.items()}
    alone = results["one process, 2 threads, alone"][0]
    print(f"{args.steps} LM steps per process, {os.cpu_count()} cores")
    print("| setting | seconds per process | x one process alone |\n|---|---|---|")
    for name, seconds in results.items():
        worst = max(seconds)
        print(f"| {name} | {', '.join(f'{s:.2f}' for s in seconds)} | {worst / alone:.2f} |")
    print(f"({time.perf_counter() - start:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "seconds": results}, indent=1))


if __name__ == "__main__":
    main()
