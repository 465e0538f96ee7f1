"""The study's targets and the published comparison, judged from a targets file.

The thresholds, the claims and the published numbers live in a YAML file beside the
study config (`results_targets`, e.g. `config/targets.yaml`); this module only judges
them. "The layer" of a target is chosen on train people, never on the held-out rows
it is reported on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from supervised_sae.layers import EMBEDDINGS, layer_name
from supervised_sae.report.simplest_tools import fraction_of_ceiling, versus_diffmean
from supervised_sae.report.summary_view import (
    PARAPHRASE,
    SEEN,
    Stats,
    Summary,
    ahead,
    cell,
    sparse_baseline,
    swap_interval,
)
from supervised_sae.runs import label_of


@dataclass(frozen=True)
class Target:
    claim: str
    measured: str
    met: bool | None
    """None: not judged (its metric is not in this study's summary)."""


def _at_chosen_layer(s: Summary, mode: str, choose: tuple[str, str, str],
                     report: tuple[str, str], lowest: bool = False
                     ) -> tuple[int, Stats, str] | None:
    """The held-out number at the layer chosen on train people (`choose`: mode, slice,
    metric; its highest, or with `lowest` its lowest), and the best held-out layer
    beside it for reference."""
    chosen = s.best_layer(*choose, lowest=lowest)
    if chosen is None:
        return None
    layer = chosen[0]
    stat = s.get(mode, layer, *report)
    best = s.best_layer(mode, *report, lowest=lowest)
    if stat is None or best is None:
        return None
    note = "" if best[0] == layer else (f" (best held-out layer: {layer_name(best[0])}, "
                                        f"{best[1]})")
    return layer, stat, note


def _worst_layer(s: Summary, mode: str, report: tuple[str, str], at_most: bool
                 ) -> tuple[int, Stats, str] | None:
    """The layer where the held-out number is worst (highest for a ceiling): a target
    every layer must meet, so no layer is chosen at all."""
    worst = s.best_layer(mode, *report, lowest=not at_most)
    if worst is None:
        return None
    return worst[0], worst[1], f" (the worst of {len(s.layers)} layers)"


def _lm_targets(s: Summary, lm: dict[str, Any], goals: dict[str, float]) -> list[Target]:
    """The LM's accuracy on held-out people, mean over draws (the summary's LM rows; the
    first draw's accuracy.json for a summary without them)."""
    out = []
    for key, slice_name, words in (("seen_templates", SEEN, "seen templates"),
                                   ("heldout_templates", PARAPHRASE, "held-out paraphrases")):
        stat = s.get("lm", s.layers[0], slice_name, "answer_accuracy") if s.layers else None
        if stat is None:
            stat = Stats(lm[f"test_{key}"]["accuracy"], 0.0, 1)
        goal = goals[key]
        # an LM that never read held-out people's facts cannot know their answers
        unread = " (measures nothing: the LM never read their facts)" \
            if lm.get("held_out_facts_read") is False else ""
        out.append(Target(f"LM answers held-out people ≥ {goal:.2f} ({words})",
                          f"{stat}{unread}", stat.mean >= goal))
    return out


def _topk_target(s: Summary, base: str) -> Target:
    """Joint binding at least the sparse baseline's (`sparse_baseline`) at every layer."""
    gaps = [(layer, s.get("joint", layer, SEEN, "binding_accuracy"),
             s.get(base, layer, SEEN, "binding_accuracy")) for layer in s.layers]
    worse = [layer_name(layer) for layer, j, t in gaps if j and t and j.mean < t.mean]
    clear = [layer_name(layer) for layer, j, t in gaps if ahead(j, t)]
    spread = (f"ahead by > 2 sd (of either) at: {', '.join(clear) or 'none'}"
              if s.n_seeds > 1 or len(s.draws) > 1
              else "one draw and seed: the spread is unknown")
    short = "TopK" if base == "topk" else f"the {label_of(base)}"
    return Target(f"supervised (joint) binding ≥ {short}'s at every layer (seen templates), by "
                  "more than the spread where claimed",
                  f"joint below {short} at: {', '.join(worse) or 'none'}; {spread}",
                  not worse)


def _diffmean_target(s: Summary) -> Target | None:
    """Joint's latent swap ahead of DiffMean by > 2 sd at the layer where joint's latent
    swap works best on train people (both with alpha chosen on train people)."""
    found = versus_diffmean(s)
    if found is None:
        return None
    layer, joint, diffmean, _ = found
    verdict = ahead(joint, diffmean)
    spread = "" if verdict is not None else "; one draw and seed: the spread is unknown"
    return Target("joint latent swap ahead of DiffMean by > 2 sd (α of each chosen on train "
                  "people), at the layer chosen on train people",
                  f"joint {joint}, DiffMean {diffmean} at layer {layer_name(layer)}{spread}",
                  bool(verdict))


def _early_layer_target(s: Summary, gap: float) -> Target | None:
    first = s.layers[0]
    best = s.best_layer("joint", "train_seen", "binding_accuracy")
    if not best or first == best[0]:
        return None
    early = s.get("joint", first, SEEN, "binding_accuracy")
    at_best = s.get("joint", best[0], SEEN, "binding_accuracy")
    probe = s.get("probe", first, SEEN, "relation_accuracy")
    if not early or not at_best:
        return None
    return Target(f"the earliest stored layer binds clearly worse (by > {gap:g}) than the best",
                  f"layer {layer_name(first)}: joint {early}, relation probe {cell(probe)}; "
                  f"layer {layer_name(best[0])}: {at_best}", early.mean < at_best.mean - gap)


def targets(s: Summary, lm: dict[str, Any], spec: dict[str, Any]) -> list[Target]:
    """The targets of `spec` (a targets file), each with what was measured."""
    out = _lm_targets(s, lm, spec["lm"])
    known = set(s.table["metric"])
    for target in spec["joint"]:
        absent = [m for m in (target["report"][1], *(target["choose"] or ())[2:])
                  if m not in known]
        if absent:  # a typo, or a metric this study did not measure: said, not dropped
            near = difflib.get_close_matches(absent[0], sorted(known), n=2)
            out.append(Target(target["claim"].format(goal=target["goal"]),
                              f"not judged: no run wrote metric `{absent[0]}`"
                              + (f" (did you mean `{'`, `'.join(near)}`?)" if near else ""),
                              None))
            continue
        at_most = target["at_most"]  # a ceiling (FVU, L0), or a floor: always stated
        if target.get("every_layer"):
            found = _worst_layer(s, "joint", tuple(target["report"]), at_most)
            where = "at every layer"
        else:
            found = _at_chosen_layer(s, "joint", tuple(target["choose"]),
                                     tuple(target["report"]), lowest=at_most)
            where = "at the layer chosen on train people"
        if found is None:
            continue
        layer, stat, note = found
        measured = f"{stat} at layer {layer_name(layer)}{note}"
        if target["report"][1] == "decoder.best_success_rate":
            measured += f"; seed 0 {swap_interval(s, 'joint', layer)}"
        measured += fraction_of_ceiling(s, layer, target["report"][1], stat)
        claim = target["claim"].format(goal=f"{target['goal']:.2f}"
                                       if target["goal"] < 1 else f"{target['goal']:g}")
        met = stat.mean <= target["goal"] if at_most else stat.mean >= target["goal"]
        out.append(Target(f"{claim}, {where}", measured, met))
    base = sparse_baseline(s.modes)
    if spec.get("beats_topk") and base is not None:
        out.append(_topk_target(s, base))
    if spec.get("beats_diffmean"):
        versus = _diffmean_target(s)
        if versus is not None:
            out.append(versus)
    if spec.get("early_layer_gap") is not None:
        early = _early_layer_target(s, float(spec["early_layer_gap"]))
        if early is not None:
            out.append(early)
    return out


def verdicts_without_each_draw(s: Summary, lm: dict[str, Any], spec: dict[str, Any],
                               found: list[Target]) -> list[tuple[Target, list[bool | None]]]:
    """Each target judged over all draws (`found`: `targets(s, lm, spec)`), and its
    verdict with each draw left out in turn (None: not judged without that draw)."""
    left_out = [{t.claim: t.met for t in targets(s.without_draw(d), lm, spec)}
                for d in s.draws]
    return [(t, [verdicts.get(t.claim) for verdicts in left_out]) for t in found]


def _position(layer: int, n_blocks: int) -> str:
    return "its last block" if layer == n_blocks - 1 else f"block {layer + 1} of {n_blocks}"


def published_comparison(s: Summary, published: dict[str, Any], n_blocks: int) -> list[str]:
    """Sentences that put the published numbers beside ours, with the index offset."""
    lines = []
    ours = int(published["binding_layer"]) - 1  # its index is hidden_states[L + 1]
    if ours in s.layers:
        b = s.get("joint", ours, SEEN, "binding_accuracy")
        lines.append(
            f"- Published: {published['binding']:.0%} binding at its layer "
            f"{published['binding_layer']} ({published['model']}: "
            f"{_position(ours, int(published['n_blocks']))}). Its layer "
            f"{published['binding_layer']} is our layer {ours} (after block {ours}); here "
            f"joint binding there is {cell(b)} on seen templates and "
            f"{cell(s.get('joint', ours, PARAPHRASE, 'binding_accuracy'))} on held-out "
            f"paraphrases. Our LM has {n_blocks} blocks, so our layer {ours} is "
            f"{_position(ours, n_blocks)}.")
    if EMBEDDINGS in s.layers:
        b = s.get("joint", EMBEDDINGS, SEEN, "binding_accuracy")
        lines.append(f"- Published: {published['early_binding']:.0%} binding in early "
                     "layers, its layer 0 being the embedding output. Our `emb` is that layer: "
                     f"joint binding {cell(b)}, a linear relation probe "
                     f"{cell(s.get('probe', EMBEDDINGS, SEEN, 'relation_accuracy'))}. Every "
                     "question ends in `?`, so at the embedding output only the position "
                     "tells relations apart; chance is 1/6 = 0.167.")
    joint_swaps = s.table[(s.table["mode"] == "joint") & (s.table["slice"] == "swap")]
    alpha = float(published["swap_alpha"])

    def at_published_alpha(prefix: str):
        rows = joint_swaps[joint_swaps["metric"] == f"{prefix}@alpha={alpha:g}"]
        return rows.groupby("layer")["value"].mean()

    held_out, train = (at_published_alpha("decoder.success_rate"),
                       at_published_alpha("decoder.train_success_rate"))
    diagnostic = s.best_layer("joint", "swap", "latent.best_train_success_rate")
    if diagnostic is not None:
        layer = diagnostic[0]
        protocol = s.get("joint", layer, "swap", "published.success_rate")
        latent = s.get("joint", layer, "swap", "latent.best_success_rate")
        lines.append(f"- Published: {published['swap_success']:.0%} swap success "
                     f"(α = {alpha:g}, its own protocol). **Comparable with it**: the "
                     "published protocol run on this model (a diagnostic: train people, α "
                     "read off the same swaps, lenient rule), joint at layer "
                     f"{layer_name(layer)}: {cell(protocol)}. **This project's strict "
                     "number** (held-out people, α chosen on train people, whole answer "
                     f"exact), latent edit at the same layer: {cell(latent)}; the walk "
                     "between the two is under *The published protocol* below.")
    elif len(held_out) and len(train):  # a summary from before the published protocol
        layer = int(train.idxmax())  # chosen on train people, reported on held-out ones
        lines.append(f"- Published: {published['swap_success']:.0%} swap success at α = "
                     f"{alpha:g}. Here, at α = {alpha:g} (not chosen, the published value) "
                     "and the layer where train people's swaps succeed most "
                     f"({layer_name(layer)}): {held_out[layer]:.3f} on held-out people "
                     "(joint, decoder direction, mean over seeds).")
    return lines
