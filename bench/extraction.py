"""Extraction throughput and peak memory: ours vs a naive loop, at N and 4N prompts.

    python bench/extraction.py --model results/lm/model --prompts results/data/prompts.csv

Each measurement runs in its own process so its peak resident memory (ru_maxrss) is its
own; times include loading the model and tokenizing. The naive loop is what one writes
first: one prompt at a time, a hook per layer, every activation kept in Python lists
until the end, then written to HDF5. Ours batches, sorts by length inside windows,
skips the LM head and streams each window to HDF5.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import h5py, numpy as np, pandas as pd, torch
from supervised_sae.data.prompts import read_prompts
from supervised_sae.lm.extract import extract_activations
from supervised_sae.lm.family import transformer_blocks
from supervised_sae.data.biographies import RELATIONS
from supervised_sae.lm.load import load_lm
from supervised_sae.lm.tokenizer import encode

method, model, prompts_path, repeat, out = sys.argv[1:6]
table = read_prompts(prompts_path)
table = pd.concat([table] * int(repeat), ignore_index=True)
torch.set_num_threads(2)
t0 = time.perf_counter()
if method == "ours":
    extract_activations(model, table, RELATIONS, out, batch_size=256)
else:
    lm, tok = load_lm(model)
    blocks = transformer_blocks(lm)
    kept = [[] for _ in blocks]
    grab = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: grab.__setitem__(k, o[0]))
             for k, b in enumerate(blocks)]
    with torch.no_grad():
        for ids in encode(tok, table["prompt"]):
            lm(input_ids=torch.tensor([ids]))
            for k in range(len(blocks)):
                kept[k].append(grab[k][0, -1].clone())
    with h5py.File(out, "w") as f:
        for k, rows in enumerate(kept):
            f[f"layers/{k}"] = torch.stack(rows).numpy()
elapsed = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"method": method, "prompts": len(table), "seconds": elapsed,
                  "prompts_per_s": len(table) / elapsed, "peak_rss_mb": peak_mb}))
"""


def measure(method: str, model: str, prompts: str, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "acts.h5"
        proc = subprocess.run([sys.executable, "-c", CHILD, method, model, prompts,
                               str(repeat), str(out)], capture_output=True, text=True,
                              check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="results/lm/model")
    parser.add_argument("--prompts", default="results/data/prompts.csv")
    parser.add_argument("--repeat", type=int, default=4,
                        help="N = repeat x the table (default 4: past the allocator's warm-up, "
                        "which takes ~10 windows of 2,048 prompts)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    rows = []
    for method in ("ours",) + (() if args.skip_naive else ("naive",)):
        for factor in (1, 4):
            rows.append(measure(method, args.model, args.prompts, args.repeat * factor))
    by = {(r["method"], r["prompts"]): r for r in rows}
    n = min(r["prompts"] for r in rows)
    report = {"rows": rows,
              "ours_peak_growth_4x": by[("ours", 4 * n)]["peak_rss_mb"]
              / by[("ours", n)]["peak_rss_mb"]}
    if not args.skip_naive:
        report["speedup_vs_naive"] = {str(k): by[("ours", k)]["prompts_per_s"]
                                      / by[("naive", k)]["prompts_per_s"] for k in (n, 4 * n)}
        report["naive_peak_growth_4x"] = (by[("naive", 4 * n)]["peak_rss_mb"]
                                          / by[("naive", n)]["peak_rss_mb"])
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    for r in rows:
        print(f"{r['method']:>6} {r['prompts']:>8} prompts: {r['prompts_per_s']:9.1f} prompts/s,"
              f" peak RSS {r['peak_rss_mb']:7.1f} MB")


if __name__ == "__main__":
    main()
