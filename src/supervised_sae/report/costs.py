"""What each part of a study cost: its jobs' wall seconds, read from the Snakemake
benchmark files every heavy rule writes (`results/{draw}{sweep}benchmarks/...`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from supervised_sae.runs import RUN_KINDS

# benchmark file (under benchmarks/) -> the part of the study it belongs to
_FILES = {"train_lm.tsv": "LM training", "extract_activations.tsv": "activation extraction",
          "lm_accuracy.tsv": "LM accuracy"}
_FOLDERS = {"stage1": "stage 1", "evaluate": "evaluation", "probes": "probes and logit lens",
            "export_saelens": "SAELens export", "plot_training": "training curves",
            "steering": "baselines that are not SAEs", "slot_browser": "slot browsers"}
_KIND_OF_FOLDER = {k.folder: k.label for k in RUN_KINDS.values()}
# runs beside the main study, on the first draw only: each one part of its own
_BESIDE = {"sweep": "L0 sweep (all its jobs)", "reproduction": "reproduction row (all its jobs)"}


def part_of(inside: Path) -> str:
    """The part a benchmark file (its path below `benchmarks/`) belongs to."""
    if len(inside.parts) == 1:
        return _FILES.get(inside.name, inside.stem)
    folder = inside.parts[0]
    if folder in _FOLDERS:
        return _FOLDERS[folder]
    if folder in _KIND_OF_FOLDER:
        return f"training: {_KIND_OF_FOLDER[folder]}"
    return folder  # a rule this table does not name yet: its own part, under its name


def job_costs(results: str | Path) -> pd.DataFrame:
    """One row per benchmarked job: part, draw ('' for the first), sweep (its point, '' for
    the rest), beside (`sweep`, `reproduction`, or '' for the main study) and wall
    seconds."""
    rows = []
    results = Path(results)
    for tsv in sorted(results.rglob("benchmarks/**/*.tsv")):
        above, _, inside = tsv.relative_to(results).as_posix().partition("benchmarks/")
        try:
            seconds = float(tsv.read_text().splitlines()[1].split("\t")[0])
        except (IndexError, ValueError, OSError):
            continue  # a job still running or killed: no complete benchmark line
        draw = next((p for p in above.split("/") if p.startswith("draw")), "")
        sweep = above.partition("sweep/")[2].rstrip("/")
        beside = next((p for p in above.split("/") if p in _BESIDE), "")
        rows.append({"part": part_of(Path(inside)), "draw": draw, "sweep": sweep,
                     "beside": beside, "seconds": seconds})
    return pd.DataFrame(rows, columns=["part", "draw", "sweep", "beside", "seconds"])


def cost_section(results: str | Path, span_minutes: float | None) -> list[str]:
    """The page's cost table: minutes per part (the L0 sweep and the reproduction row each
    one part), per draw and in all, and what the benchmarked jobs leave of the measured
    span."""
    jobs = job_costs(results)
    if jobs.empty:
        return []
    jobs["part"] = jobs["part"].where(jobs["beside"] == "", jobs["beside"].map(_BESIDE))
    n_draws = max(jobs["draw"].nunique(), 1)
    by_part = jobs.groupby("part", sort=False)["seconds"].agg(["count", "sum"])
    by_part = by_part.sort_values("sum", ascending=False)
    total = by_part["sum"].sum()
    lines = ["## What each part cost", "",
             "Wall time of each part's jobs, from their benchmark files (each job uses its "
             "rule's threads, so jobs of one thread run side by side on two cores).", "",
             "| part | jobs | minutes | per draw | share |", "|---|---|---|---|---|"]
    for part, row in by_part.iterrows():
        per_draw = "" if part in _BESIDE.values() else f"{row['sum'] / 60 / n_draws:.1f}"
        lines.append(f"| {part} | {int(row['count'])} | {row['sum'] / 60:.1f} | {per_draw} | "
                     f"{row['sum'] / total:.0%} |")
    lines.append(f"| all benchmarked jobs | {int(by_part['count'].sum())} | {total / 60:.1f} | "
                 f"{total / 60 / n_draws:.1f} | 100% |")
    if span_minutes is not None:
        job_minutes = total / 60
        if job_minutes > span_minutes:  # jobs overlapped
            lines += ["", f"The run's span was {span_minutes:.1f} minutes: its jobs ran "
                      f"side by side, {job_minutes:.1f} job-minutes in it "
                      f"({job_minutes / span_minutes:.2f} jobs at a time on average)."]
        else:
            lines += ["", f"The run's span was {span_minutes:.1f} minutes; jobs without a "
                      f"benchmark file and Snakemake's own scheduling take the other "
                      f"{span_minutes - job_minutes:.1f}."]
    return [*lines, ""]
