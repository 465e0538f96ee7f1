"""The slot browser: one static page per SAE and layer (`index.html`, with its data in
`slot_data.js` beside it), opened from disk with no server or network. An index of the
live slots, sortable and searchable, paged; a panel per slot with its top-activating
prompts, the label its firing predicts best, the tokens its decoder row promotes, and
for a relation slot its activations by relation asked and where it misfires.

The data file is a script (`window.SLOT_DATA = {...}`), not JSON fetched at run time:
browsers refuse `fetch` of a local file. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from supervised_sae.atomic import SLOT_BROWSER, atomic_path

DATA_FILE, PAGE_FILE = "slot_data.js", "index.html"


def row_records(stats: dict[str, Any], table: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """The prompts the page shows (every row some slot lists), from the prompts table."""
    wanted = set()
    for slot in stats["slots"]:
        wanted.update(r for r, _ in slot["top"])
        wanted.update(slot.get("wrong_rows", []))
        wanted.update(slot.get("silent_rows", []))
    part = table.iloc[sorted(wanted)]
    return {int(i): {"prompt": str(p.prompt), "person": str(p.person),
                     "relation": str(p.relation), "answer": str(p.answer),
                     "split": str(p.split), "heldout": bool(p.template_heldout)}
            for i, p in zip(sorted(wanted), part.itertuples(index=False), strict=True)}


SINGLE_FILE_LIMIT = 20 * 2**20  # a one-file page larger than this only points to the folder


def write_browser(stats: dict[str, Any], table: pd.DataFrame, out_dir: str | Path,
                  title: str, single_file: str | Path | None = None) -> Path:
    """Write the browser folder (the page and its data file beside it); returns the
    page's path. `single_file`: also the same page with its data inline, one file for
    the Snakemake report (which cannot hold a folder in its HTML form)."""
    data = {**stats, "title": title, "rows": row_records(stats, table)}
    script = "window.SLOT_DATA = " + json.dumps(data).replace("</", "<\\/") + ";\n"
    page = PAGE.replace("{{title}}", _escape(title))
    with atomic_path(out_dir, directory=True, kind=SLOT_BROWSER) as tmp:
        (tmp / DATA_FILE).write_text(script)
        (tmp / PAGE_FILE).write_text(page)
    if single_file is not None:
        inline = (page.replace(f'<script src="{DATA_FILE}"></script>',
                               f"<script>{script}</script>")
                  if len(script) <= SINGLE_FILE_LIMIT else
                  f"<p>{_escape(title)}: {len(stats['slots'])} slots, too many for one "
                  f"file; open {Path(out_dir).name}/{PAGE_FILE} beside this file.</p>")
        with atomic_path(single_file) as tmp:
            tmp.write_text(inline)
    return Path(out_dir) / PAGE_FILE


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{title}}</title>
<style>
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
th{cursor:pointer;background:#f4f4f4}tr.slot:hover{background:#eef}#panel{margin-top:1em;
padding:1em;border:1px solid #ccc;display:none}.bar{display:inline-block;height:10px;
background:#69c;vertical-align:middle}.muted{color:#777}
</style></head><body>
<h1>{{title}}</h1>
<p id="summary"></p>
<p><input id="search" placeholder="search labels, tokens, slot id" size="40">
<select id="kind"><option value="">all slots</option><option value="relation">relation
slots</option><option value="free">free slots</option></select>
<button id="prev">&larr;</button> <span id="pageinfo"></span> <button id="next">&rarr;</button></p>
<table id="index"><thead><tr><th data-key="id">slot</th><th data-key="kind">kind</th>
<th data-key="density">density</th><th data-key="label">best label</th>
<th data-key="f1">F1</th><th data-key="tokens">top output tokens</th></tr></thead>
<tbody></tbody></table>
<div id="panel"></div>
<script src="slot_data.js"></script>
<script>
const D = window.SLOT_DATA, PER_PAGE = 200;
let sortKey = "density", sortDown = true, page = 0;
const live = D.slots.filter(s => s.fires > 0);
function label(s) { return s.kind === "relation" ? "slot of " + s.relation :
  s.best.family === "nothing" ? "(nothing: " + s.best.label + ")" : s.best.label; }
function f1(s) { return s.kind === "relation" ? null : s.best.f1; }
function value(s, key) { return key === "label" ? label(s) : key === "f1" ? (f1(s) ?? -1) :
  key === "tokens" ? s.tokens.join(" ") : s[key]; }
function shown() {
  const q = document.getElementById("search").value.toLowerCase();
  const kind = document.getElementById("kind").value;
  const rows = live.filter(s => (!kind || s.kind === kind) && (!q || String(s.id) === q ||
    label(s).toLowerCase().includes(q) || s.tokens.join(" ").toLowerCase().includes(q)));
  rows.sort((a, b) => { const x = value(a, sortKey), y = value(b, sortKey);
    return (x < y ? -1 : x > y ? 1 : 0) * (sortDown ? -1 : 1); });
  return rows;
}
function render() {
  const rows = shown(), pages = Math.max(1, Math.ceil(rows.length / PER_PAGE));
  page = Math.min(page, pages - 1);
  document.getElementById("pageinfo").textContent =
    `page ${page + 1} of ${pages} (${rows.length} slots)`;
  const body = document.querySelector("#index tbody");
  body.innerHTML = "";
  for (const s of rows.slice(page * PER_PAGE, (page + 1) * PER_PAGE)) {
    const tr = document.createElement("tr");
    tr.className = "slot"; tr.dataset.id = s.id;
    for (const text of [s.id, s.kind, s.density.toFixed(4), label(s),
                        f1(s) === null ? "" : f1(s).toFixed(3), s.tokens.join(" ")]) {
      const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
    tr.onclick = () => open(s.id);
    body.appendChild(tr);
  }
}
function rowsTable(title, ids, acts) {
  let html = `<h3>${title}</h3><table><tr><th>activation</th><th>prompt</th><th>person</th>
    <th>relation</th><th>answer</th><th>people</th></tr>`;
  ids.forEach((r, i) => { const p = D.rows[r];
    html += `<tr><td>${acts ? acts[i].toFixed(3) : ""}</td><td>${esc(p.prompt)}</td>
      <td>${esc(p.person)}</td><td>${esc(p.relation)}</td><td>${esc(p.answer)}</td>
      <td>${p.split}${p.heldout ? ", held-out wording" : ""}</td></tr>`; });
  return html + "</table>";
}
function esc(t) { const d = document.createElement("div"); d.textContent = t; return d.innerHTML; }
function open(id) {
  const s = D.slots[id], panel = document.getElementById("panel");
  let html = `<h2>slot ${s.id} (${s.kind}${s.relation ? ": " + s.relation : ""})</h2>
    <p>fires on ${s.fires} of ${D.n_rows} prompts (density ${s.density.toFixed(4)}), mean
    activation when on ${s.mean_on.toFixed(3)}. Top output tokens:
    <b>${esc(s.tokens.join(", "))}</b></p>`;
  if (s.best) html += `<p>best single label: <b>${esc(s.best.label)}</b> (F1
    ${s.best.f1.toFixed(3)}; ${s.best.family === "nothing" ? "too weak: explained by nothing"
    : "a " + s.best.family + " label"})</p>`;
  html += rowsTable("Top-activating prompts", s.top.map(t => t[0]), s.top.map(t => t[1]));
  if (s.hist) {
    html += `<h3>Activation by relation asked (12 bins from 0 to
      ${s.hist_max.toFixed(3)})</h3><table>`;
    for (const [group, counts] of Object.entries(s.hist)) {
      const most = Math.max(1, ...counts);
      html += `<tr><td>${esc(group)}</td><td>` + counts.map(c =>
        `<span class="bar" title="${c}" style="width:${3 + 40 * c / most}px"></span>`).join(" ")
        + "</td></tr>"; }
    html += "</table>" + rowsTable(`Fires for another relation: ${s.wrong_fires} prompts
      (strongest)`, s.wrong_rows) + rowsTable(`Silent on its own relation: ${s.silent}
      prompts`, s.silent_rows);
  }
  panel.innerHTML = html; panel.style.display = "block";
}
const S = D.summary;
document.getElementById("summary").textContent = `Layer ${D.layer}: ${D.n_free} free slots, ` +
  `${D.relation_names.length} relation slots, ${D.n_rows} prompts. Free slots best explained ` +
  `by a relation: ${S.free_best_relation}, a wording: ${S.free_best_wording}, an answer ` +
  `value: ${S.free_best_value}, a person: ${S.free_best_person}, nothing: ` +
  `${S.free_best_nothing}; dead (never fire, not listed): ${S.dead_free}.`;
document.querySelectorAll("th").forEach(th => th.onclick = () => {
  const key = th.dataset.key; sortDown = key === sortKey ? !sortDown : true; sortKey = key;
  render(); });
document.getElementById("search").oninput = () => { page = 0; render(); };
document.getElementById("kind").onchange = () => { page = 0; render(); };
document.getElementById("prev").onclick = () => { page = Math.max(0, page - 1); render(); };
document.getElementById("next").onclick = () => { page += 1; render(); };
// a link can carry the view: #sort=f1&up=1&q=asks&kind=free&open=12
const view = new URLSearchParams(location.hash.slice(1));
if (view.get("sort")) { sortKey = view.get("sort"); sortDown = !view.get("up"); }
document.getElementById("search").value = view.get("q") || "";
document.getElementById("kind").value = view.get("kind") || "";
render();
if (view.get("open") !== null) open(Number(view.get("open")));
</script></body></html>
"""
