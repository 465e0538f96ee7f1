"""Tiny "pretrained" models built here, as a user's local folder would hold one: a
GPT-2 with a byte-level BPE (GPT-2's kind: no BOS) and a Llama with a SentencePiece-style
BPE (`<s>` before every text), each pre-trained briefly on generated text that states
no biography fact, then saved with save_pretrained."""

from __future__ import annotations

import random
from pathlib import Path

import transformers as hf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from supervised_sae.checkpoints import CheckpointStore
from supervised_sae.data.biographies import MONTHS, load_pools
from supervised_sae.lm.fit import Schedule, fit_lm
from supervised_sae.lm.tokenizer import encode

FILLER = ("the a of and to in is was on for with at by from it this that we they very "
          "old new big small red blue green river house road tree stone light rain cold "
          "warm slowly quickly often never always after before under over near far").split()


def unrelated_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences that mix the pools' words (names, cities, universities, majors, dates'
    words) with filler at random, so the tokenizer knows the words and the model has
    read them, but no sentence states any person's attribute."""
    rng = random.Random(seed)
    pools = load_pools()
    values = [*pools.attribute_values(), *pools.first_names, *pools.middle_names,
              *pools.last_names, *MONTHS, *map(str, range(1, 32)), *map(str, range(1800, 2001))]
    words = [w for v in values for w in v.split()] + FILLER * 20
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 16))) + "."
            for _ in range(n)]


def _tokenizer(family: str, texts: list[str], vocab_size: int) -> hf.PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    if family == "gpt2":  # GPT-2's byte-level BPE: one end-of-text token, no BOS added
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        special = ["<|endoftext|>"]
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # Llama's kind: "▁" marks a word start, <s> opens every text
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        special, alphabet = ["<unk>", "<s>", "</s>"], []
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet,
        show_progress=False))
    if family == "gpt2":
        return hf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                          bos_token="<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return hf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                      eos_token="</s>", unk_token="<unk>")


def _config(family: str, vocab: int, tokenizer, n_layer: int, width: int) -> hf.PretrainedConfig:
    if family == "gpt2":
        return hf.GPT2Config(n_layer=n_layer, n_embd=width, n_head=4, vocab_size=vocab,
                             n_positions=256, bos_token_id=tokenizer.eos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return hf.LlamaConfig(num_hidden_layers=n_layer, hidden_size=width, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=2 * width,
                          vocab_size=vocab, max_position_embeddings=256,
                          bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)


def build_pretrained(folder: Path, family: str, *, n_layer: int = 3, width: int = 64,
                     vocab_size: int = 1500, texts: int = 3000, epochs: int = 1,
                     seed: int = 0) -> Path:
    """A local model folder of `family` ("gpt2" or "llama") with its own tokenizer,
    pre-trained for `epochs` on unrelated text."""
    import torch

    corpus = unrelated_texts(texts, seed)
    tokenizer = _tokenizer(family, corpus, vocab_size)
    torch.manual_seed(seed)
    model = hf.AutoModelForCausalLM.from_config(
        _config(family, len(tokenizer), tokenizer, n_layer, width))
    ids = [x + [tokenizer.eos_token_id] for x in encode(tokenizer, corpus)]
    store = CheckpointStore(folder.with_name(folder.name + ".ckpt"))
    fit_lm(model, ids, tokenizer.eos_token_id, store, Schedule(epochs, 32, 0.003, seed=seed),
           "cpu")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
