"""The swap figures: success against alpha per layer and variant, where the swaps went,
and the A -> B matrix at the layer chosen on train people; and success by layer beside
the baselines that are not SAEs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from supervised_sae.evaluation.names import OUTCOMES, VARIANTS
from supervised_sae.evaluation.summary import STEERING
from supervised_sae.layers import layer_name
from supervised_sae.report.plots import STYLE, save_figure
from supervised_sae.report.simplest_tools import entity_tools, relation_tools
from supervised_sae.report.summary_view import Summary
from supervised_sae.runs import label_of

UNITS = {"decoder": "alpha (units of |h| / |d_B|)",
         "latent": "alpha (units of slot B's typical value)"}
OUTCOME_COLORS = {"success": "#2a9d8f", "no_effect": "#8d99ae", "other_person": "#e9c46a",
                  "other": "#e76f51"}


def swap_matrix_layer(metrics_by_layer: dict[int, dict], variant: str = "decoder") -> int:
    """The layer whose swaps succeed most on train people. Like alpha, it is chosen on
    train people: held-out people only report."""
    return max(metrics_by_layer, key=lambda layer: max(
        metrics_by_layer[layer]["swap"][variant]["train_success_rate"]))


def _outcome_bars(ax, loaded: dict[str, dict[int, dict]]) -> None:
    """Per run kind and variant, where held-out swaps went at the alpha and layer
    chosen on train people."""
    labels, shares = [], []
    for kind, by_layer in loaded.items():
        for variant in VARIANTS:
            layer = swap_matrix_layer(by_layer, variant)
            outcome = by_layer[layer]["swap"][variant]["outcomes_at_best_alpha"]
            labels.append(f"{label_of(kind)}\n{variant}, layer {layer_name(layer)}")
            shares.append([outcome[o] for o in OUTCOMES])
    left = np.zeros(len(labels))
    for k, name in enumerate(OUTCOMES):
        width = np.array([s[k] for s in shares])
        ax.barh(labels, width, left=left, color=OUTCOME_COLORS[name],
                label=name.replace("_", " "))
        left += width
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set(xlim=(0, 1), xlabel="share of held-out swaps",
           title="where the swaps went\n(alpha and layer chosen on train people)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)


def plot_swaps(metrics_by_mode_layer: dict[str, dict[int, str | Path]], out: str | Path) -> None:
    """Rows: the decoder and the latent edit. Per run kind, held-out success against
    alpha per layer; last column: the first kind's decoder A -> B matrix at the layer
    chosen on train people, and the outcome breakdown of every kind."""
    kinds = list(metrics_by_mode_layer)
    loaded = {k: {layer: json.loads(Path(p).read_text()) for layer, p in v.items()}
              for k, v in metrics_by_mode_layer.items()}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, len(kinds) + 1, figsize=(4.3 * (len(kinds) + 1), 8.4),
                                 layout="constrained", squeeze=False)
        cmap = plt.get_cmap("viridis")
        for row, variant in enumerate(VARIANTS):
            for ax, kind in zip(axes[row], kinds, strict=False):
                layers = sorted(loaded[kind])
                for k, layer in enumerate(layers):
                    swap = loaded[kind][layer]["swap"][variant]
                    ax.plot(swap["alphas"], swap["success_rate"], marker="o",
                            color=cmap(k / max(len(layers) - 1, 1)),
                            label=f"layer {layer_name(layer)}")
                ax.set(xscale="log", xlabel=UNITS[variant], ylabel="swap success",
                       ylim=(-0.02, 1.02),
                       title=f"{label_of(kind)}: {variant} edit, held-out people")
                ax.set_xticks(swap["alphas"], [f"{a:g}" for a in swap["alphas"]])
                ax.minorticks_off()
                ax.legend(loc="best", fontsize=7)
        first = loaded[kinds[0]]
        best_layer = swap_matrix_layer(first)
        swap = first[best_layer]["swap"]["decoder"]
        names = first[best_layer]["relation_names"]
        ax = axes[0, -1]
        im = ax.imshow(np.array(swap["matrix_at_best_alpha"]), vmin=0, vmax=1, cmap="magma")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.grid(False)
        ax.set(xlabel="steered toward relation B", ylabel="asked about relation A",
               title=f"{label_of(kinds[0])}, decoder edit, held-out people,\nlayer "
               f"{layer_name(best_layer)}, alpha={swap['best_alpha']:g} (both chosen on "
               "train people)")
        fig.colorbar(im, ax=ax, shrink=0.8, label="success rate")
        _outcome_bars(axes[1, -1], loaded)
        save_figure(fig, out)


# SAE kinds by mode, the steering baselines by method ("entity": the linear entity swap)
TOOL_COLOURS = {"joint": "C0", "base": "C1", "diffmean": "C3", "probe_direction": "C4",
                "entity": "C2"}


def plot_simplest_tools(summary: pd.DataFrame, out: str | Path) -> None:
    """Held-out success by layer (mean ± sd over draws) of the SAEs' swaps beside the
    baselines that are not SAEs; the one-position ceiling as a dashed black line. Left:
    relation swaps; right: entity swaps' cause."""
    s = Summary(summary)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
        x = np.arange(len(s.layers))
        for ax, tools, title in ((axes[0], relation_tools(s), "relation swaps: success "
                                  "(α chosen on train people)"),
                                 (axes[1], entity_tools(s), "entity swaps: cause")):
            for k, (label, mode, metric) in enumerate(tools):
                stats = [s.get(mode, layer, "swap", metric) for layer in s.layers]
                mean = np.array([np.nan if t is None else t.mean for t in stats])
                sd = np.array([np.nan if t is None else t.sd for t in stats])
                ceiling = k == len(tools) - 1
                method = metric.split(".")[0]  # one colour per method in both panels
                colour = "k" if ceiling else TOOL_COLOURS.get(
                    mode if mode != STEERING else method, TOOL_COLOURS["base"])
                ax.errorbar(x + (0 if ceiling else 0.06 * (k - len(tools) / 2)), mean, sd,
                            marker="" if ceiling else "o", capsize=2, label=label,
                            color=colour, lw=1.5 if ceiling else 1.2,
                            ls="--" if ceiling else ":" if method == "decoder" else "-")
            ax.set_xticks(x, [layer_name(layer) for layer in s.layers])
            ax.set(xlabel="layer", ylabel="share of held-out swaps", ylim=(-0.02, 1.02),
                   title=title)
            ax.legend(loc="best", fontsize=7)
        save_figure(fig, out)
