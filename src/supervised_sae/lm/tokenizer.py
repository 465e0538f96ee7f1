"""Tokenizers trained on the synthetic corpus: word-level (every value one token, dates
four) or byte-level BPE like GPT-2's (values several tokens, many sharing the first)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
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


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts` (GPT-2's kind: no unknown token, a space joins
    the word after it), with BOS before every text as the word tokenizer has."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOS} $A", special_tokens=[(EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
                                   bos_token=EOS)


TOKENIZERS = ("word", "bpe")  # lm.tokenizer


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
