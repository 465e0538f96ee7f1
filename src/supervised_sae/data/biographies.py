"""Synthetic bioS-style people, biographies and question-answer prompts.

Everything is drawn from pools shipped with the package and a single seed, so the same
config always yields the same people, texts and prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources

import pandas as pd

from supervised_sae.data.templates import (  # noqa: F401 (RELATIONS: read from here too)
    BIOGRAPHY_TEMPLATES,
    QUESTION_TEMPLATES,
    RELATIONS,
    STATEMENT_TEMPLATES,
)

MONTHS = (
    "January February March April May June July August September October November December"
).split()


@dataclass(frozen=True)
class Pools:
    first_names: list[str]
    middle_names: list[str]
    last_names: list[str]
    cities: list[str]
    universities: list[str]
    majors: list[str]
    companies: dict[str, str]  # company -> headquarters city

    def attribute_values(self) -> list[str]:
        """Every value an attribute other than a date can take (for the tokenizer)."""
        values = set(self.cities) | set(self.universities) | set(self.majors)
        values |= set(self.companies) | set(self.companies.values())
        return sorted(values)


def load_pools() -> Pools:
    root = resources.files("supervised_sae.data") / "pools"

    def words(name: str) -> list[str]:
        return (root / name).read_text().split()

    def lines(name: str) -> list[str]:
        return [line.strip() for line in (root / name).read_text().splitlines() if line.strip()]

    companies = dict(line.split("\t") for line in lines("companies.tsv")[1:])
    return Pools(
        first_names=words("first_names.txt"),
        middle_names=words("middle_names.txt"),
        last_names=words("last_names.txt"),
        cities=lines("cities.txt"),
        universities=lines("universities.txt"),
        majors=lines("majors.txt"),
        companies=companies,
    )


def format_date(year: int, month: int, day: int) -> str:
    return f"{MONTHS[month - 1]} {day}, {year}"


def generate_people(n_people: int, seed: int, pools: Pools | None = None) -> pd.DataFrame:
    """N people with unique full names and six attributes in relation order."""
    pools = pools or load_pools()
    max_names = len(pools.first_names) * len(pools.middle_names) * len(pools.last_names)
    if n_people > max_names // 2:
        raise ValueError(
            f"n_people={n_people} is too many for the name pools (max {max_names // 2})"
        )
    rng = random.Random(seed)
    companies = sorted(pools.companies)
    names: set[str] = set()
    rows = []
    while len(rows) < n_people:
        name = " ".join(
            (
                rng.choice(pools.first_names),
                rng.choice(pools.middle_names),
                rng.choice(pools.last_names),
            )
        )
        if name in names:
            continue
        names.add(name)
        employer = rng.choice(companies)
        rows.append(
            {
                "person": len(rows),
                "name": name,
                "birth_date": format_date(
                    rng.randint(1800, 1999), rng.randint(1, 12), rng.randint(1, 28)
                ),
                "birth_city": rng.choice(pools.cities),
                "university": rng.choice(pools.universities),
                "major": rng.choice(pools.majors),
                "employer": employer,
                "employer_city": pools.companies[employer],  # derived: the headquarters
            }
        )
    return pd.DataFrame(rows)


def split_people(n_people: int, test_fraction: float, seed: int,
                 validation_fraction: float = 0.0) -> list[str]:
    """Person-level split: 'train', 'test' or 'validation' for each person id.

    `test_fraction` of the people are held out of QA training; `validation_fraction` of
    those become validation people: unseen by the LM's QA training like test people, but
    only used to choose SAE training epochs and never reported. The held-out set does
    not depend on validation_fraction, so neither does the LM."""
    order = list(range(n_people))
    random.Random(seed + 1).shuffle(order)
    n_test = round(n_people * test_fraction)
    n_validation = round(n_test * validation_fraction)
    validation, test = set(order[:n_validation]), set(order[n_validation:n_test])
    return ["validation" if p in validation else "test" if p in test else "train"
            for p in range(n_people)]


def generate_biographies(people: pd.DataFrame, per_person: int, seed: int) -> pd.DataFrame:
    """Several biographies per person, each with its own wordings and sentence order."""
    rng = random.Random(seed + 2)
    rows = []
    for person in people.itertuples(index=False):
        for copy in range(per_person):
            sentences = [
                rng.choice(BIOGRAPHY_TEMPLATES[rel]).format(
                    name=person.name, value=getattr(person, rel)
                )
                for rel in RELATIONS
            ]
            rng.shuffle(sentences)
            rows.append({"person": person.person, "copy": copy, "text": " ".join(sentences)})
    return pd.DataFrame(rows)


def generate_prompts(
    people: pd.DataFrame, splits: list[str], n_heldout_templates: int,
    statement_wordings: bool = False,
) -> pd.DataFrame:
    """One QA prompt per (person, relation, question template); the last
    `n_heldout_templates` of QUESTION_TEMPLATES are held out, a statement wording is seen."""
    for rel, templates in QUESTION_TEMPLATES.items():
        if not 0 <= n_heldout_templates < len(templates):
            raise ValueError(
                f"data.heldout_templates={n_heldout_templates}: relation {rel!r} has "
                f"{len(templates)} question templates; at least one must stay seen"
            )
    rows = []
    for person in people.itertuples(index=False):
        for rel in RELATIONS:
            first_heldout = len(QUESTION_TEMPLATES[rel]) - n_heldout_templates
            templates = QUESTION_TEMPLATES[rel] + (
                (STATEMENT_TEMPLATES[rel],) if statement_wordings else ())
            for t, template in enumerate(templates):
                rows.append(
                    {
                        "person": person.person,
                        "relation": rel,
                        "prompt": template.format(name=person.name),
                        "answer": getattr(person, rel),
                        "split": splits[person.person],
                        "template": t,
                        "template_heldout": first_heldout <= t < len(QUESTION_TEMPLATES[rel]),
                    }
                )
    return pd.DataFrame(rows)


def qa_text(prompt: str, answer: str) -> str:
    """How a question and its answer appear in LM training text."""
    return f"{prompt} {answer}"


def build_dataset(
    n_people: int,
    biographies_per_person: int,
    test_fraction: float,
    heldout_templates: int,
    seed: int,
    validation_fraction: float = 0.0,
    statement_wordings: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """People table, biography corpus and prompts table for one seed."""
    pools = load_pools()
    people = generate_people(n_people, seed, pools)
    splits = split_people(n_people, test_fraction, seed, validation_fraction)
    people["split"] = splits
    bios = generate_biographies(people, biographies_per_person, seed)
    prompts = generate_prompts(people, splits, heldout_templates, statement_wordings)
    return people, bios, prompts
