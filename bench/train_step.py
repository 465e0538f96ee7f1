"""The SAE training step at the seed's shape (768 -> 100,000 + 6 slots, batch 64).

    python bench/train_step.py                       # CPU, or CUDA when present
    python bench/train_step.py --modes joint --steps 8 --json bench/out/step.json

Measured side by side in one process:
- the hardware floor: the step's matrix FLOPs at the matmul rate measured on the step's
  own shapes, plus the optimizer's bytes (28 per trained parameter) at the best
  streaming bandwidth measured (copy and a += b), both measured here (on CUDA the rate
  is measured with TF32 on, as the package's step runs; the reference runs without);
- the reference step (bench/reference_step.py: the seed's losses written literally);
- the package's step, per mode; on CUDA also at batch 256 and 1024;
- exact indep at 100,000 free slots: its overhead on the joint step;
- the value heads (gated, lens, slot_only) side by side in the modes that train them.
The reference runs before the package tunes the CPU allocator (supervised_sae.backend),
as a plain script would. Each figure is the median over timed blocks of steps.
Prints JSON and a table. Data are random: a step's cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from reference_step import ReferenceTrainer, write_random_activations

from supervised_sae.backend import configure_backend
from supervised_sae.config import SaeConfig
from supervised_sae.lm.readout import Readout
from supervised_sae.runs import RUN_KINDS
from supervised_sae.sae.losses import LossSettings
from supervised_sae.sae.model import SupervisedSAE, make_encoder
from supervised_sae.train.step import logged_components, make_step, stage_components
from supervised_sae.train.trainer import make_optimizer, train_only_owned

N_RELATIONS = 6
OPTIMIZER_BYTES_PER_PARAM = 28  # AdamW fp32: read p, grad, m, v; write p, m, v


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(run, device: torch.device, warmup: int, blocks: int, block_steps: int) -> float:
    """Median over `blocks` timed blocks of `block_steps` calls, in ms per call."""
    for _ in range(warmup):
        run()
    synchronize(device)
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(block_steps):
            run()
        synchronize(device)
        times.append((time.perf_counter() - t0) / block_steps * 1e3)
    return statistics.median(times)


def step_work(mode: str, d: int, n_free: int, n_answers: int, batch: int) -> dict:
    """Matrix FLOPs and AdamW bytes of one step of `mode` (what the floor is made of)."""
    slots = n_free + N_RELATIONS
    big = 2 * batch * d * slots  # one batch x d x slots product
    value = 2 * batch * N_RELATIONS * d * n_answers  # the gated head's one product
    enc_dec = 2 * d * slots + slots + d
    heads = N_RELATIONS * d * n_answers + N_RELATIONS * n_answers
    if mode == "separate_value":  # encoder and decoder forward only; heads train
        return {"flops": 2 * big + 3 * value, "params": heads}
    flops = 5 * big  # forward 2, backward 3 (no input gradient)
    if mode in ("joint", "separate_activation"):
        flops += 3 * 2 * batch * N_RELATIONS * n_free  # ortho's relation x free block
    params = enc_dec
    if mode == "joint":
        flops, params = flops + 3 * value, params + heads
    return {"flops": flops, "params": params}


def matmul_gflops(d: int, slots: int, batch: int, device: torch.device, reps: int) -> float:
    """The rate on the step's five big products (preallocated outputs)."""
    f32 = dict(device=device, dtype=torch.float32)
    x, g = torch.randn(batch, d, **f32), torch.randn(batch, d, **f32)
    z = torch.randn(batch, slots, **f32)
    w_enc, w_dec = torch.randn(d, slots, **f32), torch.randn(slots, d, **f32)
    out_z, out_x = torch.empty(batch, slots, **f32), torch.empty(batch, d, **f32)
    out_enc, out_dec = torch.empty(d, slots, **f32), torch.empty(slots, d, **f32)

    def products():
        torch.mm(x, w_enc, out=out_z)  # encode
        torch.mm(z, w_dec, out=out_x)  # decode
        torch.mm(z.t(), g, out=out_dec)  # grad W_dec
        torch.mm(g, w_dec.t(), out=out_z)  # grad z
        torch.mm(x.t(), z, out=out_enc)  # grad W_enc

    return 5 * 2 * batch * d * slots / median_ms(products, device, 1, reps, 1) / 1e6


def square_matmul_gflops(device: torch.device, reps: int, n: int = 4096) -> float:
    a, b, c = (torch.randn(n, n, device=device) for _ in range(3))
    return 2 * n**3 / median_ms(lambda: torch.mm(a, b, out=c), device, 1, reps, 1) / 1e6


def bandwidth_gbs(device: torch.device, reps: int) -> tuple[float, float]:
    """Streaming bandwidth over 1 GiB: copy (read + write) and a += b (2 reads, 1 write)."""
    src = torch.randn(256 * 2**20, device=device)
    dst = torch.empty_like(src)
    copy = 2 * src.nbytes / median_ms(lambda: dst.copy_(src), device, 1, reps, 1) / 1e6
    add = 3 * src.nbytes / median_ms(lambda: dst.add_(src), device, 1, reps, 1) / 1e6
    return copy, add


def measure_hardware(d: int, slots: int, batch: int, device: torch.device, reps: int) -> dict:
    copy, add = bandwidth_gbs(device, reps)
    return {"matmul_gflops_step_shapes": round(matmul_gflops(d, slots, batch, device, reps), 1),
            "matmul_gflops_square_4096": round(square_matmul_gflops(device, reps), 1),
            "copy_gbs": round(copy, 1), "add_inplace_gbs": round(add, 1),
            "bandwidth_gbs": round(max(copy, add), 1)}


def floor_ms(work: dict, hw: dict, gflops_key: str = "matmul_gflops_step_shapes") -> float:
    return (work["flops"] / hw[gflops_key] / 1e6
            + work["params"] * OPTIMIZER_BYTES_PER_PARAM / hw["bandwidth_gbs"] / 1e6)


def random_readout(d_model: int, n_answers: int) -> Readout:
    """An LM readout of the right shapes (a step's cost does not depend on the values)."""
    return Readout("layer", 1e-5, torch.ones(d_model), torch.zeros(d_model),
                   torch.randn(n_answers, d_model) / d_model**0.5, torch.zeros(n_answers))


def our_step(mode: str, args, device: torch.device, batch: int, indep_policy: str,
             value_head: str = "gated", encoder: str = "relu"):
    settings = SaeConfig.default(n_free=args.n_free, batch_size=batch, indep_policy=indep_policy,
                                 value_head=value_head, encoder=encoder, k=args.k)
    model = SupervisedSAE(args.d_model, args.n_free, N_RELATIONS, args.n_answers, seed=0,
                          value_head=value_head,
                          encoder=make_encoder(encoder, settings.encoder_settings(),
                                               args.n_free))
    if value_head == "lens":
        model.attach_readout(random_readout(args.d_model, args.n_answers))
    model.to(device)
    params = train_only_owned(model, mode)
    loss_settings = LossSettings.from_config(settings)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    step = make_step(model, make_optimizer(params, settings), stage_components(mode, encoder),
                     loss_settings, logged_components(mode, loss_settings, args.n_free,
                                                     value_head, encoder),
                     autocast, relation_slots=RUN_KINDS[mode].relation_slots, sae=settings)
    if args.compile:
        step = torch.compile(step)
    x = torch.randn(batch, args.d_model, device=device)
    rel = torch.randint(0, N_RELATIONS, (batch,), device=device)
    ans = torch.randint(0, args.n_answers, (batch,), device=device)
    return lambda: step(x, rel, ans)


def compare_checkouts(args: argparse.Namespace) -> None:
    """The relu joint step of `args.against` and of this checkout, alternating (other,
    this, other, this), each in a fresh process with its own package: ms per step and
    times the floor each run measured."""
    import os
    import subprocess
    import sys

    here = Path(__file__).resolve().parents[1]
    shape = ["--d-model", str(args.d_model), "--n-free", str(args.n_free), "--n-answers",
             str(args.n_answers), "--steps", str(args.steps), "--warmup", str(args.warmup),
             "--modes", "joint", "--reference-modes", "--no-exact-indep",
             "--no-value-heads", "--device", args.device]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for turn in range(4):
            root = args.against.resolve() if turn % 2 == 0 else here
            out = Path(tmp) / f"{turn}.json"
            env = {**os.environ, "PYTHONPATH": str(root / "src")}
            subprocess.run([sys.executable, str(root / "bench/train_step.py"), *shape,
                            "--json", str(out)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            row = json.loads(out.read_text())["results"][0]
            runs.append({"checkout": str(root), "ms_per_step": row["ms_per_step"],
                         "floor_ms": row["floor_ms"], "x_floor": row["x_floor"]})
            print(json.dumps(runs[-1]), flush=True)
    result = {"runs": runs, "median_x_floor": {
        str(root): statistics.median(r["x_floor"] for r in runs if r["checkout"] == str(root))
        for root in (args.against.resolve(), here)}}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-free", type=int, default=100_000)
    parser.add_argument("--n-answers", type=int, default=1000)
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes for the package's step (default: 64 on CPU; "
                        "64 256 1024 on CUDA); the reference and the floor use the first")
    parser.add_argument("--steps", type=int, default=6, help="timed blocks per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", nargs="+",
                        default=["stage1", "joint", "separate_activation", "separate_value"])
    parser.add_argument("--reference-modes", nargs="*", default=None,
                        help="modes to time the reference step for (default: all --modes)")
    parser.add_argument("--no-exact-indep", action="store_true")
    parser.add_argument("--no-value-heads", action="store_true",
                        help="skip timing the lens value head beside the gated one")
    parser.add_argument("--encoders", nargs="*", default=["relu", "topk", "batchtopk"],
                        help="free-bank encoders timed side by side in the joint step")
    parser.add_argument("--k", type=int, default=64, help="k of topk and batchtopk")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc malloc untuned (to measure what tuning gives)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--epoch-examples", type=int, default=90_000,
                        help="training examples per epoch for projections (full config: "
                        "5,000 train people x 6 relations x 3 seen templates)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--against", type=Path,
                        help="another checkout: its own bench/train_step.py runs the joint "
                        "step (relu, no reference, value heads or exact indep) before and "
                        "after this one, each with its own package and floor, side by side")
    args = parser.parse_args()
    if args.against:
        compare_checkouts(args)
        return
    device = torch.device(args.device)
    batches = args.batches or ([64, 256, 1024] if device.type == "cuda" else [64])
    block_steps = 20 if device.type == "cuda" else 1
    timing = dict(device=device, warmup=args.warmup, blocks=args.steps, block_steps=block_steps)
    slots = args.n_free + N_RELATIONS
    hw = measure_hardware(args.d_model, slots, batches[0], device, reps=5)
    print("hardware:", json.dumps(hw), flush=True)

    reference = {}
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / "activations.h5"
        write_random_activations(h5, 64 * batches[0], args.d_model, args.n_answers)
        for mode in args.modes if args.reference_modes is None else args.reference_modes:
            sae = SupervisedSAE(args.d_model, args.n_free, N_RELATIONS, args.n_answers,
                                seed=0).to(device)
            trainer = ReferenceTrainer(sae, mode, h5, batches[0], device)
            reference[mode] = median_ms(trainer.step, **timing)
            print(f"reference {mode}: {reference[mode]:.1f} ms/step", flush=True)
            del sae, trainer

    hw_plain = hw
    if not args.default_allocator:
        configure_backend(device)
        if device.type == "cuda":  # TF32 is on now: the floor takes the rate our step gets
            hw = measure_hardware(args.d_model, slots, batches[0], device, reps=5)
            print("hardware, TF32 on:", json.dumps(hw), flush=True)
    # the products' rate at each batch size (larger batches run nearer the peak)
    rate_at = {b: round(matmul_gflops(args.d_model, slots, b, device, reps=5), 1)
               for b in batches}
    hw["matmul_gflops_step_shapes_by_batch"] = rate_at
    rows = []
    for mode in args.modes:
        for batch in batches:
            hw_batch = {**hw, "matmul_gflops_step_shapes": rate_at[batch]}
            ms = median_ms(our_step(mode, args, device, batch, "skip_above_threshold"), **timing)
            work = step_work(mode, args.d_model, args.n_free, args.n_answers, batch)
            row = {"mode": mode, "batch": batch, "ms_per_step": round(ms, 2),
                   "examples_per_s": round(batch / ms * 1e3, 1),
                   "epoch_s": round(ms * -(-args.epoch_examples // batch) / 1e3, 1),
                   "gflop": round(work["flops"] / 1e9, 2),
                   "optimizer_gb": round(work["params"] * OPTIMIZER_BYTES_PER_PARAM / 1e9, 2),
                   "floor_ms": round(floor_ms(work, hw_batch), 2),
                   "floor_ms_square_peak": round(
                       floor_ms(work, hw, "matmul_gflops_square_4096"), 2)}
            row["x_floor"] = round(ms / row["floor_ms"], 3)
            row["x_floor_square_peak"] = round(ms / row["floor_ms_square_peak"], 3)
            if mode in reference and batch == batches[0]:
                row["reference_ms"] = round(reference[mode], 2)
                row["x_reference"] = round(ms / reference[mode], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)

    exact = None
    if "joint" in args.modes and not args.no_exact_indep:
        skip_ms = next(r["ms_per_step"] for r in rows
                       if r["mode"] == "joint" and r["batch"] == batches[0])
        # measured again right after, so drift on a shared machine cancels
        skip_again = median_ms(our_step("joint", args, device, batches[0],
                                        "skip_above_threshold"), **timing)
        exact_ms = median_ms(our_step("joint", args, device, batches[0], "exact"), **timing)
        base = min(skip_ms, skip_again)
        exact = {"joint_skip_ms": round(base, 2), "joint_exact_ms": round(exact_ms, 2),
                 "overhead": round(exact_ms / base - 1, 3)}

    heads = []
    if not args.no_value_heads:
        # the value heads one right after another, in the modes that train them
        for mode in [m for m in args.modes if RUN_KINDS[m].has_value_heads]:
            ms = {head: median_ms(our_step(mode, args, device, batches[0],
                                           "skip_above_threshold", head), **timing)
                  for head in ("gated", "lens", "slot_only")}
            heads.append({"mode": mode, "batch": batches[0],
                          **{f"{h}_ms": round(v, 2) for h, v in ms.items()},
                          "lens_over_gated": round(ms["lens"] / ms["gated"], 3)})
            print(json.dumps(heads[-1]), flush=True)

    encoders = {}
    if len(args.encoders) > 1:
        # the encoders one right after another in the joint step (k-sparse codes decode
        # from their k active rows of W_dec)
        encoders = {name: round(median_ms(our_step("joint", args, device, batches[0],
                                                   "skip_above_threshold", encoder=name),
                                          **timing), 2) for name in args.encoders}
        base = encoders.get("relu")
        for name, ms in encoders.items():
            ratio = f" = {ms / base:.2f} x relu" if base else ""
            print(f"joint step, encoder {name} (k = {args.k}): {ms:.1f} ms{ratio}", flush=True)

    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": str(torch.__version__), "threads": torch.get_num_threads(),
              "d_model": args.d_model, "n_free": args.n_free, "n_answers": args.n_answers,
              "allocator_tuned": not args.default_allocator, "bf16": args.bf16,
              "compile": args.compile, "hardware": hw, "hardware_plain_fp32": hw_plain,
              "results": rows,
              "exact_indep": exact, "value_heads": heads,
              "encoders_joint_ms": encoders, "k": args.k}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(f"\n{'mode':>20} {'batch':>5} {'ms/step':>9} {'ex/s':>8} {'floor':>8} {'x floor':>7} "
          f"{'ref ms':>8} {'x ref':>6}")
    nan = float("nan")
    for r in rows:
        print(f"{r['mode']:>20} {r['batch']:>5} {r['ms_per_step']:>9.1f} "
              f"{r['examples_per_s']:>8.1f} {r['floor_ms']:>8.1f} {r['x_floor']:>7.2f} "
              f"{r.get('reference_ms', nan):>8.1f} {r.get('x_reference', nan):>6.2f}")
    for h in heads:
        print(f"value heads, {h['mode']} batch {h['batch']}: gated {h['gated_ms']:.1f} ms, "
              f"lens {h['lens_ms']:.1f} ms ({h['lens_over_gated']:.2f}x), slot_only "
              f"{h['slot_only_ms']:.1f} ms")
    for name, ms in encoders.items():
        print(f"encoder {name}: joint {ms:.1f} ms"
              + (f" ({ms / encoders['relu']:.2f}x relu)" if "relu" in encoders else ""))
    if exact:
        print(f"exact indep at {args.n_free} free slots: {exact['joint_skip_ms']:.1f} -> "
              f"{exact['joint_exact_ms']:.1f} ms ({exact['overhead']:+.1%})")


if __name__ == "__main__":
    main()
