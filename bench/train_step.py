"""Time the SAE training step at the seed's shape (768 -> 100,000 + 6 slots, batch 64).

    python bench/train_step.py                  # CPU (or CUDA if present), every mode
    python bench/train_step.py --steps 5 --modes joint --n-free 100000

Prints JSON: ms per step, examples per second and the projected epoch time for a given
number of training examples. Data are random: the step's cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from supervised_sae.losses import MODE_COMPONENTS
from supervised_sae.model import SupervisedSAE
from supervised_sae.training import (
    TrainSettings,
    logged_components,
    make_optimizer,
    make_step,
    owned_parameters,
)


def time_mode(mode: str, args, device: torch.device) -> dict:
    settings = TrainSettings(n_free=args.n_free, batch_size=args.batch,
                             indep_policy=args.indep_policy)
    model = SupervisedSAE(args.d_model, args.n_free, 6, args.n_answers, seed=0).to(device)
    params = owned_parameters(model, mode)
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in params))
    loss_settings = settings.loss_settings()
    step = make_step(model, make_optimizer(params, settings, device), MODE_COMPONENTS[mode],
                     loss_settings, logged_components(mode, loss_settings, args.n_free),
                     torch.autocast(device.type, enabled=False),
                     relation_slots=mode != "stage1")
    x = torch.randn(args.batch, args.d_model, device=device)
    rel = torch.randint(0, 6, (args.batch,), device=device)
    ans = torch.randint(0, args.n_answers, (args.batch,), device=device)
    for _ in range(args.warmup):
        step(x, rel, ans)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        row = step(x, rel, ans)
    row.cpu()
    sync()
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    steps_per_epoch = -(-args.epoch_examples // args.batch)
    return {"mode": mode, "ms_per_step": round(ms, 2),
            "examples_per_s": round(args.batch / ms * 1e3, 1),
            "epoch_s_projected": round(ms * steps_per_epoch / 1e3, 1),
            "epoch_examples": args.epoch_examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-free", type=int, default=100_000)
    parser.add_argument("--n-answers", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--indep-policy", default="skip_above_threshold")
    parser.add_argument("--epoch-examples", type=int, default=30_000,
                        help="training examples per epoch for the projection (full config: "
                        "5,000 train people x 6 relations x 3 seen templates = 90,000)")
    parser.add_argument("--modes", nargs="+",
                        default=["stage1", "joint", "separate_activation", "separate_value"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [time_mode(m, args, device) for m in args.modes]
    print(json.dumps({"device": str(device), "torch": str(torch.__version__),
                      "threads": torch.get_num_threads(), "d_model": args.d_model,
                      "n_free": args.n_free, "batch": args.batch, "results": rows}, indent=1))
    for r in rows:
        print(f"{r['mode']:>22}: {r['ms_per_step']:9.1f} ms/step  {r['examples_per_s']:8.1f} "
              f"ex/s  epoch of {r['epoch_examples']} examples ~ {r['epoch_s_projected']:.0f} s")


if __name__ == "__main__":
    main()
