"""Linear-probe baselines on raw activations: relation and answer (a whole value), per
layer.

Multinomial logistic regression on standardised activations of train people (seen
templates), fitted with full-batch L-BFGS, scored on all four slices.
"""

from __future__ import annotations

from typing import Any

import torch

from supervised_sae.data.store_reader import LayerData
from supervised_sae.lm.readout import Readout, apply_readout


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 100,
              l2: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, bias, mean and scale of a softmax probe trained on (x, y)."""
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / scale
    w = torch.zeros(x.shape[1], n_classes, device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), mean, scale


@torch.no_grad()
def probe_predictions(probe, x: torch.Tensor) -> torch.Tensor:
    w, b, mean, scale = probe
    return ((x - mean) / scale @ w + b).argmax(1)


def layer_probes(data: LayerData, steps: int = 100, readout: Readout | None = None
                 ) -> dict[str, Any]:
    """Relation and answer probes of one layer, accuracy on each slice; answer accuracy
    also on rows whose answer was never a training label. With the LM's `readout`, the
    same for the logit lens (no training: the LM's final norm and unembedding)."""
    slices = data.slices()
    train = slices["train_seen"]
    unseen = data.answer_unseen_in_training()
    result: dict[str, Any] = {"layer": data.layer}

    def scored(name: str, predict, labels: torch.Tensor, only: torch.Tensor | None = None
               ) -> None:
        with torch.no_grad():
            kept = {s: rows if only is None else rows[only[rows]]
                    for s, rows in slices.items()}
            hits = {s: predict(data.x[rows]) == labels[rows] for s, rows in kept.items()
                    if len(rows)}
        result[name] = {s: float(h.float().mean()) for s, h in hits.items()}
        if name != "relation":
            result[f"{name}_unseen_answers"] = {
                s: float(h[unseen[kept[s]]].float().mean()) for s, h in hits.items()
                if unseen[kept[s]].any()}

    for target, labels, n_classes in (("relation", data.relation, len(data.relation_names)),
                                      ("answer", data.answer, len(data.answer_values))):
        with torch.enable_grad():
            probe = fit_probe(data.x[train], labels[train], n_classes, steps)
        scored(target, lambda x, p=probe: probe_predictions(p, x), labels)
    if readout is not None:
        # one token per value: scored where that token names one value (and the share)
        named = data.first_token_identifies()
        scored("logit_lens", lambda x: apply_readout(readout, x).argmax(1), data.answer,
               named)
        result["first_token_names_value_share"] = {
            s: float(named[rows].float().mean()) for s, rows in slices.items() if len(rows)}
    return result
