"""A word-level tokenizer for the synthetic corpus, and answer-token bookkeeping."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, UNK, EOS = "[PAD]", "[UNK]", "<|endoftext|>"


def build_word_tokenizer(
    texts: Iterable[str], multiword_values: Sequence[str], every_value: bool = False
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer trained on `texts`.

    Attribute values are added tokens, so a multi-word value ("New York City") is one
    token and the answer's first token names the value. Dates are plain words: month,
    day, comma, year. `every_value`: single-word values missing from the texts become
    tokens too (a user's table: held-out people's answers are in no training text, and
    would all read as the one unknown token).
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, EOS], min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    # Longest match wins among added tokens, and single_word stops matches inside words.
    tok.add_tokens(
        [AddedToken(v, single_word=True, normalized=False) for v in multiword_values
         if " " in v or (every_value and tok.token_to_id(v) is None)]
    )
    # Every text starts with BOS, as in GPT-2 pre-training: the first word of a question
    # ("When"/"Where") is then an ordinary position, not the attention sink.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=PAD, eos_token=EOS, bos_token=EOS
    )


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
           chunk: int = 4096) -> list[list[int]]:
    """Token ids with the model's own special tokens (BOS where the tokenizer adds one).

    Encoded in chunks, keeping only the ids: a fast tokenizer's full encodings (offsets,
    masks, ...) cost about a kilobyte per text, which would grow with the prompt count.
    """
    texts = list(texts)
    ids: list[list[int]] = []
    # a fast tokenizer's Rust backend gives the same ids without the Python wrapper's
    # per-call work (attention masks, BatchEncoding): ~40% of tokenising time
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        if backend is not None:
            ids += [e.ids for e in backend.encode_batch(part, add_special_tokens=True)]
        else:
            ids += tokenizer(part, add_special_tokens=True)["input_ids"]
    return ids


def answer_first_tokens(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str],
    prompt_ids: list[list[int]] | None = None, first_index: int = 0,
) -> list[int]:
    """The first token of each answer after its prompt (pass `prompt_ids` if encoded;
    `first_index` numbers the prompts in error messages when this is a slice)."""
    if prompt_ids is None:
        prompt_ids = encode(tokenizer, prompts)
    full_ids = encode(tokenizer, [f"{p} {a}" for p, a in zip(prompts, answers, strict=True)])
    out = []
    for i, (p, f) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        if f[: len(p)] != p or len(f) == len(p):
            raise ValueError(
                f"prompt {first_index + i} {prompts[i]!r} with answer {answers[i]!r}: the "
                "answer does not start a new token after the prompt under this tokenizer"
            )
        out.append(f[len(p)])
    return out
