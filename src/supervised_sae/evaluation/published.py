"""The published swap protocol (AlignSAE, commit 0fc6779, scripts/06_swap_evaluate.py),
reproduced on this model as a labelled diagnostic, and the walk from it to this
project's strict number, one change at a time.

As published: encode h at the layer, set slot A to 0 and slot B to alpha (absolute slot
values), decode without the reconstruction error, write the result into the last
position's input embedding (before the position embedding), generate greedily, and
count a swap by the lenient rule (`lenient_match`); the rows are train people in seen
wordings and the best alpha is read off those same rows. Not a target: it is what the
published 0.846 measures, so a reader can put this model's number beside it.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import NO_TOKEN, Edit
from supervised_sae.evaluation.names import WALK_STEPS
from supervised_sae.evaluation.slots import SlotView
from supervised_sae.evaluation.swaps import SwapPairs, latent_edit
from supervised_sae.sae.model import SupervisedSAE

MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})


def parse_date(text: str) -> tuple[int, int, int] | None:
    """(day, month, year) of a date written with a month name ("March 5, 1990",
    "5 march 1990"); None when the text holds no such date."""
    words = re.findall(r"[a-z]+|\d+", text.lower())
    month = next((MONTHS[w] for w in words if w in MONTHS), None)
    numbers = [int(w) for w in words if w.isdigit()]
    day = next((n for n in numbers if 1 <= n <= 31), None)
    year = next((n for n in numbers if n > 31), None)
    if month is None or day is None or year is None:
        return None
    return day, month, year


def first_line(text: str) -> str:
    """Lower-cased, stripped, the first line; no space before punctuation (a word-level
    tokenizer decodes "May 5, 1990" as "May 5 , 1990")."""
    lines = text.strip().lower().splitlines()
    return re.sub(r"\s+([,.;:!?])", r"\1", lines[0].strip() if lines else "")


def lenient_match(generated: str, gold: str) -> bool:
    """The published rule: lower-cased and stripped, the generation's first line; an
    empty generation is a miss; dates compare as (day, month, year); otherwise the gold
    value in the generation or the generation in the gold value."""
    text, gold = first_line(generated), first_line(gold)
    if not text:
        return False
    gold_date = parse_date(gold)
    if gold_date is not None:
        return parse_date(text) == gold_date
    return gold in text or text in gold


def exact_match(generated: str, gold: str) -> bool:
    text = first_line(generated)
    return bool(text) and text == first_line(gold)


def generated_texts(tokens: torch.Tensor, decode: Callable[[list[int]], str]) -> list[str]:
    """Each row's text; a generation repeated across rows (most are, over alphas and
    pairs) is decoded once."""
    unique, row_of = torch.unique(tokens, dim=0, return_inverse=True)
    texts = [decode([t for t in row if t != NO_TOKEN]) for row in unique.tolist()]
    return [texts[i] for i in row_of.tolist()]


def generation_rates(texts: list[str], golds: list[str]) -> tuple[float, float]:
    """(lenient, exact) success rates; each distinct (text, gold) is judged once."""
    judged = {pair: (lenient_match(*pair), exact_match(*pair))
              for pair in set(zip(texts, golds, strict=True))}
    scores = [judged[pair] for pair in zip(texts, golds, strict=True)]
    return (float(np.mean([lenient for lenient, _ in scores])),
            float(np.mean([exact for _, exact in scores])))


def best_on_same_rows(rates: Sequence[float], alphas: Sequence[float]) -> dict[str, Any]:
    best = int(np.argmax(rates))
    return {"success_rate": float(rates[best]), "alpha": alphas[best]}


def published_protocol(sae: SupervisedSAE, view: SlotView, runner: PrefixCachedRunner,
                       pairs: SwapPairs, gold: list[str], decode: Callable[[list[int]], str],
                       alphas: Sequence[float], latent_alphas: Sequence[float],
                       scale: torch.Tensor, new_tokens: int,
                       strict_latent: dict[str, Any]) -> dict[str, Any]:
    """The published protocol's number on train-people swaps `pairs` (gold: each pair's
    target value as text), then the walk to the strict latent number (`strict_latent`,
    the latent variant's summary), reporting the number after each change."""
    ones = torch.ones_like(scale)
    generated = dict(zip(WALK_STEPS, (  # steps that generate: site, error back, unit
        ("input_embedding", False, ones, alphas), ("residual", False, ones, alphas),
        ("residual", True, ones, alphas), ("residual", True, scale, latent_alphas)),
        strict=False))
    steps: list[dict[str, Any]] = []
    # every generating step's edits in one run: each chunk's generations share passes
    edits = [Edit(latent_edit(sae, view, pairs, a * unit, add_error), site, new_tokens)
             for site, add_error, unit, grid in generated.values() for a in grid]
    tokens = iter(runner.run(pairs.prompt, edits))
    for name, (*_, grid) in generated.items():
        rates = [generation_rates(generated_texts(next(tokens), decode), gold)
                 for _ in grid]
        lenient = [r[0] for r in rates]
        best = int(np.argmax(lenient))
        steps.append({"step": name, "success_rate": lenient[best], "alpha": grid[best],
                      "exact_match_rate": rates[best][1], "success_rate_by_alpha": lenient,
                      "exact_match_rate_by_alpha": [r[1] for r in rates],
                      "alphas": list(grid)})
    strict = strict_latent
    steps.append({"step": WALK_STEPS[4],
                  **best_on_same_rows(strict["train_success_rate"], strict["alphas"])})
    steps.append({"step": WALK_STEPS[5],
                  **best_on_same_rows(strict["success_rate"], strict["alphas"])})
    steps.append({"step": WALK_STEPS[6],
                  "success_rate": strict["best_success_rate"],
                  "alpha": strict["best_alpha"]})
    return {"success_rate": steps[0]["success_rate"], "alpha": steps[0]["alpha"],
            "exact_match_rate": steps[0]["exact_match_rate"], "n_pairs": len(pairs),
            "max_new_tokens": new_tokens, "walk": steps,
            "note": "diagnostic, not a target: the published protocol (latent edit written "
                    "at the input embedding, no error term, absolute alpha, greedy "
                    "generation and the lenient rule, train people, alpha read off the "
                    "same rows); comparable with the published 0.846"}
