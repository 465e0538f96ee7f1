"""Synthetic bioS-style people, biographies and question-answer prompts.

Everything is drawn from pools shipped with the package and a single seed, so the same
config always yields the same people, texts and prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources

import pandas as pd

RELATIONS: tuple[str, ...] = (
    "birth_date",
    "birth_city",
    "university",
    "major",
    "employer",
    "employer_city",
)

MONTHS = (
    "January February March April May June July August September October November December"
).split()

# Biography sentences: several wordings per attribute (knowledge augmentation).
BIOGRAPHY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "{name} was born on {value}.",
        "{name} came into this world on {value}.",
        "The birthday of {name} is {value}.",
    ),
    "birth_city": (
        "{name} was born in {value}.",
        "{name} spent the early years of life in {value}.",
        "The hometown of {name} is {value}.",
    ),
    "university": (
        "{name} studied at {value}.",
        "{name} graduated from {value}.",
        "{name} received an education at {value}.",
    ),
    "major": (
        "{name} majored in {value}.",
        "{name} earned a degree in {value}.",
        "At college {name} focused on {value}.",
    ),
    "employer": (
        "{name} works for {value}.",
        "{name} is employed by {value}.",
        "{name} has a job at {value}.",
    ),
    "employer_city": (
        "{name} works in {value}.",
        "{name} has an office in {value}.",
        "Every workday {name} commutes to {value}.",
    ),
}

# Question wordings; the answer follows the question directly. The last
# `n_heldout_templates` of each list (2 by default, at most 4) are held out of all
# training, so they measure recognition of a paraphrase never seen. Every word of the
# last four occurs in the biographies or in the first four templates (all of which the LM
# reads), so no held-out wording holds a word the tokenizer has never seen: a paraphrase
# of unknown words would measure robustness to [UNK], not recognition.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "When was {name} born?",
        "What is the birth date of {name}?",
        "On which date was {name} born?",
        "Which day of the year was {name} born on?",
        "What date was {name} born on?",
        "When is the birthday of {name}?",
        "The birthday of {name} is on which date?",
        "What was the date {name} came into this world?",
    ),
    "birth_city": (
        "Where was {name} born?",
        "What is the birth city of {name}?",
        "In which city was {name} born?",
        "What is the hometown of {name}?",
        "Which city is the hometown of {name}?",
        "The hometown of {name} is which city?",
        "Which city was {name} born in?",
        "Where is the hometown of {name}?",
    ),
    "university": (
        "Which university did {name} attend?",
        "Where did {name} study?",
        "What school did {name} graduate from?",
        "At which university was {name} educated?",
        "Which school did {name} study at?",
        "Where did {name} graduate from?",
        "At which school did {name} study?",
        "{name} received an education at which university?",
    ),
    "major": (
        "What did {name} major in?",
        "What was the major of {name}?",
        "Which field did {name} study?",
        "What subject did {name} earn a degree in?",
        "In which field did {name} earn a degree?",
        "What field did {name} major in?",
        "{name} earned a degree in which field?",
        "Which subject was the major of {name}?",
    ),
    "employer": (
        "Which company does {name} work for?",
        "Who employs {name}?",
        "What is the employer of {name}?",
        "For which firm does {name} work?",
        "Which firm is {name} employed by?",
        "What company does {name} work for?",
        "{name} works for which company?",
        "Who is the employer of {name}?",
    ),
    "employer_city": (
        "Where does {name} work?",
        "In which city does {name} work?",
        "What city is the workplace of {name} in?",
        "Where is the office of {name}?",
        "Which city does {name} work in?",
        "In which city is the office of {name}?",
        "Every workday {name} commutes to which city?",
        "What city does {name} work in?",
    ),
}


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
    people: pd.DataFrame, splits: list[str], n_heldout_templates: int
) -> pd.DataFrame:
    """One QA prompt per (person, relation, question template)."""
    for rel, templates in QUESTION_TEMPLATES.items():
        if not 0 <= n_heldout_templates < len(templates):
            raise ValueError(
                f"data.heldout_templates={n_heldout_templates}: relation {rel!r} has "
                f"{len(templates)} question templates; at least one must stay seen"
            )
    rows = []
    for person in people.itertuples(index=False):
        for rel in RELATIONS:
            templates = QUESTION_TEMPLATES[rel]
            first_heldout = len(templates) - n_heldout_templates
            for t, template in enumerate(templates):
                rows.append(
                    {
                        "person": person.person,
                        "relation": rel,
                        "prompt": template.format(name=person.name),
                        "answer": getattr(person, rel),
                        "split": splits[person.person],
                        "template": t,
                        "template_heldout": t >= first_heldout,
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
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """People table, biography corpus and prompts table for one seed."""
    pools = load_pools()
    people = generate_people(n_people, seed, pools)
    splits = split_people(n_people, test_fraction, seed, validation_fraction)
    people["split"] = splits
    bios = generate_biographies(people, biographies_per_person, seed)
    prompts = generate_prompts(people, splits, heldout_templates)
    return people, bios, prompts
