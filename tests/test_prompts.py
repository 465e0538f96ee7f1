"""The user's own prompts table: each malformed input gets a message naming the problem."""

import re

import pandas as pd
import pytest

from supervised_sae.data.biographies import RELATIONS
from supervised_sae.data.prompts import PromptsError, load_prompts


def good_table() -> pd.DataFrame:
    rows = []
    # two people on each side: the least a relation needs (prompts.MIN_PEOPLE_PER_SIDE)
    for person, split in (("ann", "train"), ("bob", "test"), ("cat", "train"), ("dan", "test")):
        for rel in RELATIONS:
            rows.append({"person": person, "relation": rel, "prompt": f"{rel} of {person}?",
                         "answer": f"{rel}-{person}", "split": split})
    return pd.DataFrame(rows)


def test_good_table_loads_with_defaults(tmp_path):
    path = tmp_path / "p.csv"
    good_table().to_csv(path, index=False)
    table = load_prompts(path)
    assert len(table) == 24
    assert table["person"].tolist()[:6] == [0] * 6
    assert not table["template_heldout"].any()


def test_parquet_and_default_split(tmp_path):
    path = tmp_path / "p.parquet"
    good_table().drop(columns="split").to_parquet(path)
    table = load_prompts(path)
    assert set(table["split"]) <= {"train", "test"}
    assert table.groupby("person")["split"].nunique().max() == 1


def edit(fn):
    t = good_table()
    fn(t)
    return t


BAD = [
    ("missing column", lambda: good_table().drop(columns="answer"), "missing column(s) ['answer']"),
    ("extra column", lambda: good_table().assign(colour="red"), "unexpected column(s) ['colour']"),
    ("empty prompt", lambda: edit(lambda t: t.__setitem__("prompt", [""] + list(t.prompt[1:]))),
     "row 2: empty 'prompt'"),
    ("empty answer", lambda: edit(lambda t: t.loc.__setitem__((3, "answer"), " ")),
     "row 5: empty 'answer'"),
    ("unknown relation", lambda: edit(lambda t: t.loc.__setitem__((4, "relation"), "pet")),
     "row 6: unknown relation 'pet'"),
    ("missing relation", lambda: good_table().query("relation != 'major'"),
     "no prompts for relation(s) ['major']"),
    ("duplicate row", lambda: pd.concat([good_table(), good_table().iloc[[7]]]),
     "row 26: duplicate"),
    ("bad split", lambda: edit(lambda t: t.loc.__setitem__((0, "split"), "dev")),
     "row 2: split 'dev'"),
    ("person on both sides", lambda: edit(lambda t: t.loc.__setitem__((0, "split"), "test")),
     "person 'ann' appears in more than one of train, test and validation"),
    ("no rows", lambda: good_table().iloc[:0], "no rows"),
]


@pytest.mark.parametrize("name,make,message", BAD, ids=[b[0] for b in BAD])
def test_bad_tables_are_rejected_with_a_clear_message(tmp_path, name, make, message):
    path = tmp_path / "prompts.csv"
    make().to_csv(path, index=False)
    with pytest.raises(PromptsError) as err:
        load_prompts(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(PromptsError, match="does not exist"):
        load_prompts(tmp_path / "nope.csv")
    bad = tmp_path / "p.json"
    bad.write_text("{}")
    with pytest.raises(PromptsError, match="expected a .csv, .tsv or .parquet"):
        load_prompts(bad)


def workflow_table(path, column=None, value=None):
    """A table in the workflow's own format (what `data` writes), row 2's `column` set."""
    table = good_table().assign(template=0, template_heldout=False)
    if column:
        table.loc[0, column] = value
    table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("cell,value,message", [
    ("relation", "favourite_colour", "row 2: relation 'favourite_colour'; expected one of"),
    ("split", "dev", "row 2: split 'dev'; expected one of ['train', 'test', 'validation']")])
def test_a_raw_table_is_refused_where_the_workflow_reads_one(tmp_path, cell, value, message):
    """`extract` on a table that skipped the import used to write relation -2^63, or make
    held-out rows train rows; every reader of the workflow table checks them now."""
    from supervised_sae.data.prompts import read_prompts

    path = workflow_table(tmp_path / "p.csv", cell, value)
    with pytest.raises(PromptsError, match=re.escape(f"{path}: {message}")) as err:
        read_prompts(path, relations=tuple(good_table()["relation"].unique()))
    assert "import your own table first" in str(err.value)


def test_cli_extract_refuses_an_unknown_relation_before_writing(tmp_path):
    from supervised_sae.cli import main

    path = workflow_table(tmp_path / "p.csv", "relation", "favourite_colour")
    out = tmp_path / "acts.h5"
    with pytest.raises(SystemExit) as stop:
        main(["extract", "--model", str(tmp_path / "lm"), "--prompts", str(path),
              "--out", str(out)])
    assert "relation 'favourite_colour'" in str(stop.value) and not out.exists()


def test_validation_people_need_every_relation_in_seen_wordings(tmp_path):
    table = good_table()
    extra = table[table["person"] == "ann"].assign(person="eve", split="validation")
    extra = extra[extra["relation"] != extra["relation"].iloc[0]]  # eve lacks one relation
    path = tmp_path / "p.csv"
    pd.concat([table, extra]).to_csv(path, index=False)
    with pytest.raises(PromptsError, match="validation people have no prompts in seen "
                                           "wordings for relation"):
        load_prompts(path)
