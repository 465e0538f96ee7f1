from supervised_sae.data.biographies import (
    QUESTION_TEMPLATES,
    RELATIONS,
    build_dataset,
    load_pools,
    split_people,
)
from supervised_sae.lm.answers import answer_token_ids
from supervised_sae.lm.tokenizer import build_word_tokenizer, encode


def test_pools_are_large_enough():
    pools = load_pools()
    assert len(pools.first_names) >= 200 and len(pools.middle_names) >= 100
    assert len(pools.last_names) >= 300
    assert len(pools.cities) >= 200
    assert len(pools.universities) >= 300
    assert len(pools.majors) >= 100
    assert len(pools.companies) >= 250


def test_dataset_is_deterministic_and_seed_dependent():
    a = build_dataset(60, 3, 0.5, 2, seed=1)
    b = build_dataset(60, 3, 0.5, 2, seed=1)
    c = build_dataset(60, 3, 0.5, 2, seed=2)
    for x, y in zip(a, b, strict=True):
        assert x.equals(y)
    assert not a[0].equals(c[0])


def test_people_biographies_and_prompts():
    people, bios, prompts = build_dataset(80, 3, 0.5, 2, seed=0)
    pools = load_pools()
    assert people["name"].is_unique
    # employer_city is derived from the employer, not drawn
    assert all(pools.companies[e] == c for e, c in zip(people.employer, people.employer_city,
                                                        strict=True))
    assert len(bios) == 80 * 3
    # every biography states all six attributes; copies differ in wording or order
    person0 = people.iloc[0]
    texts = bios[bios.person == 0].text.tolist()
    for text in texts:
        for rel in RELATIONS:
            assert person0[rel] in text
    assert len(set(texts)) > 1
    # person-level split, both sides present
    assert set(people.split) == {"train", "test"}
    assert prompts.groupby("person")["split"].nunique().max() == 1
    # templates: >= 8 paraphrases per relation, the last 2 held out
    for rel in RELATIONS:
        assert len(QUESTION_TEMPLATES[rel]) >= 8
        part = prompts[prompts.relation == rel]
        assert part.groupby("template")["template_heldout"].first().tolist()[-2:] == [True, True]
        assert not part[part.template == 0]["template_heldout"].any()


def test_validation_people_come_from_the_held_out_people_only():
    plain = split_people(100, 0.5, seed=4)
    three = split_people(100, 0.5, seed=4, validation_fraction=0.2)
    # the LM's QA training people do not change, so neither does the LM
    assert [s == "train" for s in plain] == [s == "train" for s in three]
    assert three.count("validation") == 10 and three.count("test") == 40
    assert all(p == "test" for p, t in zip(plain, three, strict=True) if t == "validation")


def test_tokenizer_makes_values_single_tokens_and_dates_month_first():
    people, bios, prompts = build_dataset(40, 2, 0.5, 2, seed=0)
    tok = build_word_tokenizer(bios.text.tolist(), load_pools().attribute_values())
    person = people.iloc[0]
    for rel in ("birth_city", "university", "major", "employer", "employer_city"):
        assert tok.tokenize(f"{person['name']} x {person[rel]}.")[-2] == person[rel]
    month, day, year = person["birth_date"].replace(",", "").split()
    assert tok.tokenize(person["birth_date"]) == [month, day, ",", year]
    rows = prompts.head(12)
    ids = answer_token_ids(tok, rows.prompt.tolist(), rows.answer.tolist())
    for answer, whole in zip(rows.answer, ids, strict=True):
        assert tok.convert_tokens_to_string(tok.convert_ids_to_tokens(whole)) == answer \
            or tok.convert_ids_to_tokens(whole) == answer.replace(",", " ,").split()


def test_encode_gives_the_tokenizers_own_ids():
    """encode() reads ids from the Rust backend; they must be what tokenizer(...) gives,
    special tokens included, for our word tokenizer and for a byte-level BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    _, bios, prompts = build_dataset(20, 1, 0.5, 2, seed=0)
    texts = prompts.prompt.tolist()[:50] + ["", "  two  spaces", "Ünïcode ☃?"]
    word = build_word_tokenizer(bios.text.tolist(), load_pools().attribute_values())
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(bios.text.tolist(), trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    byte_level = PreTrainedTokenizerFast(tokenizer_object=bpe)
    for tok in (word, byte_level):
        assert encode(tok, texts, chunk=7) == tok(texts, add_special_tokens=True)["input_ids"]
    assert encode(word, ["Where"])[0][0] == word.bos_token_id  # BOS first


def test_no_built_in_prompt_holds_an_unknown_token():
    """Held-out wordings are made of words the LM reads in training (the biographies, the
    seen templates), so the tokenizer knows them; at the most templates held out, too."""
    from supervised_sae.lm.fit import training_texts

    for heldout in (2, 4):  # the default, and the schema's maximum
        _, bios, prompts = build_dataset(40, 2, 0.5, heldout, seed=0)
        tok = build_word_tokenizer(training_texts(bios, prompts),
                                   load_pools().attribute_values())
        unknown = [p for p, ids in zip(prompts.prompt, encode(tok, prompts.prompt), strict=True)
                   if tok.unk_token_id in ids]
        assert not unknown, (heldout, unknown[:3])


def test_held_out_wordings_never_occur_in_training_text():
    from supervised_sae.lm.fit import training_texts

    _, bios, prompts = build_dataset(40, 2, 0.5, 2, seed=0)
    text = "\n".join(training_texts(bios, prompts))
    heldout = prompts[prompts.template_heldout]
    assert len(heldout) == 40 * 6 * 2
    # a held-out question, for train people too, never appears anywhere in training text
    assert not [p for p in heldout.prompt if p in text]
    seen = prompts[~prompts.template_heldout]
    assert all(p in text for p in seen[seen.split == "train"].prompt)  # the check can fail


def test_statement_wordings_add_one_seen_wording_and_keep_the_held_out_ones():
    from supervised_sae.lm.fit import training_texts

    _, bios, plain = build_dataset(30, 2, 0.5, 2, seed=3)
    _, _, more = build_dataset(30, 2, 0.5, 2, seed=3, statement_wordings=True)
    assert len(more) == len(plain) + 30 * len(RELATIONS)
    added = more[~more.prompt.isin(plain.prompt)]
    assert len(added) == 30 * len(RELATIONS) and not added.template_heldout.any()
    assert all(p.endswith(("which date?", "which city?", "which university?", "which field?",
                           "which company?")) for p in added.prompt)
    # the held-out wordings, their indices and flags are the same as without them
    key = ["person", "relation", "template", "prompt"]
    assert more[more.template_heldout][key].reset_index(drop=True).equals(
        plain[plain.template_heldout][key].reset_index(drop=True))
    # the LM reads them for train people, and still never a held-out wording
    text = "\n".join(training_texts(bios, more))
    train_added = added[added.split == "train"]
    assert len(train_added) and all(p in text for p in train_added.prompt)
    assert not any(p in text for p in more[more.template_heldout].prompt)


def test_each_seen_statement_opens_like_a_biography_sentence_no_held_out_wording_uses():
    """The seen statement teaches the form "<biography opening> which X?", so a held-out
    statement still asks for it from another opening: their openings never match."""
    from supervised_sae.data.templates import (
        BIOGRAPHY_TEMPLATES,
        QUESTION_TEMPLATES,
        STATEMENT_TEMPLATES,
    )

    for relation, statement in STATEMENT_TEMPLATES.items():
        opening = statement.split(" which ")[0]
        assert any(t.startswith(opening + " {value}") for t in BIOGRAPHY_TEMPLATES[relation])
        held_out = QUESTION_TEMPLATES[relation][-4:]  # every wording that can be held out
        assert not any(q.startswith(opening) for q in held_out), (relation, opening)
