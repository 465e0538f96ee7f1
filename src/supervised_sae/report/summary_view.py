"""The study summary as the results page reads it: look-ups with the spread over
replicates, and the per-layer tables in the published work's form."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from supervised_sae.layers import hidden_states_index, layer_name
from supervised_sae.runs import SLOT_FOLDERS, VALUE_FOLDERS, label_of

SEEN, PARAPHRASE = "test_seen", "test_heldout"  # held-out people x seen / held-out wordings


@dataclass(frozen=True)
class Stats:
    """One summary cell: mean, sd and n over replicate seeds."""

    mean: float
    sd: float
    n: int

    def __str__(self) -> str:
        return self.format(3)

    def format(self, digits: int) -> str:
        if self.n > 1:
            return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"
        return f"{self.mean:.{digits}f}"


class Summary:
    """Look-ups into the tidy summary (one row per replicate) and its spread."""

    def __init__(self, table: pd.DataFrame):
        # the swap's train-people rate at its chosen alpha (the best over alphas), to
        # choose a layer on train people too
        train = table[table["metric"].str.startswith("decoder.train_success_rate@")]
        best_train = (train.groupby(["mode", "layer", "replicate", "slice"])["value"].max()
                      .reset_index().assign(metric="decoder.best_train_success_rate"))
        table = pd.concat([table, best_train], ignore_index=True)
        self.table = table
        stats = table.groupby(["mode", "layer", "slice", "metric"])["value"]
        self.stats = stats.agg(["mean", "std", "count"])
        self.layers = sorted(int(x) for x in table["layer"].unique())
        self.modes = set(table["mode"])
        self.n_seeds = int(table["replicate"].nunique())

    def get(self, mode: str, layer: int, slice_name: str, metric: str) -> Stats | None:
        key = (mode, layer, slice_name, metric)
        if key not in self.stats.index:
            return None
        row = self.stats.loc[key]
        return Stats(float(row["mean"]), float(row["std"]) if row["count"] > 1 else 0.0,
                     int(row["count"]))

    def seed0(self, mode: str, layer: int, slice_name: str, metric: str) -> float | None:
        t = self.table
        part = t[(t["mode"] == mode) & (t["layer"] == layer) & (t["slice"] == slice_name)
                 & (t["metric"] == metric) & (t["replicate"] == 0)]
        return float(part["value"].iloc[0]) if len(part) else None

    def best_layer(self, mode: str, slice_name: str, metric: str) -> tuple[int, Stats] | None:
        """The layer with the highest mean (ties: the earliest)."""
        cells = [(layer, self.get(mode, layer, slice_name, metric)) for layer in self.layers]
        cells = [(layer, s) for layer, s in cells if s is not None]
        return max(cells, key=lambda c: (c[1].mean, -c[0])) if cells else None


def cell(s: Stats | None, digits: int = 3) -> str:
    return "–" if s is None else s.format(digits)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _layer_label(layer: int) -> str:
    # the published code's index is Hugging Face's hidden_states index
    return f"{layer_name(layer)} ({hidden_states_index(layer)})"


def _present(summary: Summary, folders: Sequence[str]) -> list[str]:
    return [f for f in folders if f in summary.modes]


SLOT_KINDS, VALUE_KINDS = SLOT_FOLDERS, VALUE_FOLDERS  # the run folders, in run-kind order


Column = tuple[str, Callable[[int], str]]  # header, and the cell of a layer


def _metric(s: Summary, mode: str, slice_name: str, metric: str, digits: int = 3
            ) -> Callable[[int], str]:
    return lambda layer: cell(s.get(mode, layer, slice_name, metric), digits)


def _layer_table(s: Summary, columns: Sequence[Column]) -> str:
    """One row per layer, the published index in brackets."""
    return table(["layer (published)", *(h for h, _ in columns)],
                  [[_layer_label(layer), *(cell(layer) for _, cell in columns)]
                   for layer in s.layers])


def binding_table(s: Summary) -> str:
    columns: list[Column] = []
    for k in [*_present(s, SLOT_KINDS), "probe"]:
        metric = "relation_accuracy" if k == "probe" else "binding_accuracy"
        name = "relation probe" if k == "probe" else label_of(k)
        columns += [(f"{name} seen", _metric(s, k, SEEN, metric)),
                    (f"{name} paraphrase", _metric(s, k, PARAPHRASE, metric))]
    return _layer_table(s, columns)


def swap_interval(s: Summary, kind: str, layer: int) -> str:
    lo = s.seed0(kind, layer, "swap", "decoder.best_success_ci95[0]")
    hi = s.seed0(kind, layer, "swap", "decoder.best_success_ci95[1]")
    alpha = s.seed0(kind, layer, "swap", "decoder.best_alpha")
    if lo is None or hi is None or alpha is None:
        return "–"
    return f"[{lo:.3f}, {hi:.3f}] at α={alpha:g}"


def swap_table(s: Summary) -> str:
    columns: list[Column] = []
    for k in _present(s, SLOT_KINDS):
        columns += [(label_of(k), _metric(s, k, "swap", "decoder.best_success_rate")),
                    (f"{label_of(k)} seed 0: 95% CI",
                     lambda layer, k=k: swap_interval(s, k, layer))]
    return _layer_table(s, columns)


def value_table(s: Summary) -> str:
    columns: list[Column] = []
    for k in _present(s, VALUE_KINDS):
        columns += [(label_of(k), _metric(s, k, SEEN, "value_accuracy")),
                    (f"{label_of(k)} unseen answers",
                     _metric(s, k, SEEN, "value_accuracy_unseen_answers"))]
    columns += [
        ("answer probe", _metric(s, "probe", SEEN, "answer_accuracy")),
        ("answer probe unseen answers",
         _metric(s, "probe", SEEN, "answer_accuracy_unseen_answers")),
        ("logit lens", _metric(s, "logit_lens", SEEN, "answer_accuracy")),
        ("logit lens of joint reconstruction",
         _metric(s, "joint", SEEN, "logit_lens_reconstruction_accuracy")),
        ("LM", _metric(s, "lm", SEEN, "answer_accuracy")),
    ]
    return _layer_table(s, columns)


def reconstruction_table(s: Summary) -> str:
    kinds = _present(s, SLOT_KINDS)
    columns: list[Column] = [(f"{label_of(k)} FVU", _metric(s, k, SEEN, "fvu"))
                             for k in kinds]
    columns += [(f"{label_of(k)} L0", _metric(s, k, SEEN, "l0_free", 1)) for k in kinds]
    columns += [("joint spliced LM accuracy", _metric(s, "joint", SEEN, "spliced_accuracy")),
                ("LM clean", _metric(s, "joint", SEEN, "clean_accuracy"))]
    return _layer_table(s, columns)
