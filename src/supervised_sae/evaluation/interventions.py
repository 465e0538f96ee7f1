"""LM-side interventions at one layer's last position: splicing the reconstruction in,
relation swaps (`swaps`), the published protocol (`published`) and entity swaps
(`entity_swaps`), all run through `edit_runner` (each prompt's prefix once).

Each edit replaces the residual stream at the prompt's last position (block L's
output, or the embeddings for `emb`) and reads the value the LM answers in full
(`whole_answers`);
`predictions_with_edit` is the plain (uncached) reference path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from supervised_sae.config.spec import EvaluationConfig
from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.evaluation.edit_spec import Edit, EditFn
from supervised_sae.evaluation.entity_swaps import entity_edit, entity_swaps
from supervised_sae.evaluation.names import VARIANTS
from supervised_sae.evaluation.published import published_protocol
from supervised_sae.evaluation.slots import SlotView
from supervised_sae.evaluation.swaps import swap_curves, swap_sides, swap_summary
from supervised_sae.evaluation.whole_answers import decode_answers
from supervised_sae.lm.hooks import hook_residual
from supervised_sae.lm.load import next_token_ids
from supervised_sae.sae.model import SupervisedSAE


@torch.no_grad()
def predictions_with_edit(lm, blocks, layer: int, encoded: Sequence[Sequence[int]],
                          pad_id: int, edit: EditFn | None,
                          device: str | torch.device, batch_size: int = 256) -> torch.Tensor:
    """Greedy next token after each row, with the residual stream at `layer` (block
    `layer`'s output, or the embeddings for -1) at the row's last position replaced by
    edit(h_last, row indices) (None: clean). The reference for `PrefixCachedRunner`,
    which gives the same tokens running each prompt's prefix once."""
    if edit is None:
        return next_token_ids(lm, encoded, pad_id, device, batch_size)
    state: dict[str, Any] = {}

    def remember(last: torch.Tensor, rows: slice) -> None:
        state["last"] = last
        state["rows"] = torch.arange(rows.start, rows.stop, device=last.device)

    def replace_last(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        ar = torch.arange(len(state["last"]), device=hidden.device)
        h_last = hidden[ar, state["last"]]
        hidden[ar, state["last"]] = edit(h_last.float(), state["rows"]).to(hidden.dtype)
        return hidden

    handle = hook_residual(blocks, layer, replace_last)
    try:
        return next_token_ids(lm, encoded, pad_id, device, batch_size, before_batch=remember)
    finally:
        handle.remove()


def sample_rows(rows: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    if len(rows) <= limit:
        return rows
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:limit]
    return rows[pick.sort().values.to(rows.device)]


def swap_controllability(sae: SupervisedSAE, view: SlotView, data: LayerData,
                         runner: PrefixCachedRunner, settings: EvaluationConfig,
                         scale: torch.Tensor, gold_text: dict[tuple[int, int], str],
                         decode: Callable[[list[int]], str], published: bool = True
                         ) -> dict[str, Any]:
    """Relation swaps (both variants, with where they went), the published protocol
    and its walk to the strict number, and entity swaps, on prompts of up to
    `swap_people` people per side: train people choose alpha, held-out people report
    (seen question wordings). `settings`: the config's evaluation section; `scale`: each
    slot's typical "on" value on train rows (`slots.typical_slot_values`), the latent
    edit's unit. `published`: also the published protocol (a diagnostic)."""
    slices = data.slices()
    n_rel = len(data.relation_names)
    person = data.person.cpu().numpy()
    sides = swap_sides(data, settings.swap_people)
    rows, pairs = sides.rows, sides.pairs
    result: dict[str, Any] = {
        "alphas": list(settings.alphas), "latent_alphas": list(settings.latent_alphas),
        "n_people": {side: int(len(np.unique(person[r]))) for side, r in rows.items()},
        "latent_slot_scale": scale.tolist(),
        # a typical "on" value's write (value x |d_B|) over the mean |h| of train rows:
        # the latent edit at alpha writes alpha times this, the decoder edit alpha
        "latent_write_norm": (scale * sae.W_dec[view.slots].norm(dim=1) / data.x[
            slices["train_seen"]].float().norm(dim=1).mean()).tolist()}
    if not sides.complete:
        return result
    grids = {"decoder": settings.alphas, "latent": settings.latent_alphas}
    curves = {side: swap_curves(sae, view, runner, p, grids, scale)
              for side, p in pairs.items()}
    for variant in VARIANTS:
        result[variant] = swap_summary(
            (curves["train"][variant], pairs["train"]),
            (curves["test"][variant], pairs["test"]), grids[variant], n_rel, sides.values_of)
    if published:
        train = pairs["train"]
        gold = [gold_text[(int(p), int(b))] for p, b in zip(train.person, train.dst.tolist(),
                                                             strict=True)]
        result["published_protocol"] = published_protocol(
            sae, view, runner, train, gold, decode, settings.published_alphas,
            settings.latent_alphas, scale, settings.max_new_tokens, result["latent"])
    # train people's entity swaps choose the layer the held-out ones are reported at
    kept = "relation slots" if view.supervised else "nothing (whole code replaced)"
    for key, side in (("entity", "test"), ("entity_train", "train")):
        result[key] = entity_swaps(data, runner, rows[side],
                                   lambda donor_x: entity_edit(sae, view, donor_x), kept)
    return result


@torch.no_grad()
def splice_accuracy(sae: SupervisedSAE, runner: PrefixCachedRunner, data: LayerData,
                    rows: torch.Tensor, limit: int) -> dict[str, Any] | None:
    """On up to `limit` of `rows`, at the prompt's last position with the residual at
    the layer clean, replaced by the SAE's reconstruction (spliced) and zero-ablated:
    the LM's whole-answer accuracy; the cross-entropy of the answer's first token over
    the full vocabulary, loss recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)
    (null with a note where CE_zero <= CE_clean),
    and the KL divergence of the spliced from the clean next-token distribution (nats),
    all three at the edited position; and the whole answer's summed NLL (teacher
    forced) with its loss recovered, which equal the first token's for one-token values."""
    picked = sample_rows(rows, limit).cpu().numpy()
    if not len(picked):
        return None
    at = torch.from_numpy(picked).to(data.answer.device)
    gold = data.answer_token_id[at]

    def read(parts: list[torch.Tensor], jobs: torch.Tensor) -> list[torch.Tensor]:
        log_p = [torch.log_softmax(p.float(), dim=-1) for p in parts]
        clean, target = log_p[0], gold[jobs][:, None]
        return [torch.cat([-lp.gather(1, target),
                           (clean.exp() * (clean - lp)).sum(-1, keepdim=True),
                           lp.argmax(-1, keepdim=True).float()], dim=1).double()  # +greedy
                for lp in log_p]

    edits = [Edit(None), Edit(lambda h, _jobs: sae.decode(sae.encode(h))),
             Edit(lambda h, _jobs: torch.zeros_like(h))]
    first = runner.run(picked, edits, read=read)  # one pass: the first token's CE and its greedy
    greedy = [t[:, 2:3].long() for t in first]
    accuracy = [float((answer == data.answer[at]).float().mean())
                for answer in decode_answers(runner, picked, edits, greedy)]
    whole = [f[:, 0] + rest for f, rest in zip(first, answer_tails_nll(
        runner, data, picked, edits), strict=True)]
    clean, spliced, zeroed = (t[:, :2].mean(0).tolist() for t in first)
    nll = [float(w.mean()) for w in whole]
    return {"n_lm_prompts": int(len(picked)),
            "clean_accuracy": accuracy[0], "spliced_accuracy": accuracy[1],
            "zero_ablated_accuracy": accuracy[2],
            "clean_ce": clean[0], "spliced_ce": spliced[0], "zero_ablated_ce": zeroed[0],
            **recovered("loss_recovered", clean[0], spliced[0], zeroed[0]),
            "spliced_kl": spliced[1],
            "clean_answer_nll": nll[0], "spliced_answer_nll": nll[1],
            "zero_ablated_answer_nll": nll[2],
            **recovered("answer_loss_recovered", *nll)}


def recovered(key: str, clean: float, spliced: float, zeroed: float) -> dict[str, Any]:
    """{key: (zeroed - spliced) / (zeroed - clean)}; where zero-ablation does not raise
    the loss the ratio is undefined: null, with the reason under key + "_note" (strict
    JSON has no NaN, and the rest of the file must not be lost to it)."""
    gap = zeroed - clean
    if gap > 0:
        return {key: (zeroed - spliced) / gap}
    return {key: None, f"{key}_note": f"undefined: zero-ablation does not raise the loss "
                                      f"({zeroed:.4g} zero-ablated, {clean:.4g} clean)"}


def answer_tails_nll(runner: PrefixCachedRunner, data: LayerData, picked: np.ndarray,
                     edits: list[Edit]) -> list[torch.Tensor]:
    """Per edit, each prompt's summed NLL of its answer's tokens after the first,
    teacher forced after the edit (0 for one-token values: only they skip the run)."""
    values = [data.value_tokens[int(v)] for v in data.answer[torch.from_numpy(picked)
                                                             .to(data.answer.device)]]
    longer = np.flatnonzero([len(v) > 1 for v in values])
    tails = [torch.zeros(len(picked), device=data.answer.device) for _ in edits]
    if not len(longer):
        return tails
    width = max(len(values[i]) for i in longer)
    forced = torch.full((len(longer), width), -1, dtype=torch.long, device=runner.device)
    for j, i in enumerate(longer):
        forced[j, :len(values[i])] = torch.tensor(values[i])
    runs = runner.run(picked[longer], [Edit(e.fn, e.site, width, forced) for e in edits])
    for tail, nll in zip(tails, runs, strict=True):
        tail[torch.from_numpy(longer).to(tail.device)] = nll[:, 1:].sum(1).to(tail.device)
    return tails
