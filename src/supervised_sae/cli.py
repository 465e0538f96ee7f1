"""Command-line entry point: the workflow's steps for use outside Snakemake.

    supervised-sae data --config config/quickstart.yaml --out results/data
    supervised-sae train-lm --config ... --prompts results/data/prompts.csv \
        --biographies results/data/biographies.csv --out results/lm/model
    supervised-sae extract --config ... --model results/lm/model \
        --prompts results/data/prompts.csv --out results/activations/activations.h5
    supervised-sae train --config ... --activations results/activations/activations.h5 \
        --layer 7 --mode joint --init results/stage1/layer7/sae_stage1.pt \
        --out results/joint/layer7
    supervised-sae summarize --metrics results/*/layer*/metrics.json \
        --probes results/baselines/layer*/probes.json --lm results/lm/accuracy.json \
        --steering results/baselines/layer*/steering.json --out results/summary
    supervised-sae figures --summary results/summary/metrics.csv \
        --metrics results/*/layer*/metrics.json --heatmap-layer 2 --out results/figures
    supervised-sae page --summary results/summary/metrics.csv --lm results/lm/accuracy.json \
        --figures results/figures --out docs/my-study.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from supervised_sae import jobs
from supervised_sae.atomic import refuse_outputs_over_inputs
from supervised_sae.config import StudyConfig, load_config
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
    p = sub.add_parser("train-lm", help="train the built-in GPT-2 and its tokenizer, or fine-tune "
                       "lm.pretrained (lm.finetune)")
    p.add_argument("--prompts", required=True)
    p.add_argument("--biographies")
    p.add_argument("--out", required=True, help="model folder (save_pretrained)")
    p.add_argument("--checkpoints", help="checkpoint folder (default: <out>.checkpoints)")
    p = sub.add_parser("lm-accuracy",
                       help="the LM's whole-answer accuracy (and the model it is) as JSON")
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
    _lm_job_arguments(p)
    p = sub.add_parser("export-saelens", help="write a trained SAE in SAELens's format")
    p.add_argument("--sae", required=True, help="sae_final.pt")
    p.add_argument("--out", required=True, help="folder for cfg.json + sae_weights.safetensors")
    p = sub.add_parser("slot-browser", help="a static page of what each slot of one SAE "
                       "fires on (index.html in --out)")
    p.add_argument("--sae", required=True, help="sae_final.pt")
    _lm_job_arguments(p)
    p.add_argument("--neuronpedia", help="also a folder of batch-N.json files in "
                   "SAEDashboard's layout for Neuronpedia (docs/outputs.md)")
    p = sub.add_parser("probes", help="linear probes (and the logit lens, with --model) on "
                       "one layer's raw activations")
    p.add_argument("--activations", required=True)
    p.add_argument("--model", help="the LM's folder: adds the logit lens")
    p.add_argument("--layer", type=parse_layer, required=True,
                   help="block index, or emb for the embedding output")
    p.add_argument("--out", required=True)
    p = sub.add_parser("steering", help="the baselines that are not SAEs at one layer: "
                       "DiffMean, the probe direction, the one-position ceiling, the linear "
                       "entity swap")
    _lm_job_arguments(p)

    p = sub.add_parser("summarize", help="metrics.csv and metrics_over_seeds.csv of runs")
    p.add_argument("--metrics", nargs="+", required=True, help="the runs' metrics.json")
    p.add_argument("--probes", nargs="*", default=[], help="each layer's probes.json")
    p.add_argument("--steering", nargs="*", default=[], help="each layer's steering.json")
    p.add_argument("--lm", nargs="*", default=[], help="each draw's LM accuracy.json")
    p.add_argument("--out", required=True, help="folder for the two tables")
    p = sub.add_parser("figures", help="the study's across-layer figures (and the L0 "
                       "sweep's, when the config has one)")
    p.add_argument("--summary", required=True, help="metrics.csv")
    p.add_argument("--metrics", nargs="+", required=True,
                   help="seed 0's metrics.json of draw 0, every run kind and layer")
    p.add_argument("--heatmap-layer", type=parse_layer, required=True,
                   help="the layer of the binding heatmaps")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p = sub.add_parser("curves", help="one run's training curves")
    p.add_argument("--history", required=True, help="training_history.json")
    p.add_argument("--out", required=True, help="PNG file")
    p = sub.add_parser("page", help="the Markdown results page, figures beside it")
    p.add_argument("--summary", required=True, help="metrics.csv")
    p.add_argument("--lm", nargs="+", required=True, help="each draw's LM accuracy.json")
    p.add_argument("--figures", required=True, help="the folder `figures` wrote")
    p.add_argument("--targets", help="targets YAML (default: the config's results_targets)")
    p.add_argument("--out", required=True, help="the page (.md)")

    args = parser.parse_args(argv)
    jobs.setup_logging(args.log)
    try:
        run(args)
    except (ValueError, OSError) as err:  # bad input, full disk: the message says it all
        # OSError(errno, message) prints as "[Errno 28] message"; the message is enough
        plain = isinstance(err, OSError) and err.strerror and err.filename is None
        sys.exit(f"supervised-sae: error: {err.strerror if plain else err}")


def _lm_job_arguments(p: argparse.ArgumentParser) -> None:
    """The inputs of a job that steers the LM at one layer, and its output."""
    p.add_argument("--activations", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--layer", type=parse_layer, required=True,
                   help="block index, or emb for the embedding output")
    p.add_argument("--out", required=True)


INPUTS = ("prompts", "biographies", "model", "activations", "init", "sae", "summary",
          "history", "figures", "targets")
OUTPUTS = ("out", "checkpoints", "neuronpedia")


def run(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    named_by_config = {"data.prompts": config.data.prompts, "lm.pretrained": config.lm.pretrained,
                       "results_targets": config.results_targets}
    refuse_outputs_over_inputs(
        {**{f"--{k}": getattr(args, k) for k in INPUTS if getattr(args, k, None)},
         **{k: v for k, v in named_by_config.items() if v and Path(v).exists()}},
        {f"--{k}": getattr(args, k) for k in OUTPUTS if getattr(args, k, None)})
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
    elif args.command == "slot-browser":
        jobs.slot_browser(args.sae, args.activations, args.prompts, args.model, args.layer,
                          args.out, neuronpedia=args.neuronpedia)
    elif args.command == "export-saelens":
        jobs.export_saelens(args.sae, args.out)
    elif args.command == "probes":
        jobs.probes(config, args.activations, args.layer, args.out, args.model)
    elif args.command == "steering":
        jobs.steering(config, args.activations, args.prompts, args.model, args.layer, args.out)
    else:
        report(args, config)


def report(args: argparse.Namespace, config: StudyConfig) -> None:
    """The reporting commands: summarize, figures, curves, page."""
    from supervised_sae.report.steps import STUDY_FIGURES, SWEEP_FIGURE
    from supervised_sae.runs import run_location

    out = Path(args.out)
    sections = config.model_dump(mode="json")
    if args.command == "summarize":
        jobs.summarize(args.metrics, args.probes, args.lm, out / "metrics.csv",
                       out / "metrics_over_seeds.csv", args.steering)
    elif args.command == "figures":
        jobs.study_figures(args.summary, [p for p in args.metrics
                                          if run_location(p)[1] == args.heatmap_layer],
                           args.metrics, {k: out / name for k, name in STUDY_FIGURES.items()})
        if config.sweep.values:
            jobs.sweep_figure(args.summary, sections, out / SWEEP_FIGURE)
    elif args.command == "curves":
        jobs.training_curves(args.history, out)
    elif args.command == "page":
        folder = Path(args.figures)
        figures = {k: folder / name for k, name in
                   {**STUDY_FIGURES, "sweep": SWEEP_FIGURE}.items() if (folder / name).is_file()}
        jobs.results_page(out, args.summary, args.lm, figures, sections,
                          " ".join(["supervised-sae", *sys.argv[1:]]),
                          args.targets or config.results_targets)


if __name__ == "__main__":
    main()
