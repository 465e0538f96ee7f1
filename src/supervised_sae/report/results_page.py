"""A Markdown results page of a whole study, from its summary table.

Per-layer tables in the published work's form (binding, swaps, values, reconstruction),
mean +- sd over replicate SAE seeds, on held-out people; the study's targets with what
was measured; how and where it ran. Everything on the page is read from the run's own
files, so rerunning the study rewrites it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from supervised_sae import __version__
from supervised_sae.atomic import atomic_path
from supervised_sae.config import results_notes_path
from supervised_sae.layers import EMBEDDINGS, hidden_states_index, layer_name
from supervised_sae.runs import label_of

SEEN, PARAPHRASE = "test_seen", "test_heldout"  # held-out people x seen / held-out wordings
PUBLISHED_SWAP_ALPHA = 2.0


@dataclass(frozen=True)
class Stats:
    """One summary cell: mean, sd and n over replicate seeds."""

    mean: float
    sd: float
    n: int

    def __str__(self) -> str:
        return self.format(3)

    def format(self, digits: int) -> str:
        if self.n > 1:
            return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"
        return f"{self.mean:.{digits}f}"


class Summary:
    """Look-ups into the tidy summary (one row per replicate) and its spread."""

    def __init__(self, table: pd.DataFrame):
        # the swap's train-people rate at its chosen alpha (the best over alphas), to
        # choose a layer on train people too
        train = table[table["metric"].str.startswith("decoder.train_success_rate@")]
        best_train = (train.groupby(["mode", "layer", "replicate", "slice"])["value"].max()
                      .reset_index().assign(metric="decoder.best_train_success_rate"))
        table = pd.concat([table, best_train], ignore_index=True)
        self.table = table
        stats = table.groupby(["mode", "layer", "slice", "metric"])["value"]
        self.stats = stats.agg(["mean", "std", "count"])
        self.layers = sorted(int(x) for x in table["layer"].unique())
        self.modes = set(table["mode"])
        self.n_seeds = int(table["replicate"].nunique())

    def get(self, mode: str, layer: int, slice_name: str, metric: str) -> Stats | None:
        key = (mode, layer, slice_name, metric)
        if key not in self.stats.index:
            return None
        row = self.stats.loc[key]
        return Stats(float(row["mean"]), float(row["std"]) if row["count"] > 1 else 0.0,
                     int(row["count"]))

    def seed0(self, mode: str, layer: int, slice_name: str, metric: str) -> float | None:
        t = self.table
        part = t[(t["mode"] == mode) & (t["layer"] == layer) & (t["slice"] == slice_name)
                 & (t["metric"] == metric) & (t["replicate"] == 0)]
        return float(part["value"].iloc[0]) if len(part) else None

    def best_layer(self, mode: str, slice_name: str, metric: str) -> tuple[int, Stats] | None:
        """The layer with the highest mean (ties: the earliest)."""
        cells = [(layer, self.get(mode, layer, slice_name, metric)) for layer in self.layers]
        cells = [(layer, s) for layer, s in cells if s is not None]
        return max(cells, key=lambda c: (c[1].mean, -c[0])) if cells else None


def _cell(s: Stats | None, digits: int = 3) -> str:
    return "–" if s is None else s.format(digits)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _layer_label(layer: int) -> str:
    # the published code's index is Hugging Face's hidden_states index
    return f"{layer_name(layer)} ({hidden_states_index(layer)})"


def _present(summary: Summary, folders: Sequence[str]) -> list[str]:
    return [f for f in folders if f in summary.modes]


SLOT_KINDS = ("joint", "feature_activation", "unsupervised", "topk")
VALUE_KINDS = ("joint", "next_token_prediction")


Column = tuple[str, Callable[[int], str]]  # header, and the cell of a layer


def _metric(s: Summary, mode: str, slice_name: str, metric: str, digits: int = 3
            ) -> Callable[[int], str]:
    return lambda layer: _cell(s.get(mode, layer, slice_name, metric), digits)


def _layer_table(s: Summary, columns: Sequence[Column]) -> str:
    """One row per layer, the published index in brackets."""
    return _table(["layer (published)", *(h for h, _ in columns)],
                  [[_layer_label(layer), *(cell(layer) for _, cell in columns)]
                   for layer in s.layers])


def binding_table(s: Summary) -> str:
    columns: list[Column] = []
    for k in [*_present(s, SLOT_KINDS), "probe"]:
        metric = "relation_accuracy" if k == "probe" else "binding_accuracy"
        name = "relation probe" if k == "probe" else label_of(k)
        columns += [(f"{name} seen", _metric(s, k, SEEN, metric)),
                    (f"{name} paraphrase", _metric(s, k, PARAPHRASE, metric))]
    return _layer_table(s, columns)


def _swap_interval(s: Summary, kind: str, layer: int) -> str:
    lo = s.seed0(kind, layer, "swap", "decoder.best_success_ci95[0]")
    hi = s.seed0(kind, layer, "swap", "decoder.best_success_ci95[1]")
    alpha = s.seed0(kind, layer, "swap", "decoder.best_alpha")
    if lo is None or hi is None or alpha is None:
        return "–"
    return f"[{lo:.3f}, {hi:.3f}] at α={alpha:g}"


def swap_table(s: Summary) -> str:
    columns: list[Column] = []
    for k in _present(s, SLOT_KINDS):
        columns += [(label_of(k), _metric(s, k, "swap", "decoder.best_success_rate")),
                    (f"{label_of(k)} seed 0: 95% CI",
                     lambda layer, k=k: _swap_interval(s, k, layer))]
    return _layer_table(s, columns)


def value_table(s: Summary) -> str:
    columns: list[Column] = []
    for k in _present(s, VALUE_KINDS):
        columns += [(label_of(k), _metric(s, k, SEEN, "value_accuracy")),
                    (f"{label_of(k)} unseen answers",
                     _metric(s, k, SEEN, "value_accuracy_unseen_answers"))]
    columns += [
        ("answer probe", _metric(s, "probe", SEEN, "answer_accuracy")),
        ("answer probe unseen answers",
         _metric(s, "probe", SEEN, "answer_accuracy_unseen_answers")),
        ("logit lens", _metric(s, "logit_lens", SEEN, "answer_accuracy")),
        ("logit lens of joint reconstruction",
         _metric(s, "joint", SEEN, "logit_lens_reconstruction_accuracy")),
        ("LM", _metric(s, "lm", SEEN, "answer_accuracy")),
    ]
    return _layer_table(s, columns)


def reconstruction_table(s: Summary) -> str:
    kinds = _present(s, SLOT_KINDS)
    columns: list[Column] = [(f"{label_of(k)} FVU", _metric(s, k, SEEN, "fvu"))
                             for k in kinds]
    columns += [(f"{label_of(k)} L0", _metric(s, k, SEEN, "l0_free", 1)) for k in kinds]
    columns += [("joint spliced LM accuracy", _metric(s, "joint", SEEN, "spliced_accuracy")),
                ("LM clean", _metric(s, "joint", SEEN, "clean_accuracy"))]
    return _layer_table(s, columns)


@dataclass(frozen=True)
class Target:
    claim: str
    measured: str
    met: bool


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _at_chosen_layer(s: Summary, mode: str, choose: tuple[str, str, str],
                     report: tuple[str, str]) -> tuple[int, Stats, str] | None:
    """The held-out number at the layer chosen on train people (`choose`: mode, slice,
    metric), and the best held-out layer beside it for reference."""
    chosen = s.best_layer(*choose)
    if chosen is None:
        return None
    layer = chosen[0]
    stat = s.get(mode, layer, *report)
    best = s.best_layer(mode, *report)
    if stat is None or best is None:
        return None
    note = "" if best[0] == layer else (f" (best held-out layer: {layer_name(best[0])}, "
                                        f"{best[1]})")
    return layer, stat, note


def targets(s: Summary, lm: dict[str, Any]) -> list[Target]:
    """The study's targets (held-out people), each with what was measured. "The best
    layer" is chosen on train people, never on the held-out rows it is reported on."""
    out: list[Target] = []
    seen = lm["test_seen_templates"]["accuracy"]
    para = lm["test_heldout_templates"]["accuracy"]
    out.append(Target("LM answers held-out people ≥ 0.95 (seen templates)", _fmt(seen),
                      seen >= 0.95))
    out.append(Target("LM answers held-out people ≥ 0.90 (held-out paraphrases)", _fmt(para),
                      para >= 0.9))
    # the layer for each claim: the best on train people by the same measure; for values,
    # where the LM's own read-out (logit lens) names train people's answers best, since
    # value heads fit train people's labels at every layer
    checks = [
        ("joint binding ≥ 0.99 (seen templates)",
         ("joint", "train_seen", "binding_accuracy"), (SEEN, "binding_accuracy"), 0.99),
        ("joint binding ≥ 0.90 (held-out paraphrases)",
         ("joint", "train_heldout", "binding_accuracy"), (PARAPHRASE, "binding_accuracy"),
         0.9),
        ("joint swap success ≥ 0.85 (decoder direction, α chosen on train people)",
         ("joint", "swap", "decoder.best_train_success_rate"),
         ("swap", "decoder.best_success_rate"), 0.85),
        ("joint value accuracy ≥ 0.90 (seen templates)",
         ("logit_lens", "train_seen", "answer_accuracy"), (SEEN, "value_accuracy"), 0.9),
    ]
    for claim, choose, report, goal in checks:
        found = _at_chosen_layer(s, "joint", choose, report)
        if found is None:
            continue
        layer, stat, note = found
        measured = f"{stat} at layer {layer_name(layer)}{note}"
        if report[1] == "decoder.best_success_rate":
            measured += f"; seed 0 {_swap_interval(s, 'joint', layer)}"
        out.append(Target(f"{claim}, at the layer chosen on train people", measured,
                          stat.mean >= goal))
    if "topk" in s.modes:
        gaps = [(layer, s.get("joint", layer, SEEN, "binding_accuracy"),
                 s.get("topk", layer, SEEN, "binding_accuracy")) for layer in s.layers]
        worse = [layer_name(layer) for layer, j, t in gaps if j and t and j.mean < t.mean]
        clear = [layer_name(layer) for layer, j, t in gaps if j and t and j.n > 1
                 and t.n > 1 and j.mean - t.mean > 2 * max(j.sd, t.sd)]
        spread = (f"ahead by > 2 sd (of either) at: {', '.join(clear) or 'none'}"
                  if s.n_seeds > 1 else "one seed: the spread is unknown")
        out.append(Target("supervised (joint) binding ≥ TopK's at every layer (seen "
                          "templates), by more than the seed spread where claimed",
                          f"joint below TopK at: {', '.join(worse) or 'none'}; {spread}",
                          not worse))
    first = s.layers[0]
    best = s.best_layer("joint", "train_seen", "binding_accuracy")
    if best and first != best[0]:
        early = s.get("joint", first, SEEN, "binding_accuracy")
        at_best = s.get("joint", best[0], SEEN, "binding_accuracy")
        probe = s.get("probe", first, SEEN, "relation_accuracy")
        if early and at_best:
            out.append(Target(
                "the earliest stored layer binds clearly worse (by > 0.1) than the best",
                f"layer {layer_name(first)}: joint {early}, relation probe {_cell(probe)}; "
                f"layer {layer_name(best[0])}: {at_best}", early.mean < at_best.mean - 0.1))
    return out


def published_comparison(s: Summary) -> list[str]:
    """Sentences that put the published numbers beside ours, with the index offset."""
    lines = []
    ours_6 = 5  # the published layer 6 is hidden_states[6], after block 5: our layer 5
    if ours_6 in s.layers:
        b = s.get("joint", ours_6, SEEN, "binding_accuracy")
        lines.append(f"- Published: 100% binding at its layer 6 (GPT-2, 12 blocks). Its "
                     f"layer 6 is our layer 5 (after block 5); here joint binding there is "
                     f"{_cell(b)} on seen templates and "
                     f"{_cell(s.get('joint', ours_6, PARAPHRASE, 'binding_accuracy'))} on "
                     "held-out paraphrases. Our LM has 6 blocks, so our layer 5 is its last "
                     "block, not its middle.")
    if EMBEDDINGS in s.layers:
        b = s.get("joint", EMBEDDINGS, SEEN, "binding_accuracy")
        lines.append(f"- Published: 24% binding in early layers, its layer 0 being the "
                     f"embedding output. Our `emb` is that layer: joint binding {_cell(b)}, "
                     "a linear relation probe "
                     f"{_cell(s.get('probe', EMBEDDINGS, SEEN, 'relation_accuracy'))}. Every "
                     "question ends in `?`, so at the embedding output only the position "
                     "tells relations apart; chance is 1/6 = 0.167.")
    joint_swaps = s.table[(s.table["mode"] == "joint") & (s.table["slice"] == "swap")]

    def at_published_alpha(prefix: str):
        rows = joint_swaps[joint_swaps["metric"] == f"{prefix}@alpha={PUBLISHED_SWAP_ALPHA:g}"]
        return rows.groupby("layer")["value"].mean()

    held_out, train = (at_published_alpha("decoder.success_rate"),
                       at_published_alpha("decoder.train_success_rate"))
    if len(held_out) and len(train):
        layer = int(train.idxmax())  # chosen on train people, reported on held-out ones
        lines.append(f"- Published: 85% swap success at α = 2. Here, at α = 2 (not chosen, "
                     f"the published value) and the layer where train people's swaps succeed "
                     f"most ({layer_name(layer)}): {held_out[layer]:.3f} on held-out people "
                     "(joint, decoder direction, mean over seeds).")
    return lines


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
    for tsv in (results / "benchmarks").rglob("*.tsv"):
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


def _notes(page: Path) -> list[str]:
    """The maintainers' reading of the targets (what was tried where one is missed), kept
    in `<page stem>_notes.md` beside the page so a rerun keeps it."""
    notes = results_notes_path(page)
    if not notes.is_file():
        return []
    return [f"## Reading the targets (from `{notes.name}`)", "", notes.read_text().strip(), ""]


def figure_section(figures: dict[str, Path], page: Path) -> list[str]:
    """Copy the figures beside the page (into `<page stem>/`) and link them."""
    folder = page.parent / page.stem
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for title, source in figures.items():
        target = folder / Path(source).name
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        lines += [f"### {title}", "", f"![{title}]({page.stem}/{target.name})", ""]
    return lines


def write_page(page: str | Path, summary_csv: str | Path, lm_accuracy: str | Path,
               figures: dict[str, Path], config: dict[str, Any], command: str,
               results: str | Path = "results") -> None:
    page, results = Path(page), Path(results)
    s = Summary(pd.read_csv(summary_csv))
    lm = json.loads(Path(lm_accuracy).read_text())
    span = run_span(results)
    n_seeds = s.n_seeds
    lm_cfg, sae_cfg, data_cfg = config["lm"], config["sae"], config["data"]
    header = [
        "# Study results",
        "",
        "Generated by the workflow from `results/summary/metrics.csv` (rule `results_page`); "
        "rerunning the study rewrites this page. All numbers are on **held-out people** "
        "(people whose questions the LM never trained on); *seen* means question wordings "
        "used in training, *paraphrase* means held-out wordings. SAE numbers are "
        f"mean ± sd over {n_seeds} SAE seed(s); probes, the logit lens and the LM have no "
        "SAE seed.",
        "",
        "## How it ran",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_description()}",
    ]
    commit = git_commit(Path.cwd())
    if commit:
        header.append(f"- Commit: `{commit}`")
    if span:
        start, end = span
        minutes = (end - start).total_seconds() / 60
        header.append(f"- Ran {start:%Y-%m-%d %H:%M} to {end:%H:%M} UTC: **{minutes:.1f} "
                      "minutes** from the first job's start to the last job's end (LM "
                      "training included; install excluded)")
    header += [
        f"- Data: {data_cfg['n_people']} people, {data_cfg['biographies_per_person']} "
        f"biographies each, {data_cfg['test_fraction']:.0%} held out of QA training, "
        f"{data_cfg['heldout_templates']} held-out question wordings per relation",
        f"- LM: GPT-2 shape, {lm_cfg['n_layer']} blocks, width {lm_cfg['n_embd']}, "
        f"{lm_cfg['n_head']} heads, {lm_cfg['epochs']} epochs",
        f"- SAE: {sae_cfg['n_free']} free + {len(data_cfg['relations'])} relation slots, "
        f"stage 1 {sae_cfg['stage1_epochs']} epochs, stage 2 {sae_cfg['stage2_epochs']} "
        f"epochs, value head `{sae_cfg['value_head']}`, indep policy "
        f"`{sae_cfg['indep_policy']}` (threshold {sae_cfg['indep_threshold']} slots)",
        "- Layers: L is the residual stream after block L; `emb` is the embedding output. "
        "In brackets, the published work's index (Hugging Face `hidden_states[L + 1]`).",
        "",
    ]
    body = ["## Targets", "",
            _table(["target", "measured", "met"],
                   [[t.claim, t.measured, "yes" if t.met else "**no**"]
                    for t in targets(s, lm)]),
            "", *_notes(page),
            "## Beside the published numbers", "", *published_comparison(s), "",
            "## Binding accuracy", "",
            "Which relation is asked about, read from the relation slots (the baselines: "
            "from the free slot matched to each relation on train people; ties and silent "
            "slots count as wrong).", "", binding_table(s), "",
            "## Swap success", "",
            "A question about relation A steered to B along the decoder directions; α is "
            "chosen on train people and success reported on held-out people.", "",
            swap_table(s), "",
            "## Value accuracy", "",
            "The answer's first token, read by the value heads (seen templates); *unseen "
            "answers* are rows whose answer never occurs as a training label of its "
            "relation.", "", value_table(s), "",
            "## Reconstruction", "",
            "Fraction of variance unexplained, active free slots per prompt, and the LM's "
            "accuracy with the joint SAE's reconstruction spliced in.", "",
            reconstruction_table(s), "", "## Figures", ""]
    body += figure_section(figures, page)
    with atomic_path(page) as tmp:
        Path(tmp).write_text("\n".join(header + body))
