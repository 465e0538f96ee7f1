"""The built-in data's relations and wordings: biography sentences and the questions
asked about each relation. Plain data (no pandas): the config check reads it while
Snakemake builds the DAG."""

from __future__ import annotations

RELATIONS: tuple[str, ...] = (
    "birth_date",
    "birth_city",
    "university",
    "major",
    "employer",
    "employer_city",
)
# A relation needs at least this many people on each side of the split: swaps steer
# one person's question toward another relation, probes fit on train people and are
# scored on test people, and a rate over one person says nothing.
MIN_PEOPLE_PER_SIDE = 2

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


# With `data.statement_wordings`, one more seen wording per relation: a statement made of
# the opening of one of that relation's biography sentences and "which X?", as the
# held-out statements are, from a biography sentence that no held-out wording uses. The
# six seen questions of five relations are all wh-questions, and the LM did not read a
# held-out statement as the question (bench/RESULTS.md, "LM settings on validation
# people"). They get index 8, after the wordings above, so the held-out wordings and
# their indices stay the same with or without them.
STATEMENT_TEMPLATES: dict[str, str] = {
    "birth_date": "{name} was born on which date?",
    "birth_city": "{name} was born in which city?",
    "university": "{name} graduated from which university?",
    "major": "{name} majored in which field?",
    "employer": "{name} is employed by which company?",
    "employer_city": "{name} works in which city?",
}
