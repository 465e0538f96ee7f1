from supervised_sae.biographies import (
    QUESTION_TEMPLATES,
    RELATIONS,
    build_dataset,
    load_pools,
)
from supervised_sae.tokenization import answer_first_tokens, build_word_tokenizer


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
    # templates: >= 4 paraphrases per relation, the last 2 held out
    for rel in RELATIONS:
        assert len(QUESTION_TEMPLATES[rel]) >= 4
        part = prompts[prompts.relation == rel]
        assert part.groupby("template")["template_heldout"].first().tolist()[-2:] == [True, True]
        assert not part[part.template == 0]["template_heldout"].any()


def test_tokenizer_makes_values_single_tokens_and_dates_month_first():
    people, bios, prompts = build_dataset(40, 2, 0.5, 2, seed=0)
    tok = build_word_tokenizer(bios.text.tolist(), load_pools().attribute_values())
    person = people.iloc[0]
    for rel in ("birth_city", "university", "major", "employer", "employer_city"):
        assert tok.tokenize(f"{person['name']} x {person[rel]}.")[-2] == person[rel]
    month, day, year = person["birth_date"].replace(",", "").split()
    assert tok.tokenize(person["birth_date"]) == [month, day, ",", year]
    rows = prompts.head(12)
    ids = answer_first_tokens(tok, rows.prompt.tolist(), rows.answer.tolist())
    firsts = tok.convert_ids_to_tokens(ids)
    for answer, first in zip(rows.answer, firsts, strict=True):
        assert answer.startswith(first)
