"""The study summary as the results page reads it: look-ups with the spread (over draws
where there are several, else over SAE seeds), and the per-layer tables in the published
work's form."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from supervised_sae.evaluation.summary import KEYS, main_study, spread, swept
from supervised_sae.layers import hidden_states_index, layer_name
from supervised_sae.runs import SLOT_FOLDERS, VALUE_FOLDERS, label_of

SEEN, PARAPHRASE = "test_seen", "test_heldout"  # held-out people x seen / held-out wordings


@dataclass(frozen=True)
class Stats:
    """One summary cell: mean, sd and n over draws (several draws) or SAE seeds."""

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
    """Look-ups into the tidy summary (one row per draw and replicate) and its spread."""

    def __init__(self, table: pd.DataFrame):
        if "draw" not in table:  # a summary from before draws: one draw
            table = table.assign(draw=0)
        self.sweep = swept(table)  # the L0 sweep's rows; the rest is the main study
        table = main_study(table)
        self.rows = table
        # the swap's train-people rate at its chosen alpha (the best over alphas), to
        # choose a layer on train people too
        # (every swap with an alpha grid: the SAEs' decoder and latent edits, the
        # steering baselines)
        curve = table["metric"].str.extract(r"^(.+)\.train_success_rate@", expand=False)
        best_train = [
            train.groupby(["draw", "mode", "layer", "replicate", "slice"])["value"].max()
            .reset_index().assign(metric=f"{variant}.best_train_success_rate")
            for variant, train in table[curve.notna()].groupby(curve[curve.notna()])]
        # how much splicing the reconstruction in costs the LM (clean - spliced accuracy)
        keys = ["draw", "mode", "layer", "replicate", "slice"]
        accuracy = table[table["metric"].isin(["clean_accuracy", "spliced_accuracy"])]
        wide = accuracy.pivot_table(index=keys, columns="metric", values="value")
        drop = ((wide["clean_accuracy"] - wide["spliced_accuracy"]).rename("value")
                .reset_index().assign(metric="spliced_accuracy_drop")
                if {"clean_accuracy", "spliced_accuracy"} <= set(wide.columns) else None)
        table = pd.concat([table, *best_train, drop], ignore_index=True)
        self.table = table
        self.stats = spread(table).set_index(KEYS)
        self.layers = sorted(int(x) for x in table["layer"].unique())
        self.modes = set(table["mode"])
        self.n_seeds = int(table["replicate"].nunique())
        self.draws = sorted(int(d) for d in table["draw"].unique())

    @property
    def spread_over(self) -> str:
        """What a ± on the page is over: "3 draws", or "2 SAE seed(s)"."""
        if len(self.draws) > 1:
            return f"{len(self.draws)} draws (each its own people, LM and SAEs)"
        return f"{self.n_seeds} SAE seed(s)"

    def without_draw(self, draw: int) -> Summary:
        """The same summary with one draw left out (the sweep, on the first, kept)."""
        return Summary(pd.concat([self.rows[self.rows["draw"] != draw], self.sweep]))

    def get(self, mode: str, layer: int, slice_name: str, metric: str) -> Stats | None:
        key = (mode, layer, slice_name, metric)
        if key not in self.stats.index:
            return None
        row = self.stats.loc[key]
        return Stats(float(row["mean"]), float(row["sd"]) if row["n"] > 1 else 0.0,
                     int(row["n"]))

    def seed0(self, mode: str, layer: int, slice_name: str, metric: str) -> float | None:
        """The value of the first draw's first SAE seed."""
        t = self.table
        part = t[(t["mode"] == mode) & (t["layer"] == layer) & (t["slice"] == slice_name)
                 & (t["metric"] == metric) & (t["replicate"] == 0)
                 & (t["draw"] == self.draws[0])]
        return float(part["value"].iloc[0]) if len(part) else None

    def best_layer(self, mode: str, slice_name: str, metric: str, lowest: bool = False
                   ) -> tuple[int, Stats] | None:
        """The layer with the highest mean, or the lowest (ties: the earliest)."""
        cells = [(layer, self.get(mode, layer, slice_name, metric)) for layer in self.layers]
        cells = [(layer, s) for layer, s in cells if s is not None]
        sign = -1 if lowest else 1
        return max(cells, key=lambda c: (sign * c[1].mean, -c[0])) if cells else None


def sparse_baseline(modes: set[str]) -> str | None:
    """The sparse SAE without relation slots that joint is compared with: the TopK SAE
    where one ran, else the encoder's own SAE without slots (with a topk encoder, that
    is the TopK SAE at the same k)."""
    return next((m for m in ("topk", "unsupervised") if m in modes), None)


def ahead(first: Stats | None, second: Stats | None) -> bool | None:
    """Whether `first` is ahead of `second` by more than 2 sd of either (None: not
    judged, a side missing or with one value)."""
    if first is None or second is None or min(first.n, second.n) < 2:
        return None
    return first.mean - second.mean > 2 * max(first.sd, second.sd)


def verdict_cell(met: bool | None) -> str:
    """A met / missed / not judged cell of the page's tables."""
    return "–" if met is None else "yes" if met else "**no**"


def cell(s: Stats | None, digits: int = 3) -> str:
    return "–" if s is None else s.format(digits)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _layer_label(layer: int) -> str:
    # the published code's index is Hugging Face's hidden_states index
    return f"{layer_name(layer)} ({hidden_states_index(layer)})"


def present_kinds(summary: Summary, folders: Sequence[str]) -> list[str]:
    return [f for f in folders if f in summary.modes]


SLOT_KINDS, VALUE_KINDS = SLOT_FOLDERS, VALUE_FOLDERS  # the run folders, in run-kind order


Column = tuple[str, Callable[[int], str]]  # header, and the cell of a layer


def metric_cell(s: Summary, mode: str, slice_name: str, metric: str, digits: int = 3
            ) -> Callable[[int], str]:
    return lambda layer: cell(s.get(mode, layer, slice_name, metric), digits)


def layer_table(s: Summary, columns: Sequence[Column]) -> str:
    """One row per layer, the published index in brackets."""
    return table(["layer (published)", *(h for h, _ in columns)],
                  [[_layer_label(layer), *(cell(layer) for _, cell in columns)]
                   for layer in s.layers])


def binding_table(s: Summary) -> str:
    columns: list[Column] = []
    for k in [*present_kinds(s, SLOT_KINDS), "probe"]:
        metric = "relation_accuracy" if k == "probe" else "binding_accuracy"
        name = "relation probe" if k == "probe" else label_of(k)
        columns += [(f"{name} seen", metric_cell(s, k, SEEN, metric)),
                    (f"{name} paraphrase", metric_cell(s, k, PARAPHRASE, metric))]
    return layer_table(s, columns)


def swap_interval(s: Summary, kind: str, layer: int, variant: str = "decoder") -> str:
    lo = s.seed0(kind, layer, "swap", f"{variant}.best_success_ci95[0]")
    hi = s.seed0(kind, layer, "swap", f"{variant}.best_success_ci95[1]")
    alpha = s.seed0(kind, layer, "swap", f"{variant}.best_alpha")
    if lo is None or hi is None or alpha is None:
        return "–"
    return f"[{lo:.3f}, {hi:.3f}] at α={alpha:g}"


def swap_table(s: Summary, variant: str) -> str:
    columns: list[Column] = []
    for k in present_kinds(s, SLOT_KINDS):
        columns += [(label_of(k), metric_cell(s, k, "swap", f"{variant}.best_success_rate")),
                    (f"{label_of(k)} seed 0: 95% CI",
                     lambda layer, k=k: swap_interval(s, k, layer, variant))]
    return layer_table(s, columns)


def value_table(s: Summary) -> str:
    columns: list[Column] = []
    for k in present_kinds(s, VALUE_KINDS):
        columns += [(label_of(k), metric_cell(s, k, SEEN, "value_accuracy")),
                    (f"{label_of(k)} unseen answers",
                     metric_cell(s, k, SEEN, "value_accuracy_unseen_answers"))]
    columns += [
        ("answer probe", metric_cell(s, "probe", SEEN, "answer_accuracy")),
        ("answer probe unseen answers",
         metric_cell(s, "probe", SEEN, "answer_accuracy_unseen_answers")),
        ("logit lens", metric_cell(s, "logit_lens", SEEN, "answer_accuracy")),
        ("logit lens of joint reconstruction",
         metric_cell(s, "joint", SEEN, "logit_lens_reconstruction_accuracy")),
        # the rows the one-token read-outs (logit lens, lens head) are scored on
        ("rows a first token names",
         metric_cell(s, "logit_lens", SEEN, "first_token_names_value_share")),
        ("LM", metric_cell(s, "lm", SEEN, "answer_accuracy")),
        ("LM, first token only", metric_cell(s, "lm", SEEN, "first_token_answer_accuracy")),
    ]
    return layer_table(s, columns)


def reconstruction_table(s: Summary) -> str:
    kinds = present_kinds(s, SLOT_KINDS)
    columns: list[Column] = [(f"{label_of(k)} FVU", metric_cell(s, k, SEEN, "fvu"))
                             for k in kinds]
    columns += [(f"{label_of(k)} L0", metric_cell(s, k, SEEN, "l0_free", 1)) for k in kinds]
    columns += [("joint spliced LM accuracy", metric_cell(s, "joint", SEEN, "spliced_accuracy")),
                ("LM clean", metric_cell(s, "joint", SEEN, "clean_accuracy"))]
    return layer_table(s, columns)


def core_metrics_table(s: Summary) -> str:
    """The field's numbers at the one position edited: loss recovered and the spliced
    KL of every kind (1 - FVU is the explained variance of the table above)."""
    kinds = present_kinds(s, SLOT_KINDS)
    columns: list[Column] = [(f"{label_of(k)} loss recovered (first token)",
                              metric_cell(s, k, SEEN, "loss_recovered")) for k in kinds]
    columns += [(f"{label_of(k)} loss recovered (whole answer)",
                 metric_cell(s, k, SEEN, "answer_loss_recovered")) for k in kinds]
    columns += [(f"{label_of(k)} KL", metric_cell(s, k, SEEN, "spliced_kl")) for k in kinds]
    columns += [("LM CE clean (first token)", metric_cell(s, "joint", SEEN, "clean_ce")),
                ("CE zero-ablated", metric_cell(s, "joint", SEEN, "zero_ablated_ce")),
                ("answer NLL clean (whole)", metric_cell(s, "joint", SEEN, "clean_answer_nll"))]
    return layer_table(s, columns)
