"""What each slot of one SAE fires on, for the slot browser (`report/slot_browser.py`):
density, a histogram of its activations, top-activating rows, the store label its firing
predicts best (F1), the output tokens its decoder row promotes and suppresses through the
LM's own read-out, and for relation slots their activations split by the relation asked,
with the rows where they misfire.

The rows are encoded in chunks, and the label counts are kept per block of slots, so
memory is bounded in both.
"""

from __future__ import annotations

from typing import Any

import torch

from supervised_sae.data.store_reader import LayerData
from supervised_sae.lm.readout import Readout, apply_readout
from supervised_sae.sae.model import SupervisedSAE

TOP_ROWS, TOP_TOKENS, HIST_BINS = 8, 6, 12
F1_SLOTS = 2048  # slots whose F1 against every label is held at once
EXPLAINED_F1 = 0.3  # a free slot whose best label scores less is "explained by nothing"
FAMILIES = ("relation", "wording", "value", "person")


def _labels(data: LayerData, template: torch.Tensor) -> dict[str, tuple[torch.Tensor, list]]:
    """Per label family: each row's label index and the labels' names."""
    names, n_rel = data.relation_names, len(data.relation_names)
    n_templates = int(template.max()) + 1
    wording = data.relation * n_templates + template
    people = sorted(set(data.person.tolist()))
    person_index = {p: i for i, p in enumerate(people)}
    return {
        "relation": (data.relation, [f"asks {r}" for r in names]),
        "wording": (wording, [f"{names[w // n_templates]} wording {w % n_templates}"
                              for w in range(n_rel * n_templates)]),
        "value": (data.answer, [f"answer {v}" for v in data.answer_values]),
        "person": (torch.tensor([person_index[p] for p in data.person.tolist()]),
                   [f"person {p}" for p in people]),
    }


@torch.no_grad()
def slot_stats(sae: SupervisedSAE, data: LayerData, template: torch.Tensor,
               readout: Readout, token_names: list[str], chunk_elements: int = 1 << 24,
               label_budget: int = 1 << 26) -> dict[str, Any]:
    """Every slot's numbers; rows are indices into the store (and the prompts table).
    Memory is bounded: rows are encoded `chunk_elements` codes at a time, and the label
    counts are kept for as many free slots as `label_budget` counts allow (one more pass
    over the rows per block of slots)."""
    sae.eval()
    n, n_slots, n_free = len(data.x), sae.n_free + sae.n_relations, sae.n_free
    chunk = max(16, chunk_elements // n_slots)
    labels = _labels(data, template.cpu())
    offsets, start = {}, 0
    for family, (_, names) in labels.items():
        offsets[family] = start
        start += len(names)
    label_of_row = torch.stack([index.cpu() + offsets[f] for f, (index, _) in labels.items()])
    label_counts = torch.bincount(label_of_row.flatten(), minlength=start)
    fires = torch.zeros(n_slots, dtype=torch.int64)
    sums = torch.zeros(n_slots, dtype=torch.float64)
    top_vals = torch.full((TOP_ROWS, n_slots), -1.0)
    top_rows = torch.zeros((TOP_ROWS, n_slots), dtype=torch.int64)
    relation_acts = []
    for s in range(0, n, chunk):
        z = sae.encode(data.x[s : s + chunk]).float().cpu()
        on = z > 0
        fires += on.sum(0)
        sums += z.sum(0, dtype=torch.float64)
        vals = torch.cat([top_vals, z])
        rows = torch.cat([top_rows, torch.arange(s, s + len(z))[:, None].expand_as(z)])
        top_vals, order = vals.topk(TOP_ROWS, dim=0)
        top_rows = rows.gather(0, order)
        relation_acts.append(z[:, n_free:].clone())  # a view would keep all of z alive
    best_f1, best_label, act_hist = _label_pass(sae, data, label_of_row, label_counts, fires,
                                                top_vals[0], chunk, label_budget)
    family_of = torch.repeat_interleave(torch.arange(len(FAMILIES)), torch.tensor(
        [len(names) for _, names in labels.values()]))
    all_names = [name for _, names in labels.values() for name in names]
    lens = _logit_lens(sae, readout, token_names)
    acts = torch.cat(relation_acts) if relation_acts else torch.zeros(0, 0)
    # Python numbers once, not one tensor element at a time in the per-slot loop
    fired, summed = fires.tolist(), sums.tolist()
    top_v, top_r = top_vals.T.tolist(), top_rows.T.tolist()
    f1s, bests, family = best_f1.tolist(), best_label.tolist(), family_of.tolist()
    hists = act_hist.tolist()
    slots = []
    for k in range(n_slots):
        entry: dict[str, Any] = {
            "id": k, "kind": "free" if k < n_free else "relation",
            "fires": fired[k], "density": fired[k] / max(n, 1),
            "mean_on": summed[k] / fired[k] if fired[k] else 0.0,
            "top": [[r, round(v, 4)] for v, r in zip(top_v[k], top_r[k], strict=True)
                    if v > 0],
            "act_max": round(max(top_v[k][0], 0.0), 4), "act_hist": hists[k], **lens[k]}
        if k < n_free:
            good = bool(fired[k]) and f1s[k] >= EXPLAINED_F1
            entry["best"] = {"label": all_names[bests[k]],
                             "family": FAMILIES[family[bests[k]]] if good else "nothing",
                             "f1": round(f1s[k], 4)}
        else:
            entry.update(_relation_slot(k - n_free, acts[:, k - n_free], data))
        slots.append(entry)
    explained = [s["best"]["family"] for s in slots[:n_free] if s["fires"]]
    return {"layer": data.layer, "n_rows": n, "n_free": n_free,
            "relation_names": list(data.relation_names), "slots": slots,
            "summary": {"dead_free": int((fires[:n_free] == 0).sum()),
                        **{f"free_best_{f}": explained.count(f)
                           for f in (*FAMILIES, "nothing")}}}


def _label_pass(sae: SupervisedSAE, data: LayerData, label_of_row: torch.Tensor,
                label_counts: torch.Tensor, fires: torch.Tensor, act_max: torch.Tensor,
                chunk: int, budget: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per slot, the best F1 of its firing against one store label and that label (read for
    free slots), and the histogram of its activations where it fires (HIST_BINS bins from
    0 to its largest): a slots x labels count table per block of slots, each block one
    pass over the rows."""
    n_slots, n_labels = len(fires), len(label_counts)
    best_f1 = torch.zeros(n_slots, dtype=torch.float64)  # F1 as computed, not rounded
    best_label = torch.zeros(n_slots, dtype=torch.long)
    act_hist = torch.zeros(n_slots, HIST_BINS, dtype=torch.int64)
    block = max(1, budget // max(n_labels, 1))
    for a in range(0, n_slots, block):
        b = min(n_slots, a + block)
        co = torch.zeros(b - a, n_labels, dtype=torch.int32)
        for s in range(0, len(data.x), chunk):
            z = sae.encode(data.x[s : s + chunk])[:, a:b].float().cpu()
            row, slot = (z > 0).nonzero(as_tuple=True)
            for f in range(len(label_of_row)):  # each firing counts once per family
                flat = slot * n_labels + label_of_row[f, s + row]
                co.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
            top = act_max[a:b][slot].clamp_min(1e-12)
            bins = (z[row, slot] / top * HIST_BINS).long().clamp_(0, HIST_BINS - 1)
            act_hist[a:b].view(-1).index_add_(0, slot * HIST_BINS + bins,
                                               torch.ones_like(bins))
        for c in range(a, b, F1_SLOTS):  # float64 F1 for a few slots at a time
            d = min(b, c + F1_SLOTS)
            f1 = 2 * co[c - a : d - a].double() / (fires[c:d, None] + label_counts).clamp_min(1)
            best_f1[c:d], best_label[c:d] = f1.max(1)
    return best_f1, best_label, act_hist


def _relation_slot(r: int, act: torch.Tensor, data: LayerData) -> dict[str, Any]:
    """Relation slot r: its activation histogram per relation asked, seen and held-out
    wordings apart; the rows where it fires for another relation or stays silent on its
    own (the strongest and a few of each)."""
    relation, heldout = data.relation.cpu(), data.heldout.cpu()
    top = float(act.max()) if len(act) else 0.0
    hist = {}
    for q, name in enumerate(data.relation_names):
        for kind, mask in (("seen", ~heldout), ("heldout", heldout)):
            values = act[(relation == q) & mask]
            hist[f"{name}, {kind}"] = torch.histc(values, HIST_BINS, 0, max(top, 1e-6)).int(
                ).tolist() if len(values) else [0] * HIST_BINS
    wrong = ((relation != r) & (act > 0)).nonzero().flatten()
    silent = ((relation == r) & (act <= 0)).nonzero().flatten()
    strongest = wrong[act[wrong].argsort(descending=True)][:TOP_ROWS]
    return {"relation": data.relation_names[r], "hist_max": top, "hist": hist,
            "wrong_fires": int(len(wrong)), "wrong_rows": strongest.tolist(),
            "silent": int(len(silent)), "silent_rows": silent[:TOP_ROWS].tolist()}


def _logit_lens(sae: SupervisedSAE, readout: Readout, token_names: list[str],
               chunk: int = 1024) -> list[dict[str, list]]:
    """Per slot, the tokens its decoder row promotes most and least through the LM's final
    norm and unembedding (the logit lens of the row), with their logits."""
    out = []
    w = sae.W_dec.detach().float()
    n = min(TOP_TOKENS, readout.weight.shape[0])
    for s in range(0, len(w), chunk):
        logits = apply_readout(readout, w[s : s + chunk].to(readout.weight.device)).cpu()
        top, bottom = logits.topk(n, dim=1), logits.topk(n, dim=1, largest=False)
        for ti, tv, bi, bv in zip(top.indices.tolist(), top.values.tolist(),
                                  bottom.indices.tolist(), bottom.values.tolist(),
                                  strict=True):
            out.append({"tokens": [token_names[i] for i in ti],
                        "token_logits": [round(v, 4) for v in tv],
                        "bottom_tokens": [token_names[i] for i in bi],
                        "bottom_logits": [round(v, 4) for v in bv]})
    return out


def browser_stats(sae_path: str, activations: str, prompts_path: str, model_dir: str,
                  layer: int, device: str = "cpu"
                  ) -> tuple[dict[str, Any], Any, dict[int, list[str]]]:
    """`slot_stats` of a trained SAE file on its layer of the store, its prompts table
    and LM checked to be the ones the store came from; returns the stats, the table, and
    the tokens (as the LM reads them) of every prompt some slot lists at its top."""
    from supervised_sae.data.cross_checks import check_sae_fits_layer
    from supervised_sae.data.store_reader import load_layer
    from supervised_sae.evaluation.lm_side import open_lm_side
    from supervised_sae.lm.readout import final_readout
    from supervised_sae.lm.tokenizer import encode
    from supervised_sae.sae.io import load_sae

    data = load_layer(activations, layer, device)
    sae, meta = load_sae(sae_path, device)
    check_sae_fits_layer(sae_path, meta, activations, data)
    side = open_lm_side(data, activations, prompts_path, model_dir, device)
    vocab = side.lm.get_output_embeddings().weight.shape[0]
    readout = final_readout(side.lm, list(range(vocab)), model_dir).to(device)
    names = side.tokenizer.convert_ids_to_tokens(list(range(vocab)))
    template = torch.tensor(side.table["template"].to_numpy(), dtype=torch.long)
    stats = slot_stats(sae, data, template, readout, [str(t) for t in names])
    stats["run"] = {"sae": str(sae_path), "stage": meta.get("stage")}
    rows = sorted({r for slot in stats["slots"] for r, _ in slot["top"]})
    ids = encode(side.tokenizer, side.table["prompt"].iloc[rows].tolist())
    row_tokens = {r: [str(t) for t in side.tokenizer.convert_ids_to_tokens(i)]
                  for r, i in zip(rows, ids, strict=True)}
    return stats, side.table, row_tokens
