"""A Markdown results page of a whole study, from its summary table.

Per-layer tables in the published work's form (binding, swaps, values, reconstruction),
mean +- sd over draws (or, with one draw, over replicate SAE seeds), on held-out people;
the study's targets (from its targets file) with what was measured, and each judged with
each draw left out; how and where it ran. Everything on the page is
read from the run's own files, so rerunning the study rewrites it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from supervised_sae import __version__
from supervised_sae.atomic import PAGE_FIGURES, atomic_path, write_marker
from supervised_sae.config import results_notes_path
from supervised_sae.config.targets_spec import read_targets
from supervised_sae.layers import parse_layer
from supervised_sae.lm.describe import description_line
from supervised_sae.registry import encoder_label
from supervised_sae.report.costs import cost_section
from supervised_sae.report.intervention_tables import intervention_sections
from supervised_sae.report.page_files import (  # noqa: F401 (the page's names, here too)
    DEFAULT_TARGETS,
    PAGE_SECTIONS,
    SIGNATURE,
    check_page_paths,
)
from supervised_sae.report.readings import checked_notes
from supervised_sae.report.reproduction import reproduction_section
from supervised_sae.report.simplest_tools import answer as simplest_tools_answer
from supervised_sae.report.simplest_tools import simplest_tools_section
from supervised_sae.report.summary_view import (
    Summary,
    binding_table,
    core_metrics_table,
    reconstruction_table,
    table,
    value_table,
    verdict_cell,
)
from supervised_sae.report.sweep import sweep_table, sweep_target, with_main_point
from supervised_sae.report.targets import (
    Target,
    published_comparison,
    targets,
    verdicts_without_each_draw,
)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        memory_text = f", {memory:.0f} GiB memory"
    except (ValueError, OSError, AttributeError):
        memory_text = ""
    import torch

    gpu = "no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    return (f"{os.cpu_count()} CPU cores ({cpu}){memory_text}, {gpu}; "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"PyTorch {torch.__version__}, supervised-sae {__version__}")


def git_commit(folder: Path) -> str | None:
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def run_span(results: Path) -> tuple[datetime, datetime] | None:
    """When the study's jobs ran: the first benchmarked job's start (its benchmark file's
    time less its runtime) to the newest file under results/ (the last job's end)."""
    starts = []
    for tsv in results.rglob("benchmarks/**/*.tsv"):  # every draw's
        try:
            seconds = float(tsv.read_text().splitlines()[1].split("\t")[0])
        except (IndexError, ValueError, OSError):
            continue
        starts.append(tsv.stat().st_mtime - seconds)
    page_log = results / "logs" / "results_page.log"  # this page's own job
    ends = [p.stat().st_mtime for p in results.rglob("*") if p.is_file() and p != page_log]
    if not starts or not ends:
        return None
    return (datetime.fromtimestamp(min(starts), UTC), datetime.fromtimestamp(max(ends), UTC))


def lm_line(lm: dict[str, Any], lm_cfg: dict[str, Any]) -> str:
    """The model that ran, from its own config.json (accuracy.json's `lm`); an older
    accuracy.json without it: the built-in GPT-2's config."""
    if "lm" not in lm:
        return (f"GPT-2 shape, {lm_cfg['n_layer']} blocks, width {lm_cfg['n_embd']}, "
                f"{lm_cfg['n_head']} heads, {lm_cfg['epochs']} epochs")
    built = lm["lm"]["origin"] == "built here"
    return description_line(lm["lm"]) + (f", {lm_cfg['epochs']} epochs" if built else "")


def lm_depth(lm: dict[str, Any], lm_cfg: dict[str, Any]) -> int:
    return int(lm["lm"]["depth"] if "lm" in lm else lm_cfg["n_layer"])


def _notes(page: Path, found: list[Target]) -> list[str]:
    """The maintainers' reading of the targets (what was tried where one is missed), kept
    in `<page stem>_notes.md` beside the page so a rerun keeps it; each reading checked
    against the target and value it names (`readings`)."""
    notes = results_notes_path(page)
    if not notes.is_file():
        return []
    return [f"## Reading the targets (from `{notes.name}`)", "",
            checked_notes(notes.read_text(), found), ""]


def draws_section(s: Summary, lm: dict[str, Any], spec: dict[str, Any],
                  found: list[Target]) -> list[str]:
    """Each target's verdict with each draw left out in turn (several draws only)."""
    if len(s.draws) < 2:
        return []
    rows = [[t.claim, verdict_cell(t.met), *map(verdict_cell, left_out)]
            for t, left_out in verdicts_without_each_draw(s, lm, spec, found)]
    return ["## Each draw left out", "",
            "The verdict of each target on the mean over all draws, and on the mean over "
            "the others with one draw left out: a verdict that changes rests on one draw.",
            "", table(["target", "all draws", *(f"without draw {d}" for d in s.draws)], rows),
            ""]


def sweep_section(s: Summary, key: str) -> list[str]:
    """The L0 sweep's table (with a sweep only; its figure is under Figures)."""
    text = sweep_table(s.sweep, key)
    if not text:
        return []
    return ["## The L0 sweep", "",
            f"The joint SAE and its sparse baseline again at each `sae.{key}`, at one layer "
            "of the first draw, from the same activations (held-out people; ± over that "
            "draw's SAE seeds). *Ahead* asks for more than 2 sd of either.", "", text, ""]


def browser_links(results: Path) -> list[str]:
    """Where the joint SAEs' slot browsers of the first draw are. Files of the run, not of
    the page (a few MB each): named as paths, not links, so a committed page links to
    nothing that only exists after a run."""
    found = sorted((p for p in results.glob("joint/layer*/slot_browser.html")
                    if "_" not in p.parent.name),  # the first SAE seed's only
                   key=lambda p: parse_layer(p.parent.name.removeprefix("layer")))
    if not found:
        return []
    paths = ", ".join(f"`{Path(results.name) / p.relative_to(results)}`" for p in found)
    return ["", "## What the slots fire on", "",
            "Each layer's joint SAE (draw 0, first SAE seed) has a slot browser: a page of "
            "what each relation slot and free slot fires on, its top prompts, the label its "
            "firing predicts best and the tokens it promotes. After a run, open it from "
            f"disk: {paths}."]


def figure_section(figures: dict[str, Path], page: Path) -> list[str]:
    """Copy the figures beside the page (into `<page stem>/`) and link them."""
    folder = page.parent / page.stem
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, PAGE_FIGURES)
    lines = []
    for title, source in figures.items():
        target = folder / Path(source).name
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        lines += [f"### {title}", "", f"![{title}]({page.stem}/{target.name})", ""]
    return lines


def write_page(page: str | Path, summary_csv: str | Path,
               lm_accuracy: str | Path | list[str | Path],
               figures: dict[str, Path], config: dict[str, Any], command: str,
               results: str | Path = "results", targets_file: str | Path = DEFAULT_TARGETS
               ) -> None:
    """The page from the summary table, the LM's accuracy (each draw's file; the first
    describes the LM), the figures and the targets file (thresholds and published
    numbers)."""
    page, results = Path(page), Path(results)
    summary = pd.read_csv(summary_csv)
    s = Summary(with_main_point(summary, config))
    first = lm_accuracy if isinstance(lm_accuracy, str | Path) else lm_accuracy[0]
    lm = json.loads(Path(first).read_text())
    spec = read_targets(targets_file)
    span = run_span(results)
    lm_cfg, sae_cfg, data_cfg = config["lm"], config["sae"], config["data"]
    header = [
        "# Study results",
        "",
        f"{SIGNATURE} (rule `results_page`); "
        "rerunning the study rewrites this page. All numbers are on **held-out people** "
        "(people whose questions the LM never trained on); *seen* means question wordings "
        "used in training, *paraphrase* means held-out wordings. Numbers are "
        f"mean ± sd over {s.spread_over}"
        + ("" if len(s.draws) > 1 else "; probes, the logit lens and the LM have no SAE "
           "seed") + ".",
        "",
        *([short, ""] if (short := simplest_tools_answer(s)) else []),
        "## How it ran",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_description()}",
    ]
    commit = git_commit(Path.cwd())
    if commit:
        header.append(f"- Commit: `{commit}`")
    minutes = None
    if span:
        start, end = span
        minutes = (end - start).total_seconds() / 60
        header.append(f"- Ran {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC: **{minutes:.1f} "
                      "minutes** from the first job's start to the last job's end (LM "
                      "training included; install excluded)")
    header += [
        f"- Data: {data_cfg['n_people']} people, {data_cfg['biographies_per_person']} "
        f"biographies each, {data_cfg['test_fraction']:.0%} held out of QA training, "
        f"{data_cfg['heldout_templates']} held-out question wordings per relation"
        + ("; a statement-form wording seen" if data_cfg.get("statement_wordings") else ""),
        f"- LM: {lm_line(lm, lm_cfg)}"
        + (f"; **{lm['held_out_note']}**" if lm.get("held_out_facts_read") is False else ""),
        f"- SAE: {sae_cfg['n_free']} free + {len(data_cfg['relations'])} relation slots, "
        f"free encoder {encoder_label(sae_cfg)}, stage 1 {sae_cfg['stage1_epochs']} epochs, "
        f"stage 2 {sae_cfg['stage2_epochs']} epochs, value head `{sae_cfg['value_head']}`, "
        f"indep policy `{sae_cfg['indep_policy']}` (threshold {sae_cfg['indep_threshold']} slots)",
        *([f"- Draws: {len(s.draws)}, each the whole chain (people, LM, activations, "
            "SAEs) run with seed + d, in results/draw{d}/ (draw 0 in results/)"]
          if len(s.draws) > 1 else []),
        "- Layers: L is the residual stream after block L; `emb` is the embedding output. "
        "In brackets, the published work's index (Hugging Face `hidden_states[L + 1]`).",
        "",
        *cost_section(results, minutes),
    ]
    key = config.get("sweep", {}).get("key", "k")
    over_draws = targets(s, lm, spec)
    swept_target = sweep_target(s.sweep, key)  # the first draw's: no draw to leave out
    found = over_draws + ([swept_target] if swept_target else [])
    body = ["## Targets", "",
            table(["target", "measured", "met"],
                   [[t.claim, t.measured, verdict_cell(t.met)] for t in found]),
            "", *_notes(page, found), *draws_section(s, lm, spec, over_draws),
            *simplest_tools_section(s),
            "## Beside the published numbers", "",
            *published_comparison(s, spec["published"], lm_depth(lm, lm_cfg)), "",
            "## Binding accuracy", "",
            "Which relation is asked about, read from the relation slots (the baselines: "
            "from the free slot matched to each relation on train people; ties and silent "
            "slots count as wrong).", "", binding_table(s), "",
            *intervention_sections(s),
            "## Value accuracy", "",
            "The whole answer (a value), read by the value heads (seen templates); "
            "*unseen answers* are rows whose answer never occurs as a training label of "
            "its relation. The logit lens and the `lens` head read one token (a value's "
            "first): they are scored on the rows whose first token no other value "
            "shares.", "", value_table(s), "",
            "## Reconstruction", "",
            "Fraction of variance unexplained, active free slots per prompt, and the LM's "
            "whole-answer accuracy with the joint SAE's reconstruction spliced in.", "",
            reconstruction_table(s), "",
            "Loss recovered, (CE_zero - CE_SAE) / (CE_zero - CE_clean), and the KL "
            "divergence (nats) of the spliced from the clean next-token distribution: the "
            "cross-entropy of the answer's first token (labelled so: not the whole "
            "answer) over the full vocabulary at the "
            "prompt's last position, the one position the SAE edits, with the residual "
            "there replaced by the reconstruction (CE_SAE) or zero-ablated (CE_zero). "
            "SAELens averages over every position of a text instead. *Whole answer*: the "
            "same with the answer's summed NLL over all its tokens, teacher forced after "
            "the edit (under the word tokenizer only dates have more than one).", "",
            core_metrics_table(s), "", *sweep_section(s, key),
            *reproduction_section(summary, config), "## Figures", ""]
    body += figure_section(figures, page) + browser_links(results)
    with atomic_path(page) as tmp:
        Path(tmp).write_text("\n".join(header + body))
