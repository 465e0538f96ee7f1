"""Command-line entry point: the workflow's steps for use outside Snakemake.

    supervised-sae data --config config/quickstart.yaml --out results/data
    supervised-sae train-lm --config ... --prompts results/data/prompts.csv \
        --biographies results/data/biographies.csv --out results/lm/model
    supervised-sae extract --config ... --model results/lm/model \
        --prompts results/data/prompts.csv --out results/activations/activations.h5
    supervised-sae train --config ... --activations results/activations/activations.h5 \
        --layer 7 --mode joint --init results/stage1/layer7/sae_stage1.pt \
        --out results/joint/layer7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from supervised_sae import jobs
from supervised_sae.atomic import refuse_outputs_over_inputs
from supervised_sae.config import load_config
from supervised_sae.layers import parse_layer
from supervised_sae.runs import RUN_KINDS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="supervised-sae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", default=[],
                        help="YAML config file(s), applied key by key over the package "
                        "defaults (config/config.yaml in the repository)")
    parser.add_argument("--log", help="also write the log to this file")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="synthetic people, biographies and prompts")
    p.add_argument("--out", required=True, help="folder for people/biographies/prompts.csv")
    p = sub.add_parser("train-lm", help="train the word-level tokenizer and GPT-2")
    p.add_argument("--prompts", required=True)
    p.add_argument("--biographies")
    p.add_argument("--out", required=True, help="model folder (save_pretrained)")
    p.add_argument("--checkpoints", help="checkpoint folder (default: <out>.checkpoints)")
    p = sub.add_parser("lm-accuracy", help="the LM's first-answer-token accuracy as JSON")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("extract", help="activations of every layer into HDF5")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("train", help="train one SAE stage for one layer")
    p.add_argument("--activations", required=True)
    p.add_argument("--layer", type=parse_layer, required=True,
                   help="block index, or emb for the embedding output")
    p.add_argument("--mode", choices=list(RUN_KINDS), required=True,
                   help="run kind: stage1, a stage-2 mode, or the unsupervised baseline")
    p.add_argument("--init", help="SAE to start from (stage 1's, or feature_activation's "
                   "for separate_value)")
    p.add_argument("--model", help="the LM's folder (needed by the lens value head)")
    p.add_argument("--replicate", type=int, default=0,
                   help="replicate SAE seed r: trains with the config's seed + r")
    p.add_argument("--out", required=True,
                   help="sae_stage1.pt path for stage1, else the run folder")
    p = sub.add_parser("evaluate", help="metrics.json of one trained SAE")
    p.add_argument("--sae", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--layer", type=parse_layer, required=True,
                   help="block index, or emb for the embedding output")
    p.add_argument("--out", required=True)
    p = sub.add_parser("export-saelens", help="write a trained SAE in SAELens's format")
    p.add_argument("--sae", required=True, help="sae_final.pt")
    p.add_argument("--out", required=True, help="folder for cfg.json + sae_weights.safetensors")
    p = sub.add_parser("probes", help="linear probes (and the logit lens, with --model) on "
                       "one layer's raw activations")
    p.add_argument("--activations", required=True)
    p.add_argument("--model", help="the LM's folder: adds the logit lens")
    p.add_argument("--layer", type=parse_layer, required=True,
                   help="block index, or emb for the embedding output")
    p.add_argument("--out", required=True)

    args = parser.parse_args(argv)
    jobs.setup_logging(args.log)
    try:
        run(args)
    except (ValueError, OSError) as err:  # bad input, full disk: the message says it all
        # OSError(errno, message) prints as "[Errno 28] message"; the message is enough
        plain = isinstance(err, OSError) and err.strerror and err.filename is None
        sys.exit(f"supervised-sae: error: {err.strerror if plain else err}")


INPUTS = ("prompts", "biographies", "model", "activations", "init", "sae")
OUTPUTS = ("out", "checkpoints")


def run(args: argparse.Namespace) -> None:
    refuse_outputs_over_inputs(
        {f"--{k}": getattr(args, k) for k in INPUTS if getattr(args, k, None)},
        {f"--{k}": getattr(args, k) for k in OUTPUTS if getattr(args, k, None)})
    config = load_config(args.config)
    if args.command == "data":
        out = Path(args.out)
        if config.data.prompts:  # the user's own table replaces the generator, as in the DAG
            jobs.import_prompts(config, config.data.prompts, out / "prompts.csv")
        else:
            jobs.make_data(config, out / "people.csv", out / "biographies.csv",
                           out / "prompts.csv")
    elif args.command == "train-lm":
        jobs.train_language_model(config, args.prompts, args.biographies, args.out,
                                  args.checkpoints or f"{args.out}.checkpoints")
    elif args.command == "lm-accuracy":
        jobs.lm_accuracy(config, args.model, args.prompts, args.out)
    elif args.command == "extract":
        jobs.extract(config, args.model, args.prompts, args.out)
    elif args.command == "train":
        jobs.train_sae(config, args.activations, args.layer, args.mode, args.out, args.init,
                       args.model, args.replicate)
    elif args.command == "evaluate":
        jobs.evaluate(config, args.sae, args.activations, args.prompts, args.model, args.layer,
                      args.out)
    elif args.command == "export-saelens":
        from supervised_sae.sae.export import export_saelens

        export_saelens(args.sae, args.out)
    elif args.command == "probes":
        jobs.probes(config, args.activations, args.layer, args.out, args.model)


if __name__ == "__main__":
    main()
