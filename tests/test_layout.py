"""The package's shape: one concern a module, imports only run forward (no cycles), and
building the DAG imports no torch."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "supervised_sae"
MAX_LINES = 300
# The order of the layers: a module may import its own layer and the ones before it.
LAYERS = [
    ("supervised_sae", "supervised_sae.layers", "supervised_sae.registry",
     "supervised_sae.runs", "supervised_sae.atomic", "supervised_sae.backend",
     "supervised_sae.checkpoints", "supervised_sae.lm.family", "supervised_sae.lm.describe"),
    ("supervised_sae.data",),
    ("supervised_sae.config",),
    ("supervised_sae.lm",),
    ("supervised_sae.sae",),
    ("supervised_sae.train",),
    ("supervised_sae.evaluation",),
    ("supervised_sae.report",),
    ("supervised_sae.jobs", "supervised_sae.cli"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    """The layer of a module: the longest listed prefix that names it."""
    best = (-1, -1)
    for k, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                best = max(best, (len(p), k))
    assert best[1] >= 0, f"{module} is in no layer of tests/test_layout.py"
    return best[1]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "supervised_sae" or m.startswith("supervised_sae.")}


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_module_over_the_line_limit():
    long = {m: n for m, p in modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_relative_imports_and_no_import_runs_backwards():
    backwards = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), (
            f"{module}: relative import")
        for target in imports(path):
            if rank(target) > rank(module):
                backwards.append(f"{module} -> {target}")
    assert not backwards, backwards


def test_no_import_cycle():
    graph = {m: {t for t in imports(p) if t in modules() and t != m}
             for m, p in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_workflow_writes_shared_settings_once():
    """The small jobs' resources and the SAE training rule are written once: the other
    rules reuse them (`**SMALL_JOB`, `use rule train_stage2 as ...`)."""
    rules = {p.name: p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk")}
    text = "\n".join(rules.values())
    assert text.count("mem_mb=2000") == 1 and "SMALL_JOB = dict(" in rules["common.smk"]
    assert rules["sae.smk"].count("script:") == 1
    assert "use rule train_stage2 as train_baseline" in rules["sae.smk"]
    assert "use rule train_stage2 as train_stage1" in rules["sae.smk"]


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (of modules, classes, functions
    and fields: an expression statement that is only a string)."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}


def test_encoder_names_are_spelt_only_in_the_encoder_table():
    """Every fact about an encoder lives in its row of `registry.ENCODERS` (and its class):
    a module that names an encoder in code ("is it topk?") restates a fact the table
    holds, and drifts when an encoder is added. A name that is also a run kind ("topk",
    the TopK baseline) is flagged where it is compared with an encoder."""
    from supervised_sae.registry import ENCODERS
    from supervised_sae.runs import RUN_KINDS

    allowed = {PACKAGE / "registry.py", PACKAGE / "sae" / "encoders.py"}
    found = []
    for path in sorted(set(PACKAGE.rglob("*.py")) - allowed):
        source = path.read_text()
        tree = ast.parse(source)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and node.value in ENCODERS
                    and node.value not in RUN_KINDS and id(node) not in docs):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                names = {c.value for side in sides for c in ast.walk(side)
                         if isinstance(c, ast.Constant) and c.value in ENCODERS}
                if names and any("encoder" in ast.get_source_segment(source, side)
                                 for side in sides):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} compares an "
                                 f"encoder with {sorted(names)}")
    assert not found, "encoder names outside the encoder table:\n" + "\n".join(found)


def test_every_test_that_starts_snakemake_is_marked_workflow():
    """`pytest -m "not workflow"` is the quick loop: no test outside it starts Snakemake
    (directly, or through a helper of its module)."""
    unmarked = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        source = path.read_text()
        if "pytestmark = pytest.mark.workflow" in source:
            continue
        tree = ast.parse(source)
        starts = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)
                  and '"-m", "snakemake"' in ast.get_source_segment(source, n)}
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            body = ast.get_source_segment(source, node)
            marked = any("workflow" in ast.get_source_segment(source, d)
                         for d in node.decorator_list)
            if not marked and ('"-m", "snakemake"' in body
                               or any(f"{h}(" in body for h in starts - {node.name})):
                unmarked.append(f"{path.name}::{node.name}")
    assert not unmarked, f"start Snakemake but are not marked workflow: {unmarked}"
