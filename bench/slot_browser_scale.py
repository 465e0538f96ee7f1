"""The slot browser at the seed's width: a random TopK SAE with 100,000 free slots on one
layer of a real activation file, its stats and page built in bounded memory, and (with
Chromium) its index opened from disk. Prints time, peak memory and file sizes as JSON.

    python bench/slot_browser_scale.py --activations results/activations/activations.h5 \
        --layer 2 --out bench/out/browser_100k
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch

from supervised_sae.data.store_reader import load_layer
from supervised_sae.evaluation.slot_stats import slot_stats
from supervised_sae.lm.readout import Readout
from supervised_sae.report.slot_browser import DATA_FILE, PAGE_FILE, PARTS_DIR, write_browser
from supervised_sae.sae.model import SupervisedSAE, make_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activations", required=True)
    parser.add_argument("--prompts", help="its prompts table (default: beside data/)")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--n-free", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = load_layer(args.activations, args.layer)
    prompts = args.prompts or Path(args.activations).parents[1] / "data/prompts.csv"
    table = pd.read_csv(prompts, keep_default_na=False)
    sae = SupervisedSAE(data.d_model, args.n_free, len(data.relation_names),
                        len(data.answer_values), value_head="slot_only", seed=0,
                        encoder=make_encoder("topk", {"k": args.k}, args.n_free))
    vocab = 2000
    readout = Readout("layer", 1e-5, torch.ones(data.d_model), torch.zeros(data.d_model),
                      torch.randn(vocab, data.d_model), torch.zeros(vocab))
    start = time.perf_counter()
    template = torch.tensor(table["template"].to_numpy(), dtype=torch.long)
    stats = slot_stats(sae, data, template, readout, [f"t{i}" for i in range(vocab)])
    built = time.perf_counter()
    out = Path(args.out)
    write_browser(stats, table, out / "slot_browser", "100,000 random slots",
                  out / "slot_browser.html")
    result = {"n_free": args.n_free, "rows": len(data.x), "stats_s": round(built - start, 1),
              "write_s": round(time.perf_counter() - built, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "data_file_mb": round((out / "slot_browser" / DATA_FILE).stat().st_size / 2**20,
                                    1),
              "single_file_kb": round((out / "slot_browser.html").stat().st_size / 1024, 1)}
    folder = out / "slot_browser"
    result["parts"] = len(list((folder / PARTS_DIR).iterdir()))
    result["largest_part_kb"] = round(max(p.stat().st_size for p in
                                          (folder / PARTS_DIR).iterdir()) / 1024, 1)
    chromium = shutil.which("chromium")
    if chromium:
        page = (folder / PAGE_FILE).resolve()
        last = max(s["id"] for s in stats["slots"] if s["fires"])
        for name, view in (("index", ""), ("index_and_last_panel", f"#open={last}")):
            begin = time.perf_counter()
            dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                  "--virtual-time-budget=20000", "--dump-dom",
                                  f"file://{page}{view}"],
                                 capture_output=True, text=True, timeout=300).stdout
            result[f"{name}_open_s"] = round(time.perf_counter() - begin, 1)
            result[f"{name}_rows_shown"] = dom.count('class="slot"')
        result["last_panel_shown"] = f"slot {last} (" in dom
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
