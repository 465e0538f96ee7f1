"""Figures: training curves per run, and across-layer views of the whole study."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from supervised_sae.atomic import atomic_path  # noqa: E402
from supervised_sae.evaluation.summary import spread  # noqa: E402
from supervised_sae.layers import layer_name  # noqa: E402
from supervised_sae.runs import SLOT_FOLDERS, VALUE_FOLDERS, colour_of, label_of  # noqa: E402

STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 9, "legend.fontsize": 8,
         "legend.frameon": False}
LOSS_COLORS = {"recon": "C0", "sparse": "C1", "align": "C2", "indep": "C3", "ortho": "C4",
               "value": "C5", "lens_prior": "C6", "auxk": "C7", "l0": "C8", "total": "k"}
SLICE_LABELS = {"train_seen": "train people, seen templates",
                "train_heldout": "train people, held-out templates",
                "test_seen": "held-out people, seen templates",
                "test_heldout": "held-out people, held-out templates"}


def save_figure(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)


def _stage_sequence(stages: dict[str, Any], prefix: str = "") -> list[tuple[str, list]]:
    """Stages in training order; a frozen SAE's history comes first."""
    out = []
    for name, value in stages.items():
        if isinstance(value, dict):
            out += _stage_sequence(value, f"{prefix}{name}/")
        else:
            out.append((f"{prefix}{name}", value))
    return out


STAGE_LABELS = {"stage1": "stage 1", "stage2": "stage 2", "frozen_sae/stage1": "stage 1",
                "frozen_sae/stage2": "stage 2 (frozen)"}


def _epoch_axis(sequence: list[tuple[str, list]]) -> list[np.ndarray]:
    """x positions of each stage's epochs when the stages are laid end to end."""
    xs, offset = [], 0
    for _, epochs in sequence:
        xs.append(offset + np.arange(1, len(epochs) + 1))
        offset += len(epochs)
    return xs


def _plot_losses(ax, sequence, xs) -> None:
    labelled: set[str] = set()
    for (_, epochs), x in zip(sequence, xs, strict=True):
        for comp in list(epochs[0]["losses"]) + ["total"]:
            y = [e["total"] if comp == "total" else e["losses"][comp] for e in epochs]
            ax.plot(x, y, color=LOSS_COLORS[comp], lw=2 if comp == "total" else 1.2,
                    ls=":" if comp == "total" else "-",
                    label=None if comp in labelled else comp)
            labelled.add(comp)
    ax.set_yscale("log")
    ax.set(xlabel="epoch (stages in sequence)", ylabel="loss (mean over batches)")
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.15), ncol=4)


def _plot_accuracies(ax, sequence, xs) -> None:
    labelled: set[str] = set()

    def plot(x, y, name, **kw):
        ax.plot(x, y, label=None if name in labelled else name, **kw)
        labelled.add(name)

    for (_, epochs), x in zip(sequence, xs, strict=True):
        for key, style, name in (("slot_accuracy", "-", "slot acc (train batches)"),
                                 ("value_accuracy", "--", "value acc (train batches)")):
            if key in epochs[0]:
                plot(x, [e[key] for e in epochs], name, ls=style, color="0.4")
        for k, slice_name in enumerate(("test_seen", "test_heldout")):
            for key, marker in (("slot_accuracy", "o"), ("value_accuracy", "s")):
                pts = [(xi, e["eval"][slice_name][key]) for xi, e in zip(x, epochs, strict=True)
                       if key in e.get("eval", {}).get(slice_name, {})]
                if pts:
                    plot(*zip(*pts, strict=True), f"{key.split('_')[0]} acc, "
                         f"{SLICE_LABELS[slice_name]}", marker=marker, ls=":", color=f"C{k}")
    ax.set(xlabel="epoch (stages in sequence)", ylabel="accuracy", ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.15), ncol=2)


def plot_training_curves(history_path: str | Path, out: str | Path) -> None:
    """Every loss component and the total over epochs, stage boundaries marked; slot and
    value accuracy on training batches and on the evaluation slices."""
    history = json.loads(Path(history_path).read_text())
    meta = history.get("metadata", {})
    sequence = _stage_sequence(history["stages"])
    xs = _epoch_axis(sequence)
    has_accuracy = any("slot_accuracy" in e for _, epochs in sequence for e in epochs)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2 if has_accuracy else 1,
                                 figsize=(11, 4) if has_accuracy else (6, 4), squeeze=False)
        axes = axes[0]
        _plot_losses(axes[0], sequence, xs)
        if has_accuracy:
            _plot_accuracies(axes[1], sequence, xs)
            axes[1].set_xlim(axes[0].get_xlim())
        for (stage_name, _), x in zip(sequence, xs, strict=True):
            if len(sequence) == 1:
                break
            if x[0] > 1:
                for ax in axes:
                    ax.axvline(x[0] - 0.5, color="0.6", ls="--", lw=1)
            axes[0].text(x[0], 1.01, STAGE_LABELS.get(stage_name, stage_name), fontsize=7,
                         transform=axes[0].get_xaxis_transform(), color="0.3")
        title = (f"{meta.get('mode') or meta.get('stage', '')} - "
                 f"layer {layer_name(meta['layer']) if 'layer' in meta else '?'}")
        if not has_accuracy:  # the unsupervised baseline has no relation slots
            title += "\n(no relation slots: binding is measured after training)"
        fig.suptitle(title, y=1.04)
        save_figure(fig, out)


def _series(summary: pd.DataFrame, mode: str, slice_name: str, metric: str) -> pd.DataFrame:
    """Per layer: mean, sd and n of one metric (over draws, or SAE seeds: `spread`)."""
    part = summary[(summary["mode"] == mode) & (summary["slice"] == slice_name)
                   & (summary["metric"] == metric)]
    return spread(part, ["layer"]).set_index("layer")


def _line(ax, stats: pd.DataFrame, mode: str, label: str | None = None, **kw) -> None:
    """The mean across layers, with a band of +-1 sd where there are replicate seeds."""
    kw.setdefault("marker", "o")
    if not len(stats):
        return
    colour = colour_of(mode)
    ax.plot(stats.index, stats["mean"], color=colour, label=label or label_of(mode), **kw)
    if (stats["n"] > 1).any():
        sd = stats["sd"].fillna(0)
        ax.fill_between(stats.index, stats["mean"] - sd, stats["mean"] + sd, color=colour,
                        alpha=0.15, linewidth=0)


def _seeds_note(summary: pd.DataFrame) -> str:
    draws = summary["draw"].nunique() if "draw" in summary else 1
    if draws > 1:
        return f"; mean of {draws} draws (people, LM, SAEs), band +-1 sd over draws"
    n = summary["replicate"].nunique() if "replicate" in summary else 1
    return f"; SAE runs: mean of {n} seeds, band +-1 sd" if n > 1 else ""


def _layer_axis(ax, layers: Sequence[int]) -> None:
    ax.set_xticks(list(layers), [layer_name(x) for x in layers])
    ax.set_xlabel("layer: residual stream after block L (emb: embedding output)")


def plot_accuracy_by_layer(summary: pd.DataFrame, out: str | Path) -> None:
    """Slot (binding) and value accuracy per mode, beside probes, the LM and majority."""
    layers = sorted(summary["layer"].unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
        ax = axes[0]
        for mode in SLOT_FOLDERS:
            _line(ax, _series(summary, mode, "test_seen", "binding_accuracy"), mode)
            _line(ax, _series(summary, mode, "test_heldout", "binding_accuracy"), mode,
                  label="_", ls="--", alpha=0.7)
        _line(ax, _series(summary, "probe", "test_seen", "relation_accuracy"), "probe")
        _line(ax, _series(summary, "probe", "test_heldout", "relation_accuracy"), "probe",
              label="_", ls="--", alpha=0.7)
        ax.set(title="Which relation? binding accuracy", ylabel="accuracy", ylim=(-0.02, 1.05))
        ax = axes[1]
        for mode in VALUE_FOLDERS:
            _line(ax, _series(summary, mode, "test_seen", "value_accuracy"), mode)
            _line(ax, _series(summary, mode, "test_heldout", "value_accuracy"), mode,
                  label="_", ls="--", alpha=0.7)
        _line(ax, _series(summary, "probe", "test_seen", "answer_accuracy"), "probe")
        _line(ax, _series(summary, "logit_lens", "test_seen", "answer_accuracy"), "logit_lens")
        _line(ax, _series(summary, "lm", "test_seen", "answer_accuracy"), "lm")
        _line(ax, _series(summary, "lm", "test_heldout", "answer_accuracy"), "lm", label="_",
              ls="--", alpha=0.7)
        _line(ax, _series(summary, "joint", "test_seen", "majority_answer_accuracy"), "lm",
              label="majority answer", ls=":", marker=None)
        ax.set(title="What is the answer? value accuracy")
        for a in axes:
            _layer_axis(a, layers)
            a.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle("held-out people; solid: seen question templates, dashed: held-out "
                     f"templates{_seeds_note(summary)}", fontsize=9)
        save_figure(fig, out)


def plot_reconstruction_by_layer(summary: pd.DataFrame, out: str | Path) -> None:
    """Fraction of variance unexplained, L0 of free slots, and spliced vs clean accuracy."""
    layers = sorted(summary["layer"].unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
        for mode in SLOT_FOLDERS:
            _line(axes[0], _series(summary, mode, "test_seen", "fvu"), mode)
            _line(axes[1], _series(summary, mode, "test_seen", "l0_free"), mode)
            _line(axes[2], _series(summary, mode, "test_seen", "spliced_accuracy"), mode,
                  label=f"{label_of(mode)} (spliced)")
        _line(axes[2], _series(summary, "joint", "test_seen", "clean_accuracy"), "lm",
              label="LM clean")
        axes[0].set(title="Reconstruction", ylabel="fraction of variance unexplained")
        axes[1].set(title="Sparsity", ylabel="active free slots per prompt (L0)")
        axes[2].set(title="LM accuracy with the SAE spliced in", ylabel="whole-answer accuracy",
                    ylim=(-0.02, 1.05))
        for a in axes:
            _layer_axis(a, layers)
            a.legend(loc="best")
        fig.suptitle(f"held-out people, seen question templates{_seeds_note(summary)}",
                     fontsize=9)
        save_figure(fig, out)


def plot_binding_heatmaps(metrics_by_mode: dict[str, str | Path], out: str | Path,
                          slice_name: str = "test_seen") -> None:
    """Relation x slot mean activation per mode at one layer: the picture of binding."""
    items = [(m, json.loads(Path(p).read_text())) for m, p in metrics_by_mode.items()]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(items), figsize=(3.6 * len(items), 3.6),
                                 squeeze=False)
        for ax, (mode, metrics) in zip(axes[0], items, strict=True):
            matrix = np.array(metrics["slices"][slice_name]["relation_slot_mean_activation"])
            names = metrics["relation_names"]
            im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(1.0, matrix.max()))
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
            ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [])
            ax.grid(False)
            kind = "relation slot" if metrics["supervised"] else "matched free slot"
            ax.set(title=f"{label_of(mode)}\nbinding "
                   f"{metrics['slices'][slice_name]['binding_accuracy']:.2f}",
                   xlabel=f"{kind} (mean activation)")
            if ax is axes[0][0]:
                ax.set_ylabel("relation asked about")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="mean activation")
        fig.suptitle(f"layer {layer_name(items[0][1]['layer'])}, {SLICE_LABELS[slice_name]}",
                     y=1.02)
        save_figure(fig, out)
