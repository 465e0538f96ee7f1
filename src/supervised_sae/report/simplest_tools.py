"""The results page's answer to "does supervision beat the simplest tools?": the SAEs'
swaps beside the baselines that are not SAEs (`evaluation.steering`, mode `steering`
in the summary) and the ceiling of a one-position edit, per layer, with readings
generated from the numbers."""

from __future__ import annotations

from supervised_sae.evaluation.summary import STEERING
from supervised_sae.layers import layer_name
from supervised_sae.report.summary_view import (
    Column,
    Stats,
    Summary,
    ahead,
    cell,
    layer_table,
    metric_cell,
    sparse_baseline,
)
from supervised_sae.runs import label_of

JOINT_LATENT = ("joint", "latent.best_success_rate")
DIFFMEAN = (STEERING, "diffmean.best_success_rate")
PROBE_DIRECTION = (STEERING, "probe_direction.best_success_rate")
RELATION_CEILING = (STEERING, "ceiling.success_rate")
ENTITY_CEILING = (STEERING, "entity.ceiling.cause")
# a reported swap metric -> the ceiling it is stated as a fraction of (held-out people)
CEILING_OF = {"decoder.best_success_rate": RELATION_CEILING,
              "latent.best_success_rate": RELATION_CEILING,
              "entity.cause": ENTITY_CEILING}
# the layer a comparison is read at: where joint's latent swap works best on train people
CHOOSE_LAYER = ("joint", "swap", "latent.best_train_success_rate")


def relation_tools(s: Summary) -> list[tuple[str, str, str]]:
    """(label, mode, metric) of every relation swap on the page, the ceiling last."""
    base = sparse_baseline(s.modes)
    return [("joint latent", *JOINT_LATENT),
            ("joint decoder", "joint", "decoder.best_success_rate"),
            *([(f"{label_of(base)} latent", base, "latent.best_success_rate")] if base else []),
            ("DiffMean", *DIFFMEAN),
            ("probe direction", *PROBE_DIRECTION),
            ("ceiling", *RELATION_CEILING)]


def entity_tools(s: Summary) -> list[tuple[str, str, str]]:
    """(label, mode, metric) of every entity swap's cause, the ceiling last."""
    base = sparse_baseline(s.modes)
    return [("joint", "joint", "entity.cause"),
            *([(label_of(base), base, "entity.cause")] if base else []),
            ("linear (probe span kept)", STEERING, "entity.cause"), ("ceiling", *ENTITY_CEILING)]


def fraction_of_ceiling(s: Summary, layer: int, metric: str, stat: Stats) -> str:
    """"; 62% of the one-position ceiling (0.850 ± 0.020)" for a swap metric with one."""
    ceiling = CEILING_OF.get(metric)
    c = s.get(ceiling[0], layer, "swap", ceiling[1]) if ceiling else None
    if c is None or c.mean <= 0:
        return ""
    return f"; {stat.mean / c.mean:.0%} of the one-position ceiling ({c})"


def _compare(s: Summary, first: tuple[str, str], second: tuple[str, str]
             ) -> dict[str, list[str]]:
    """Layers where `first` is ahead of `second` by > 2 sd, behind by > 2 sd, or
    neither (within the spread, or not judged)."""
    out: dict[str, list[str]] = {"ahead": [], "behind": [], "within": [], "unjudged": []}
    for layer in s.layers:
        a = s.get(first[0], layer, "swap", first[1])
        b = s.get(second[0], layer, "swap", second[1])
        if a is None or b is None:
            continue
        verdict = ahead(a, b)
        key = ("unjudged" if verdict is None else "ahead" if verdict
               else "behind" if ahead(b, a) else "within")
        out[key].append(layer_name(layer))
    return out


def _reading(name: str, versus: dict[str, list[str]]) -> str:
    parts = [f"ahead by > 2 sd at {', '.join(versus['ahead']) or 'no layer'}",
             f"behind by > 2 sd at {', '.join(versus['behind']) or 'no layer'}"]
    if versus["within"]:
        parts.append(f"within the spread at {', '.join(versus['within'])}")
    if versus["unjudged"]:
        parts.append(f"not judged (one value, no spread) at {', '.join(versus['unjudged'])}")
    return f"- Joint's latent swap against {name}: {'; '.join(parts)}."


def versus_diffmean(s: Summary) -> tuple[int, Stats, Stats, Stats | None] | None:
    """(layer, joint's latent swap, DiffMean, the ceiling) at the layer where joint's
    latent swap works best on train people (None: either swap missing)."""
    chosen = s.best_layer(*CHOOSE_LAYER)
    if chosen is None:
        return None
    layer = chosen[0]
    joint = s.get("joint", layer, "swap", JOINT_LATENT[1])
    diffmean = s.get(DIFFMEAN[0], layer, "swap", DIFFMEAN[1])
    if joint is None or diffmean is None:
        return None
    return layer, joint, diffmean, s.get(RELATION_CEILING[0], layer, "swap",
                                         RELATION_CEILING[1])


def answer(s: Summary) -> str | None:
    """One paragraph, first on the page: does the supervised slot beat a mean difference
    at the layer chosen on train people, and how close does each come to the ceiling."""
    found = versus_diffmean(s)
    if found is None:
        return None
    layer, joint, diffmean, ceiling = found
    if ahead(joint, diffmean) is None:  # one draw and SAE seed: no spread to judge by
        verdict = (f"joint {'above' if joint.mean > diffmean.mean else 'below'} DiffMean by "
                   f"{abs(joint.mean - diffmean.mean):.3f}, with one draw and seed the spread "
                   "is unknown")
    elif ahead(joint, diffmean):
        verdict = "supervision buys control that a mean difference does not"
    elif ahead(diffmean, joint):
        verdict = ("**the supervised slot loses to a difference of means**: two relations' "
                   "mean activations steer better than the slot trained for it")
    else:
        verdict = ("the supervised slot does no better than a difference of means (within "
                   "the spread)")
    return (f"**Against the simplest tools:** at layer {layer_name(layer)} (where joint's "
            f"latent swap works best on train people), joint's latent swap moves "
            f"{cell(joint)} of held-out questions to the asked-for relation's answer, "
            f"DiffMean {cell(diffmean)}, and the ceiling, the person's own residual from "
            f"the other question patched in, {cell(ceiling)}: "
            f"{verdict}.")


def simplest_tools_section(s: Summary) -> list[str]:
    """The page's section: relation and entity swaps per layer beside the baselines that
    are not SAEs and the ceiling, then the readings."""
    if STEERING not in s.modes:
        return []
    relation: list[Column] = [(label, metric_cell(s, mode, "swap", metric))
                              for label, mode, metric in relation_tools(s)]
    entity: list[Column] = [(label, metric_cell(s, mode, "swap", metric))
                            for label, mode, metric in entity_tools(s)]
    entity.append(("joint isolation", metric_cell(s, "joint", "swap", "entity.isolation")))
    entity.append(("linear isolation", metric_cell(s, STEERING, "swap", "entity.isolation")))
    base = sparse_baseline(s.modes)
    readings = [_reading("DiffMean", _compare(s, JOINT_LATENT, DIFFMEAN)),
                _reading("the probe direction", _compare(s, JOINT_LATENT, PROBE_DIRECTION)),
                *([_reading(f"the {label_of(base)}'s",
                            _compare(s, JOINT_LATENT, (base, "latent.best_success_rate")))]
                  if base else [])]
    found = versus_diffmean(s)
    if found is not None and found[3] is not None and found[3].mean > 0:
        layer, ceiling = found[0], found[3]
        shares = [f"{label} {stat.mean / ceiling.mean:.0%}"
                  for label, mode, metric in relation_tools(s)[:-1]
                  if (stat := s.get(mode, layer, "swap", metric)) is not None]
        readings.append(f"- At layer {layer_name(layer)} (chosen on train people), each "
                        f"as a share of the ceiling ({ceiling}): {'; '.join(shares)}.")
    return [
        "## Against the simplest tools", "",
        "What a researcher tries before any SAE, on the same swap pairs, α chosen on the "
        "same train people and success on the same held-out people as the SAEs' swaps: "
        "**DiffMean** adds α (μ_B − μ_A), the difference of train people's mean activations "
        "of questions about B and about A; the **probe direction** adds the relation probe's "
        "w_B − w_A at the same length; the **ceiling** writes the same person's residual "
        "from a question about B, what the model itself puts at that position when asked "
        "the other question (a reference, not a method; not a strict bound either: an "
        "edit that writes a vector the model never makes there can pass it). The whole "
        "answer exact.", "",
        layer_table(s, relation), "",
        "Entity swaps (cause: the LM gives the donor's whole value of the relation; every "
        "edit writes one position, which moves a date's month but not its day and year, "
        "read from the name's positions: birth dates are a sixth of these swaps and "
        "fail even for the ceiling, `bench/RESULTS.md`): the SAEs keep "
        "P's relation slots and take Q's free code; the linear analogue keeps P's "
        "component in the span of the relation probe's directions and takes the rest from "
        "Q; the ceiling takes Q's whole residual. Isolation: a value of the relation asked "
        "(Q's or P's).", "",
        layer_table(s, entity), "",
        *readings, ""]
