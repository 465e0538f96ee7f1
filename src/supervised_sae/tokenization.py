"""A word-level tokenizer for the synthetic corpus, and answer-token bookkeeping."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, EOS = "[PAD]", "[UNK]", "<|endoftext|>"


def build_word_tokenizer(
    texts: Iterable[str], multiword_values: Sequence[str]
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer trained on `texts`.

    Attribute values are added tokens, so a multi-word value ("New York City") is one
    token and the answer's first token names the value. Dates are plain words: month,
    day, comma, year.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, EOS], min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    # Longest match wins among added tokens, and single_word stops matches inside words.
    tok.add_tokens(
        [AddedToken(v, single_word=True, normalized=False) for v in multiword_values if " " in v]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=PAD, eos_token=EOS, bos_token=EOS
    )


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def answer_first_token(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> int:
    """The token the model must produce right after `prompt` to start `answer`."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    full_ids = encode_prompt(tokenizer, f"{prompt} {answer}")
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise ValueError(
            f"prompt {prompt!r} with answer {answer!r}: the answer does not start a new token "
            "after the prompt under this tokenizer"
        )
    return full_ids[len(prompt_ids)]


def answer_first_tokens(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str]
) -> list[int]:
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(
        [f"{p} {a}" for p, a in zip(prompts, answers, strict=True)], add_special_tokens=False
    )["input_ids"]
    out = []
    for i, (p, f) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        if f[: len(p)] != p or len(f) == len(p):
            raise ValueError(
                f"prompt {i} {prompts[i]!r} with answer {answers[i]!r}: the answer does not "
                "start a new token after the prompt under this tokenizer"
            )
        out.append(f[len(p)])
    return out
