"""The LM side of an evaluation job: the model and tokenizer that made a layer's
activations, checked against them, its prompts table and a prefix-cached runner of
edits at that layer. Shared by the SAE's evaluation and the baselines without an SAE."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervised_sae.data.cross_checks import (
    check_lm_made_activations,
    check_prompts_match_activations,
)
from supervised_sae.data.prompts import read_prompts, table_sha256
from supervised_sae.data.store_reader import LayerData
from supervised_sae.evaluation.edit_runner import PrefixCachedRunner
from supervised_sae.lm.answers import AnswerTrie
from supervised_sae.lm.family import transformer_blocks
from supervised_sae.lm.load import lm_sha256, load_lm
from supervised_sae.lm.tokenizer import encode


@dataclass
class LmSide:
    lm: Any
    tokenizer: Any
    table: Any  # the prompts table, row for row with the activations
    runner: PrefixCachedRunner

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def open_lm_side(data: LayerData, activations: str | Path, prompts_path: str | Path,
                 model_dir: str | Path, device: str) -> LmSide:
    """The LM of `model_dir` and the prompts of `prompts_path`, each checked to be the
    ones `activations` (loaded as `data`) was extracted with and from."""
    lm, tokenizer = load_lm(model_dir, device)
    if lm.config.hidden_size != data.d_model:
        raise ValueError(f"{model_dir}: hidden size {lm.config.hidden_size}, but {activations} "
                         f"holds {data.d_model}-dimensional activations: not from this model")
    check_lm_made_activations(model_dir, lm_sha256(lm), activations, data.lm_sha256)
    table = read_prompts(prompts_path, expected_rows=len(data.x))
    check_prompts_match_activations(prompts_path, table_sha256(table), activations,
                                    stored=data.prompts_sha256)
    runner = PrefixCachedRunner(lm, transformer_blocks(lm, str(model_dir)), data.layer,
                                encode(tokenizer, table["prompt"]), device,
                                stop_id=tokenizer.eos_token_id,
                                trie=AnswerTrie(data.value_tokens, device))
    return LmSide(lm, tokenizer, table, runner)
