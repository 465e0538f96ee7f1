"""The L0 sweep (`sweep`): fronts of the supervised joint SAE and its sparse baseline
against free-slot L0, a table per swept value, and the target that joint is ahead at
every one. The spread is over the SAE seeds of the first draw, the only one swept."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

from supervised_sae.evaluation.summary import main_study, spread, swept  # noqa: E402
from supervised_sae.report.plots import STYLE, save_figure  # noqa: E402
from supervised_sae.report.summary_view import (  # noqa: E402
    Stats,
    ahead,
    cell,
    sparse_baseline,
    table,
    verdict_cell,
)
from supervised_sae.report.targets import Target  # noqa: E402
from supervised_sae.runs import colour_of, label_of  # noqa: E402

# (title, slice, metric) of each front, on held-out people
FRONTS = (("FVU", "test_seen", "fvu"),
          ("loss recovered", "test_seen", "loss_recovered"),
          ("binding, paraphrases", "test_heldout", "binding_accuracy"),
          ("latent swap success", "swap", "latent.best_success_rate"),
          ("entity-swap cause", "swap", "entity.cause"))
COMPARED = FRONTS[2:4]  # where supervision must beat the baseline by more than 2 sd
L0 = ("test_seen", "l0_free")


def with_main_point(summary: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The summary with the main study's own setting (its `sae.k` or `sae.target_l0`) as
    one more point of the sweep: its first-draw runs at the swept layer, the same
    settings and activations the sweep would train that value on. Unchanged without a
    sweep, without a main value, or where the sweep trained that value itself."""
    rows = swept(summary)
    sweep = config.get("sweep") or {}
    value = (config.get("sae") or {}).get(sweep.get("key", "k"))
    if not len(rows) or value is None or (rows["sweep"] == float(value)).any():
        return summary
    main = main_study(summary)
    point = main[(main["draw"] == 0) & main["layer"].isin(set(rows["layer"]))
                 & main["mode"].isin(set(rows["mode"]))]
    return pd.concat([summary, point.assign(sweep=float(value))], ignore_index=True)


def front(rows: pd.DataFrame, mode: str, slice_name: str, metric: str) -> pd.DataFrame:
    """Per swept value: mean, sd and n of the metric, and the mean free-slot L0."""
    def stats(s: str, m: str) -> pd.DataFrame:
        part = rows[(rows["mode"] == mode) & (rows["slice"] == s) & (rows["metric"] == m)]
        return spread(part, ["sweep"]).set_index("sweep")

    return stats(slice_name, metric).join(stats(*L0)["mean"].rename("l0"), how="inner")


def _at(f: pd.DataFrame, value: float) -> Stats | None:
    if value not in f.index:
        return None
    row = f.loc[value]
    return Stats(float(row["mean"]), 0.0 if row["n"] < 2 else float(row["sd"]), int(row["n"]))


def _comparisons(rows: pd.DataFrame, base: str
                 ) -> dict[str, dict[float, tuple[Stats | None, Stats | None, bool | None]]]:
    """Per compared front and swept value: joint, the baseline and whether joint is
    ahead by more than 2 sd."""
    values = sorted(rows["sweep"].unique())
    out = {}
    for title, s, m in COMPARED:
        joint, baseline = front(rows, "joint", s, m), front(rows, base, s, m)
        pairs = {v: (_at(joint, v), _at(baseline, v)) for v in values}
        out[title] = {v: (j, b, ahead(j, b)) for v, (j, b) in pairs.items()}
    return out


def sweep_table(summary: pd.DataFrame, key: str) -> str:
    """One row per swept value: L0 and the compared fronts, joint beside the baseline."""
    rows = swept(summary)
    base = sparse_baseline(set(rows["mode"]))
    if base is None or not len(rows):
        return ""
    header = [key, "joint L0", f"{label_of(base)} L0"]
    for title, _, _ in COMPARED:
        header += [f"joint {title}", f"{label_of(base)} {title}", "ahead by > 2 sd"]
    l0 = {k: front(rows, k, *L0) for k in ("joint", base)}
    compared = _comparisons(rows, base)
    lines = []
    for value in sorted(rows["sweep"].unique()):
        line = [f"{value:g}", *(f"{s.mean:.1f}" if (s := _at(l0[k], value)) else "–"
                                for k in ("joint", base))]
        for per_value in compared.values():
            j, b, verdict = per_value[value]
            line += [cell(j), cell(b), verdict_cell(verdict)]
        lines.append(line)
    return table(header, lines)


def sweep_target(summary: pd.DataFrame, key: str) -> Target | None:
    """Joint ahead of the baseline at every swept value, on paraphrase binding and latent
    swap success, by more than 2 sd of either; where not, the values."""
    rows = swept(summary)
    base = sparse_baseline(set(rows["mode"]))
    if base is None or not len(rows):
        return None
    verdicts = [(title, v, verdict) for title, per_value in _comparisons(rows, base).items()
                for v, (_, _, verdict) in per_value.items()]
    missing = [f"{title} at {key}={v:g}" for title, v, verdict in verdicts if verdict is False]
    unjudged = any(verdict is None for _, _, verdict in verdicts)
    measured = (f"not ahead: {', '.join(missing) or 'none'}"
                + ("; one SAE seed somewhere: the 2 sd cannot be judged" if unjudged else ""))
    return Target(f"joint ahead of the {label_of(base)} at every swept {key} on paraphrase "
                  "binding and latent swap success, by > 2 sd of either", measured,
                  not missing and not unjudged)


def plot_l0_fronts(summary: pd.DataFrame, out: str | Path, key: str = "k") -> None:
    """Each front against free-slot L0 (log scale), joint and its baseline on one axis,
    a bar of +-1 sd over the first draw's SAE seeds."""
    rows = swept(summary)
    base = sparse_baseline(set(rows["mode"]))
    n_seeds = int(rows["replicate"].nunique()) if len(rows) else 0
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(FRONTS), figsize=(3.2 * len(FRONTS), 3.4),
                                 layout="constrained")
        for ax, (title, s, m) in zip(axes, FRONTS, strict=True):
            for mode in ("joint", base) if base else ():
                f = front(rows, mode, s, m).sort_values("l0")
                if not len(f):
                    continue
                ax.errorbar(f["l0"], f["mean"], yerr=f["sd"].fillna(0), marker="o",
                            capsize=2, color=colour_of(mode), label=label_of(mode))
                for value, row in f.iterrows():
                    ax.annotate(f"{value:g}", (row["l0"], row["mean"]), fontsize=6,
                                xytext=(2, 2), textcoords="offset points")
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(title=title, xlabel="free-slot L0 (held-out people)")
        axes[0].legend(loc="best", fontsize=7)
        fig.suptitle(f"L0 sweep over {key} (labels): held-out people; bars +-1 sd over "
                     f"{n_seeds} SAE seed(s) of the first draw", fontsize=9)
        save_figure(fig, out)
