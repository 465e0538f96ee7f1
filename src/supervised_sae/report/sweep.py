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

from supervised_sae.evaluation.summary import spread, swept  # noqa: E402
from supervised_sae.report.plots import STYLE, save_figure  # noqa: E402
from supervised_sae.report.summary_view import Stats, table  # noqa: E402
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


def baseline_of(rows: pd.DataFrame) -> str | None:
    """The sparse baseline a sweep compares with: the TopK SAE where one ran, else the
    encoder's own SAE without relation slots (with topk, the same TopK SAE)."""
    modes = set(rows["mode"])
    return next((m for m in ("topk", "unsupervised") if m in modes), None)


def front(rows: pd.DataFrame, mode: str, slice_name: str, metric: str) -> pd.DataFrame:
    """Per swept value: mean, sd and n of the metric, and the mean free-slot L0."""
    def stats(s: str, m: str) -> pd.DataFrame:
        part = rows[(rows["mode"] == mode) & (rows["slice"] == s) & (rows["metric"] == m)]
        return spread(part, ["sweep"]).set_index("sweep")

    return stats(slice_name, metric).join(stats(*L0)["mean"].rename("l0"), how="inner")


def _cell(row: pd.Series | None) -> Stats | None:
    if row is None:
        return None
    return Stats(float(row["mean"]), 0.0 if row["n"] < 2 else float(row["sd"]), int(row["n"]))


def _at(f: pd.DataFrame, value: float) -> Stats | None:
    return _cell(f.loc[value]) if value in f.index else None


def ahead(joint: Stats | None, base: Stats | None) -> bool | None:
    """Joint ahead by more than 2 sd of either (None: not judged, one seed or missing)."""
    if joint is None or base is None or min(joint.n, base.n) < 2:
        return None
    return joint.mean - base.mean > 2 * max(joint.sd, base.sd)


def sweep_table(summary: pd.DataFrame, key: str) -> str:
    """One row per swept value: L0 and the compared fronts, joint beside the baseline."""
    rows = swept(summary)
    base = baseline_of(rows)
    if base is None or not len(rows):
        return ""
    header = [key, "joint L0", f"{label_of(base)} L0"]
    fronts = {}
    for title, s, m in COMPARED:
        header += [f"joint {title}", f"{label_of(base)} {title}", "ahead by > 2 sd"]
        fronts[m] = (front(rows, "joint", s, m), front(rows, base, s, m))
    lines = []
    for value in sorted(rows["sweep"].unique()):
        j0, b0 = (_at(front(rows, k, *L0), value) for k in ("joint", base))
        line = [f"{value:g}", f"{j0.mean:.1f}" if j0 else "–", f"{b0.mean:.1f}" if b0 else "–"]
        for joint_front, base_front in fronts.values():
            j, b = _at(joint_front, value), _at(base_front, value)
            verdict = ahead(j, b)
            line += [str(j) if j else "–", str(b) if b else "–",
                     "–" if verdict is None else "yes" if verdict else "**no**"]
        lines.append(line)
    return table(header, lines)


def sweep_target(summary: pd.DataFrame, key: str) -> Target | None:
    """Joint ahead of the baseline at every swept value, on paraphrase binding and latent
    swap success, by more than 2 sd of either; where not, the values."""
    rows = swept(summary)
    base = baseline_of(rows)
    if base is None or not len(rows):
        return None
    missing, unjudged = [], False
    for title, s, m in COMPARED:
        joint_front, base_front = front(rows, "joint", s, m), front(rows, base, s, m)
        verdicts = {v: ahead(_at(joint_front, v), _at(base_front, v))
                    for v in sorted(rows["sweep"].unique())}
        unjudged |= None in verdicts.values()
        missing += [f"{title} at {key}={v:g}" for v, ok in verdicts.items() if ok is False]
    measured = (f"not ahead: {', '.join(missing) or 'none'}"
                + ("; one SAE seed somewhere: the 2 sd cannot be judged" if unjudged else ""))
    return Target(f"joint ahead of the {label_of(base)} at every swept {key} on paraphrase "
                  "binding and latent swap success, by > 2 sd of either", measured,
                  not missing and not unjudged)


def plot_l0_fronts(summary: pd.DataFrame, out: str | Path, key: str = "k") -> None:
    """Each front against free-slot L0 (log scale), joint and its baseline on one axis,
    a bar of +-1 sd over the first draw's SAE seeds."""
    rows = swept(summary)
    base = baseline_of(rows)
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
