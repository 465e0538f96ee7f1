"""Read and validate a prompts table (built-in or the user's own CSV/Parquet)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .biographies import RELATIONS, split_people

REQUIRED_COLUMNS = ("person", "relation", "prompt", "answer")
OPTIONAL_COLUMNS = ("split", "template", "template_heldout", "name")
# The workflow's own prompts table (results/data/prompts.csv), built-in or imported.
TABLE_COLUMNS = REQUIRED_COLUMNS + ("split", "template", "template_heldout")
SPLITS = ("train", "test")


class PromptsError(ValueError):
    """A prompts table that cannot be used; the message names file, row and problem."""


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PromptsError(f"{path}: prompts file does not exist")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str,
                               keep_default_na=False)
    except Exception as err:  # pandas raises many types for unreadable files
        raise PromptsError(f"{path}: cannot read as a table: {err}") from err
    raise PromptsError(f"{path}: expected a .csv, .tsv or .parquet file")


def _row(i: int) -> str:
    return f"row {i + 2}"  # header is line 1 of a CSV; rows start at line 2


def load_prompts(
    path: str | Path, relations: tuple[str, ...] = RELATIONS, test_fraction: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """Load a prompts table, check it, and fill optional columns with defaults.

    Columns: person, relation, prompt, answer (required); split (train/test),
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
                f"{path}: {_row(i)}: split {table['split'].iloc[i]!r}; expected 'train' or 'test'"
            )
        sides = table.groupby("person")["split"].nunique()
        if (sides > 1).any():
            p = sides[sides > 1].index[0]
            key = table.loc[table["person"] == p, "person_key"].iloc[0]
            raise PromptsError(
                f"{path}: person {key!r} appears in both train and test; the split is by person"
            )
    else:
        splits = split_people(len(person_ids), test_fraction, seed)
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
    return table.reset_index(drop=True)


def read_prompts(path: str | Path, expected_rows: int | None = None) -> pd.DataFrame:
    """The workflow's prompts table; expected_rows checks it against an activation file."""
    table = pd.read_csv(path, keep_default_na=False)
    if expected_rows is not None and len(table) != expected_rows:
        raise PromptsError(f"{path}: {len(table)} prompts, but the activation file has "
                           f"{expected_rows} rows; they must come from the same table")
    table["template_heldout"] = table["template_heldout"].astype(str).str.lower().isin(
        ["true", "1"])
    return table
