"""Tidy table of every number in every metrics.json: (draw, mode, layer, replicate,
slice, metric, value), and its mean, sd and n: over draws where there are several
(each draw's value the mean over its SAE seeds), else over replicate SAE seeds."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from supervised_sae.evaluation.names import walk_metric
from supervised_sae.runs import (
    draw_of_path,
    is_reproduction_path,
    run_location,
    sweep_of_path,
)

# sweep: the swept value of an L0 sweep's run (results/sweep/{key}={value}/), empty for
# the main study's; reproduction: a run of the reproduction row (results/reproduction/)
COLUMNS = ["draw", "sweep", "reproduction", "mode", "layer", "replicate", "slice", "metric",
           "value"]
KEYS = ["mode", "layer", "slice", "metric"]


def flatten(prefix: str, value: Any) -> Iterable[tuple[str, float]]:
    """(dotted key, number) for every number in a nested dict/list (bools as 0/1)."""
    if isinstance(value, bool):
        yield prefix, float(value)
    elif isinstance(value, int | float):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, list) and all(isinstance(v, int | float | list) for v in value):
        for i, v in enumerate(value):
            yield from flatten(f"{prefix}[{i}]", v)


IDENTITY = ("mode", "layer")  # what names a run's rows, not a measurement
PER_SLICE = ("slices", "spliced")  # {slice: {metric: number}}
RUN_SLICE = "run"  # the slice of a run's own numbers (its relation slots, its assignment)
SWAP_SLICE = "swap"
STEERING = "steering"  # the mode of the baselines that are not SAEs (steering.json)
CURVES = ("success_rate", "train_success_rate")  # per-alpha lists: one row per alpha


def metrics_rows(metrics: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """One row per number of one run's metrics.json, whatever its keys: a metric added
    in evaluation reaches the summary without being named here."""
    layer, rows = metrics["layer"], []
    for key, value in metrics.items():
        if key in IDENTITY:
            continue
        if key in PER_SLICE:
            numbers = [(s, m, v) for s, values in value.items() for m, v in flatten("", values)]
        elif key == SWAP_SLICE:
            numbers = [(SWAP_SLICE, m, v) for m, v in swap_metrics(value)]
        else:
            numbers = [(RUN_SLICE, m, v) for m, v in flatten(key, value)]
        rows += [{"mode": mode, "layer": layer, "slice": s, "metric": m, "value": v}
                 for s, m, v in numbers]
    return rows


def swap_metrics(swap: dict[str, Any]) -> Iterable[tuple[str, float]]:
    """(metric, number) of metrics.json's `swap`: every number, the success curves one
    row per alpha (`decoder.success_rate@alpha=2`), the published protocol as
    `published.*` with its walk one row per step; the alpha grids label the curves."""
    for key, value in swap.items():
        if key.endswith("alphas"):
            continue
        if key == "published_protocol":
            yield from _published_metrics(value)
            continue
        if isinstance(value, dict) and isinstance(value.get(CURVES[0]), list):
            alphas = value.get("alphas", swap.get("alphas"))
            for curve in CURVES:
                for a, r in zip(alphas, value[curve], strict=True):
                    yield f"{key}.{curve}@alpha={a:g}", r
            value = {k: v for k, v in value.items() if k not in (*CURVES, "alphas")}
        yield from flatten(key, value)


def _published_metrics(published: dict[str, Any]) -> Iterable[tuple[str, float]]:
    yield from flatten("published", {k: v for k, v in published.items() if k != "walk"})
    for i, step in enumerate(published["walk"]):
        yield walk_metric(i), step["success_rate"]
        yield from flatten(walk_metric(i), {k: v for k, v in step.items()
                                            if k != "success_rate" and "alpha" not in k
                                            or k == "alpha"})


# probes.json key -> (summary mode, metric)
PROBE_METRICS = {
    "relation": ("probe", "relation_accuracy"),
    "answer": ("probe", "answer_accuracy"),
    "answer_unseen_answers": ("probe", "answer_accuracy_unseen_answers"),
    "logit_lens": ("logit_lens", "answer_accuracy"),
    "logit_lens_unseen_answers": ("logit_lens", "answer_accuracy_unseen_answers"),
    # the rows the logit lens is scored on: their first token names one value
    "first_token_names_value_share": ("logit_lens", "first_token_names_value_share"),
}


def probe_rows(probes: dict[str, Any]) -> list[dict[str, Any]]:
    """The linear probes and the logit lens of one layer."""
    return [{"mode": mode, "layer": probes["layer"], "slice": s, "metric": metric,
             "value": v} for key, (mode, metric) in PROBE_METRICS.items()
            for s, v in probes.get(key, {}).items()]


def lm_rows(accuracy: dict[str, Any], layers: Iterable[int]) -> list[dict[str, Any]]:
    """The LM's own accuracy, repeated per layer so plots can draw it beside each layer."""
    rows = []
    names = {"train_seen_templates": "train_seen", "train_heldout_templates": "train_heldout",
             "test_seen_templates": "test_seen", "test_heldout_templates": "test_heldout"}
    for key, s in names.items():
        if key in accuracy:
            rows += [{"mode": "lm", "layer": layer, "slice": s, "metric": metric,
                      "value": accuracy[key][field]} for layer in layers
                     for metric, field in (("answer_accuracy", "accuracy"),
                                           ("first_token_answer_accuracy",
                                            "first_token_accuracy"))
                     if field in accuracy[key]]
    return rows


def build_summary(metric_files: Iterable[str | Path], probe_files: Iterable[str | Path],
                  lm_accuracy: str | Path | Iterable[str | Path] | None,
                  steering_files: Iterable[str | Path] = ()) -> pd.DataFrame:
    """metric_files: metrics.json paths in results/[draw{d}/]{run folder}/layer{L}
    [_seed{r}]/; the draw folder names the draw, the run folder the mode and the suffix
    the replicate. lm_accuracy: each draw's accuracy.json (results/[draw{d}/]lm/).
    steering_files: each layer's steering.json, the baselines that are not SAEs (mode
    `steering`, read as a run's `swap`). Probes, steering and the LM have no SAE seed:
    they are replicate 0."""
    rows: list[dict[str, Any]] = []
    layers = set()
    metric_files, probe_files = list(metric_files), list(probe_files)
    steering_files = list(steering_files)
    lm_files = [lm_accuracy] if isinstance(lm_accuracy, str | Path) else list(lm_accuracy or [])
    for files in (metric_files, probe_files, steering_files, lm_files):
        seen = [Path(f).resolve() for f in files]
        twice = sorted({str(f) for f in seen if seen.count(f) > 1})
        if twice:  # its rows twice would read as two seeds agreeing exactly
            raise ValueError(f"{twice[0]}: listed more than once; each file is one run's "
                             "numbers and counts once")
    for path in metric_files:
        mode, _, replicate = run_location(path)
        metrics = json.loads(Path(path).read_text())
        layers.add(metrics["layer"])
        rows += [{**row, "draw": draw_of_path(path), "sweep": sweep_of_path(path),
                  "reproduction": is_reproduction_path(path), "replicate": replicate}
                 for row in metrics_rows(metrics, mode)]
    reference = [{**row, "draw": draw_of_path(path)} for path in probe_files
                 for row in probe_rows(json.loads(Path(path).read_text()))]
    reference += [{**row, "draw": draw_of_path(path)}
                  for path in steering_files
                  for row in metrics_rows(json.loads(Path(path).read_text()), STEERING)]
    reference += [{**row, "draw": draw_of_path(path)} for path in lm_files
                  for row in lm_rows(json.loads(Path(path).read_text()), sorted(layers))]
    rows += [{**row, "replicate": 0, "reproduction": False} for row in reference]
    return pd.DataFrame(rows, columns=COLUMNS)


def _reproduced(summary: pd.DataFrame) -> pd.Series:
    if "reproduction" not in summary:
        return pd.Series(False, index=summary.index)
    return summary["reproduction"].fillna(False).astype(bool)


def main_study(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the main study (not of an L0 sweep or the reproduction row)."""
    swept_rows = summary["sweep"].notna() if "sweep" in summary else False
    return summary[~(swept_rows | _reproduced(summary))]


def swept(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the L0 sweep's runs (empty without one)."""
    return summary[summary["sweep"].notna()] if "sweep" in summary else summary.iloc[:0]


def reproduced(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the reproduction row's runs (empty without one)."""
    return summary[_reproduced(summary)]


def spread(summary: pd.DataFrame, keys: list[str] = KEYS) -> pd.DataFrame:
    """Per `keys`: mean, sd (n - 1; empty for one value) and n, over draws where a key
    has several (a draw's value being the mean over its SAE seeds), else over SAE seeds;
    `over` says which. Beside them, n_draws, n_seeds (most per draw) and sd_seeds (the
    mean within-draw sd over SAE seeds: what the seeds alone would show)."""
    table = summary if "draw" in summary else summary.assign(draw=0)
    per_draw = (table.groupby([*keys, "draw"], sort=True, dropna=False)["value"]
                .agg(["mean", "std", "count"]).reset_index())
    stats = per_draw.groupby(keys, sort=True, dropna=False).agg(
        mean=("mean", "mean"), sd_draws=("mean", "std"), n_draws=("draw", "nunique"),
        sd_seeds=("std", "mean"), n_seeds=("count", "max"))
    several = stats["n_draws"] > 1
    stats["sd"] = stats["sd_draws"].where(several, stats["sd_seeds"])
    stats["n"] = stats["n_draws"].where(several, stats["n_seeds"])
    stats["over"] = several.map({True: "draws", False: "seeds"})
    return stats[["mean", "sd", "n", "over", "n_draws", "n_seeds", "sd_seeds"]].reset_index()


def over_replicates(summary: pd.DataFrame) -> pd.DataFrame:
    """`spread` per (mode, layer, slice, metric[, sweep, reproduction]):
    metrics_over_seeds.csv."""
    extra = [key for key in ("sweep", "reproduction") if key in summary]
    if "reproduction" in extra:  # one flag per row, also where a table left it empty
        summary = summary.assign(reproduction=_reproduced(summary))
    return spread(summary, [*KEYS, *extra])
