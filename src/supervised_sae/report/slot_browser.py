"""The slot browser: one static page per SAE and layer, opened from disk with no server or
network. `index.html` shows an index of the live slots (sortable, searchable, paged) from
`slot_data.js`; a slot's panel (its top-activating prompts, the label its firing predicts
best, the tokens its decoder row promotes and suppresses, and for a relation slot its
activations by relation asked and where it misfires) comes from `slots/part_NNNNN.js`,
loaded when first opened, so the page stays quick at the seed's 100,000 slots.

Data files are scripts (`window.SLOT_DATA = {...}`, `SLOT_PART(p, {...})`), not JSON
fetched at run time: browsers refuse `fetch` of a local file. Torch-free.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd

from supervised_sae.atomic import SLOT_BROWSER, atomic_path

DATA_FILE, PAGE_FILE, PARTS_DIR = "slot_data.js", "index.html", "slots"
PART_SLOTS = 500  # slots whose panels one part file holds
FAMILY_CODES = {"relation": 0, "wording": 1, "value": 2, "person": 3, "nothing": 4}
SINGLE_FILE_LIMIT = 20 * 2**20  # a one-file page larger than this only points to the folder


def row_records(slots: list[dict[str, Any]], table: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """The prompts these slots' panels show (every row they list), from the prompts table."""
    wanted = set()
    for slot in slots:
        wanted.update(r for r, _ in slot["top"])
        wanted.update(slot.get("wrong_rows", []))
        wanted.update(slot.get("silent_rows", []))
    part = table.iloc[sorted(wanted)]
    return {int(i): {"prompt": str(p.prompt), "person": str(p.person),
                     "relation": str(p.relation), "answer": str(p.answer),
                     "split": str(p.split), "heldout": bool(p.template_heldout)}
            for i, p in zip(sorted(wanted), part.itertuples(index=False), strict=True)}


def index_data(stats: dict[str, Any], title: str, part_slots: int = PART_SLOTS
               ) -> dict[str, Any]:
    """What the index needs, compact: per live slot [id, fires, label, family, F1, [top
    tokens]], labels and tokens as positions in shared lists."""
    labels: dict[str, int] = {}
    tokens: dict[str, int] = {}
    index = []
    for slot in stats["slots"]:
        if not slot["fires"]:
            continue  # dead: counted in the summary, not listed
        best = slot.get("best")
        index.append([slot["id"], slot["fires"],
                      labels.setdefault(best["label"], len(labels)) if best else None,
                      FAMILY_CODES[best["family"]] if best else None,
                      best["f1"] if best else None,
                      [tokens.setdefault(t, len(tokens)) for t in slot["tokens"]]])
    keep = ("layer", "n_rows", "n_free", "relation_names", "summary", "run")
    return {**{k: stats[k] for k in keep if k in stats}, "title": title,
            "part_slots": part_slots, "parts_dir": PARTS_DIR, "labels": list(labels),
            "tokens": list(tokens), "index": index}


def _js(data: Any) -> str:
    """JSON that is safe inside a <script> element (no "</" to end it early)."""
    return json.dumps(data).replace("</", "<\\/")


def write_browser(stats: dict[str, Any], table: pd.DataFrame, out_dir: str | Path,
                  title: str, single_file: str | Path | None = None,
                  part_slots: int = PART_SLOTS) -> Path:
    """Write the browser folder (the page, its index data and its part files, each
    `part_slots` slots' panels); returns the page's path. `single_file`: also the same
    page with every file inline, one file for the Snakemake report (which cannot hold a
    folder in its HTML form)."""
    index = f"window.SLOT_DATA = {_js(index_data(stats, title, part_slots))};\n"
    slots = stats["slots"]
    parts = {}
    for p in range(0, (len(slots) + part_slots - 1) // part_slots):
        part = [s for s in slots[p * part_slots : (p + 1) * part_slots] if s["fires"]]
        if part:
            panels = {"slots": {s["id"]: s for s in part}, "rows": row_records(part, table)}
            parts[p] = f"SLOT_PART({p}, {_js(panels)});\n"
    page = files("supervised_sae.report").joinpath("slot_browser.html").read_text()
    page = page.replace("{{title}}", _escape(title))
    with atomic_path(out_dir, directory=True, kind=SLOT_BROWSER) as tmp:
        (tmp / DATA_FILE).write_text(index)
        (tmp / PARTS_DIR).mkdir()
        for p, text in parts.items():
            (tmp / PARTS_DIR / part_file(p)).write_text(text)
        (tmp / PAGE_FILE).write_text(page)
    if single_file is not None:
        size = len(index) + sum(len(t) for t in parts.values())
        inline = (page.replace(f'<script src="{DATA_FILE}"></script>', f"<script>{index}</script>")
                  .replace("<!--parts-->", "".join(f"<script>{t}</script>"
                                                   for t in parts.values()))
                  if size <= SINGLE_FILE_LIMIT else
                  f"<p>{_escape(title)}: {len(slots)} slots, too many for one file; open "
                  f"{Path(out_dir).name}/{PAGE_FILE} beside this file.</p>")
        with atomic_path(single_file) as tmp:
            tmp.write_text(inline)
    return Path(out_dir) / PAGE_FILE


def part_file(p: int) -> str:
    """The file of part p (its slots from p * part_slots); the page builds the same name."""
    return f"part_{p:05d}.js"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
