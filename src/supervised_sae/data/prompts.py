"""Read and validate a prompts table (built-in or the user's own CSV/Parquet)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from supervised_sae.data.biographies import RELATIONS, split_people
from supervised_sae.data.templates import MIN_PEOPLE_PER_SIDE

REQUIRED_COLUMNS = ("person", "relation", "prompt", "answer")
OPTIONAL_COLUMNS = ("split", "template", "template_heldout", "name")
# The workflow's own prompts table (results/data/prompts.csv), built-in or imported.
TABLE_COLUMNS = REQUIRED_COLUMNS + ("split", "template", "template_heldout")
SPLITS = ("train", "test", "validation")
# the activation file's `split` codes; validation people choose SAE epochs only
SPLIT_CODES = {"train": 0, "test": 1, "validation": 2}
REQUIRED_SPLITS = ("train", "test")  # every relation needs people on both


IMPORT_FIRST = ("import your own table first: set data.prompts and run `supervised-sae "
                "data` (or the workflow's import_prompts rule), which checks it")


class PromptsError(ValueError):
    """A prompts table that cannot be used; the message names file, row and problem."""


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PromptsError(f"{path}: prompts file does not exist")
    if path.suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for unreadable files
            raise PromptsError(f"{path}: cannot read as a table: {err}") from err
        _check_text_columns(path, table)
        return table
    try:
        if path.suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str,
                               keep_default_na=False)
    except Exception as err:  # pandas raises many types for unreadable files
        raise PromptsError(f"{path}: cannot read as a table: {err}") from err
    raise PromptsError(f"{path}: expected a .csv, .tsv or .parquet file")


def _check_text_columns(path: Path, table: pd.DataFrame) -> None:
    """Answers and prompts must be stored as text, so they stay exactly as written."""
    for col in ("person", "relation", "prompt", "answer"):
        if col in table.columns and not (pd.api.types.is_string_dtype(table[col])
                                         or pd.api.types.is_object_dtype(table[col])):
            raise PromptsError(f"{path}: column {col!r} holds {table[col].dtype} values; store "
                               "it as strings (a number read back as text may not be the text "
                               "you wrote, e.g. 2020.0 or 7 for 007)")


def _check_complete(path: Path, table: pd.DataFrame) -> None:
    """Every relation on both sides of the split, one answer per person and relation,
    and no prompt that already contains its answer."""
    answers = table.groupby(["person", "relation"])["answer"].nunique()
    if (answers > 1).any():
        person, relation = answers[answers > 1].index[0]
        rows = table.index[(table["person"] == person) & (table["relation"] == relation)]
        key = table.loc[rows[0], "person_key"]
        values = sorted(set(table.loc[rows, "answer"]))
        raise PromptsError(f"{path}: person {key!r} has {len(values)} different answers for "
                           f"{relation!r} ({values[:3]}, {_row(rows[0])} ...); each person "
                           "needs one answer per relation")
    inside = [i for i, (prompt, answer) in enumerate(zip(table["prompt"], table["answer"],
                                                         strict=True))
              if f" {answer} " in f" {' '.join(prompt.split())} "]  # as whole words
    if inside:
        i = inside[0]
        raise PromptsError(f"{path}: {_row(i)}: the answer {table['answer'].iloc[i]!r} is "
                           "already in the prompt; the model would read it off the question")
    seen = table[~table["template_heldout"].astype(bool)]
    if (table["split"] == "validation").any():  # they choose epochs on seen wordings
        chosen_on = seen[seen["split"] == "validation"]
        lacking = [r for r in dict.fromkeys(table["relation"])
                   if r not in set(chosen_on["relation"])]
        if lacking:
            raise PromptsError(f"{path}: validation people have no prompts in seen wordings "
                               f"for relation(s) {lacking}; they choose training epochs "
                               "on every relation, so each needs some (or use no "
                               "validation people)")
    people = table.groupby(["relation", "split"])["person"].nunique()
    for relation in dict.fromkeys(table["relation"]):
        for side in REQUIRED_SPLITS:
            n = int(people.get((relation, side), 0))
            if n < MIN_PEOPLE_PER_SIDE:
                raise PromptsError(f"{path}: relation {relation!r} has prompts of {n} {side} "
                                   f"{'person' if n == 1 else 'people'}; every relation "
                                   f"needs at least {MIN_PEOPLE_PER_SIDE} on each side of "
                                   "the split (train people fit, test people are reported)")


def _row(i: int) -> str:
    return f"row {i + 2}"  # header is line 1 of a CSV; rows start at line 2


def load_prompts(
    path: str | Path, relations: tuple[str, ...] = RELATIONS, test_fraction: float = 0.5,
    seed: int = 0, validation_fraction: float = 0.0,
) -> pd.DataFrame:
    """Load a prompts table, check it, and fill optional columns with defaults.

    Columns: person, relation, prompt, answer (required); split (train/test/validation),
    template (int) and template_heldout (bool) are optional.
    """
    path = Path(path)
    table = _read(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise PromptsError(
            f"{path}: missing column(s) {missing}; expected columns "
            f"{list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
        )
    extra = [c for c in table.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if extra:
        raise PromptsError(
            f"{path}: unexpected column(s) {extra}; allowed columns are "
            f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    if table.empty:
        raise PromptsError(f"{path}: the table has no rows")
    table = table.copy()
    for col in ("person", "relation", "prompt", "answer"):
        text = table[col].astype(str).str.strip()
        empty = table[col].isna() | (text == "") | (text.str.lower() == "nan")
        if empty.any():
            i = int(empty.to_numpy().nonzero()[0][0])
            raise PromptsError(f"{path}: {_row(i)}: empty {col!r} (every row needs one)")
        table[col] = text
    unknown = ~table["relation"].isin(relations)
    if unknown.any():
        i = int(unknown.to_numpy().nonzero()[0][0])
        raise PromptsError(
            f"{path}: {_row(i)}: unknown relation {table['relation'].iloc[i]!r}; "
            f"expected one of {list(relations)}"
        )
    absent = [r for r in relations if r not in set(table["relation"])]
    if absent:
        raise PromptsError(
            f"{path}: no prompts for relation(s) {absent}; every relation needs some"
        )
    dup = table.duplicated(subset=["person", "relation", "prompt"], keep="first")
    if dup.any():
        i = int(dup.to_numpy().nonzero()[0][0])
        raise PromptsError(
            f"{path}: {_row(i)}: duplicate of an earlier row (same person, relation and prompt)"
        )
    # People may be names or ids; map them to dense integer ids in order of appearance.
    person_ids = {p: k for k, p in enumerate(dict.fromkeys(table["person"]))}
    table["person_key"] = table["person"]
    table["person"] = table["person"].map(person_ids).astype(int)

    if "split" in table.columns:
        table["split"] = table["split"].astype(str).str.strip()
        bad = ~table["split"].isin(SPLITS)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise PromptsError(
                f"{path}: {_row(i)}: split {table['split'].iloc[i]!r}; expected 'train', "
                "'test' or 'validation'"
            )
        sides = table.groupby("person")["split"].nunique()
        if (sides > 1).any():
            p = sides[sides > 1].index[0]
            key = table.loc[table["person"] == p, "person_key"].iloc[0]
            raise PromptsError(
                f"{path}: person {key!r} appears in more than one of train, test and "
                "validation; the split is by person"
            )
    else:
        splits = split_people(len(person_ids), test_fraction, seed, validation_fraction)
        table["split"] = [splits[p] for p in table["person"]]
    if "template" in table.columns:
        try:
            table["template"] = table["template"].astype(int)
        except ValueError as err:
            raise PromptsError(f"{path}: column 'template' must hold integers: {err}") from err
    else:
        table["template"] = 0
    if "template_heldout" in table.columns:
        flags = table["template_heldout"].astype(str).str.strip().str.lower()
        bad = ~flags.isin(["true", "false", "1", "0"])
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise PromptsError(
                f"{path}: {_row(i)}: template_heldout {table['template_heldout'].iloc[i]!r}; "
                "expected true/false"
            )
        table["template_heldout"] = flags.isin(["true", "1"])
    else:
        table["template_heldout"] = False
    if not (table["split"] == "train").any():
        raise PromptsError(f"{path}: no 'train' rows; the SAE needs training prompts")
    table = table.reset_index(drop=True)
    _check_complete(path, table)
    return table


# The workflow's table keeps every text exactly as written: an answer "007", "2020" or
# "NA" stays that string (no number parsing, no missing-value guessing).
_TEXT = {"relation": str, "prompt": str, "answer": str, "split": str}


def read_prompts(path: str | Path, expected_rows: int | None = None,
                 relations: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The workflow's prompts table (as `import_prompts` or `make_data` wrote it);
    expected_rows checks it against an activation file. Its split words and (given
    `relations`) its relations are checked: a raw table of your own must be imported
    (`load_prompts`) first, with all its checks."""
    path = Path(path)
    if not path.exists():
        raise PromptsError(f"{path}: prompts file does not exist")
    table = pd.read_csv(path, keep_default_na=False, dtype=_TEXT)
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise PromptsError(f"{path}: not a workflow prompts table (no column(s) {missing}); "
                           f"{IMPORT_FIRST}")
    if expected_rows is not None and len(table) != expected_rows:
        raise PromptsError(f"{path}: {len(table)} prompts, but the activation file has "
                           f"{expected_rows} rows; they must come from the same table")
    for column, allowed in (("split", SPLITS), ("relation", relations)):
        bad = ~table[column].isin(allowed) if allowed is not None else None
        if bad is not None and bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise PromptsError(f"{path}: {_row(i)}: {column} {table[column].iloc[i]!r}; "
                               f"expected one of {list(allowed)}; {IMPORT_FIRST}")
    table["template_heldout"] = table["template_heldout"].astype(str).str.lower().isin(
        ["true", "1"])
    return table


def table_sha256(prompts: pd.DataFrame, chunk_rows: int = 8192) -> str:
    """SHA-256 of the table's CSV text, hashed in row chunks (no whole-table string)."""
    table = prompts[list(TABLE_COLUMNS)]
    digest = hashlib.sha256()
    for start in range(0, max(len(table), 1), chunk_rows):
        part = table.iloc[start : start + chunk_rows]
        digest.update(part.to_csv(index=False, header=start == 0).encode())
    return digest.hexdigest()

