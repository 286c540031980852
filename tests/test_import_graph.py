"""The package's import graph has no circle (cpsl.deps.import_graph: module-level AND function-level imports, so a
lazy import that closes a circle counts too), and no stage imports another stage's modules (docs/DESIGN.md). Was:
report/tables.py <-> report/table1.py, hidden by a lazy import; report importing evaluate/learnt.py."""
from __future__ import annotations

import shutil

from train_helpers import REPO

from cpsl import deps

# the packages of the five stages (cpsl.deps.ENTRY): prepare lives in data/
STAGE_PACKAGES = {entry.split(".")[1] for entry in deps.ENTRY.values()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted: every import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_imports_in_one_direction():
    graph = deps.import_graph()
    assert {"cpsl.cli", "cpsl.report.table1", "cpsl.av_learnt"} <= set(graph)  # the whole package was read
    assert "cpsl.report.table_parts" in graph["cpsl.report.table1"]
    assert circles(graph) == [], "import circles (break each by moving what both need into a module both import)"


def stage_crossings(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each module of one stage's package importing a module of another stage's package."""
    stage_of = {m: m.split(".")[1] for m in graph if m.count(".") >= 1 and m.split(".")[1] in STAGE_PACKAGES}
    return [f"{m} -> {t}" for m in sorted(graph) for t in sorted(graph[m])
            if m in stage_of and t in stage_of and stage_of[m] != stage_of[t]]


def test_no_stage_imports_another_stages_modules():
    assert stage_crossings(deps.import_graph()) == [], "move what two stages share to the package level"


def test_a_lazy_import_that_closes_a_circle_is_found(tmp_path):
    """The check bites: table_parts.py importing table1 inside a function (as tables.py once did) is a circle."""
    pkg = tmp_path / "cpsl"
    shutil.copytree(REPO / "src" / "cpsl", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    parts = pkg / "report" / "table_parts.py"
    parts.write_text(parts.read_text() + "\n\ndef _late():\n    from cpsl.report import table1  # noqa: F401\n")
    assert circles(deps.import_graph(pkg)) == [["cpsl.report.table1", "cpsl.report.table_parts"]]
    relative = pkg / "av_learnt.py"  # a relative import is resolved too
    relative.write_text(relative.read_text() + "\n\ndef _late():\n    from .report import table1  # noqa: F401\n")
    assert ["cpsl.av_learnt", "cpsl.report.table1", "cpsl.report.table_parts"] in circles(deps.import_graph(pkg))
    evaluate = pkg / "evaluate" / "stage.py"  # a stage reaching into another's modules, lazily
    evaluate.write_text(evaluate.read_text() + "\n\ndef _late():\n    from cpsl.report.stats import describe  # noqa\n")
    assert stage_crossings(deps.import_graph(pkg)) == ["cpsl.evaluate.stage -> cpsl.report.stats"]


def test_no_row_model_is_imported_by_the_kit_and_baselines_import_no_cpsl_model():
    """Issue 23: model/ (CP+SL) and train/ import no baseline module; a baseline imports no model/ module (the
    blocks both use live in cpsl/nn/), so an edit of one row's model reruns only that row's jobs."""
    graph = deps.import_graph()
    baseline_folders = {m for m in graph if m.startswith("cpsl.baselines.") and m.count(".") >= 3
                        or m in {"cpsl.baselines.mag", "cpsl.baselines.ithp", "cpsl.baselines.mmim",
                                 "cpsl.baselines.selfmm"}}
    assert {"cpsl.baselines.mmim.model", "cpsl.baselines.mag.recipe"} <= baseline_folders
    wrong = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
             if (a.startswith(("cpsl.model.", "cpsl.train.", "cpsl.nn.", "cpsl.evaluate.")) and b in baseline_folders)
             or (a in baseline_folders and (b == "cpsl.model" or b.startswith("cpsl.model.")))]
    assert wrong == []
    # nor does the shared layer or the generic kit import the CP+SL model
    assert [f"{a} -> {b}" for a, t in graph.items() for b in t
            if a.startswith(("cpsl.nn.", "cpsl.train.")) and b.startswith("cpsl.model")] == []
