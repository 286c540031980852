"""The package's import graph (cpsl.runtime.deps.import_graph: module-level AND function-level imports, so a lazy
import counts too) has no circle, points down the layers of docs/DESIGN.md, and no stage imports another stage's
modules. Was: report/tables.py <-> report/table1.py, hidden by a lazy import; report importing evaluate/learnt.py;
config.py, rows.py and model/zoo.py importing the baselines while the baselines imported model/ and train/ back."""
from __future__ import annotations

import shutil

from train_helpers import REPO

from cpsl.runtime import deps

# each stage's entry module (stages/<stage>.py) and the package of its own internals
STAGE_INTERNALS = {"prepare": "data", "align": "align", "train": "train", "evaluate": "evaluate", "report": "report"}
STAGE_PACKAGES = set(STAGE_INTERNALS.values())

# docs/DESIGN.md's layers, bottom up: a module imports only modules of its own layer or below. train/ is the generic
# kit the rows' code builds on (recipes subclass train.recipe.Recipe); the data/align/evaluate/report internals sit
# above the rows' code (evaluate rebuilds a row's model through nn.zoo); stages/ call them; cli/docs_params on top.
LAYERS = (
    ("cpsl", "errors"),
    ("config",),
    ("runtime",),
    ("formats",),
    ("metrics",),
    ("nn",),
    ("train",),
    ("model", "baselines"),
    ("data", "align", "evaluate", "report"),
    ("stages",),
    ("cli", "docs_params"),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def is_row_declaration(module: str) -> bool:
    """A baseline's torch-free declaration (the registry, BaselineSpec, each folder's spec.py and __init__.py): the
    config layer, kept in the baseline's own folder so that a baseline is one folder (issue 23)."""
    parts = module.split(".")
    return parts[:2] == ["cpsl", "baselines"] and (
        len(parts) == 2 or parts[2] in ("registry", "spec") or (len(parts) == 3) or parts[3:] == ["spec"])


def layer(module: str) -> int:
    if is_row_declaration(module):
        return RANK["config"]
    parts = module.split(".")
    return RANK[parts[1] if len(parts) > 1 else "cpsl"]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} -> {t}" for m in sorted(graph) for t in sorted(graph[m]) if layer(t) > layer(m)]


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
    assert {"cpsl.cli", "cpsl.report.table1", "cpsl.metrics.av_learnt"} <= set(graph)  # the whole package was read
    assert "cpsl.report.table_parts" in graph["cpsl.report.table1"]
    assert circles(graph) == [], "import circles (break each by moving what both need into a module both import)"


def stage_of(module: str) -> str | None:
    """The stage whose code ``module`` is: its entry module (stages/<stage>.py) or its internals package."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "stages":
        return STAGE_INTERNALS[parts[2]]
    return parts[1] if len(parts) >= 2 and parts[1] in STAGE_PACKAGES else None


def stage_crossings(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each module of one stage (its stages/ file or its package) importing another stage's module."""
    owner = {m: stage_of(m) for m in graph if stage_of(m) is not None}
    return [f"{m} -> {t}" for m in sorted(graph) for t in sorted(graph[m])
            if m in owner and t in owner and owner[m] != owner[t]]


def test_every_module_has_a_layer_and_imports_point_down():
    graph = deps.import_graph()
    assert all(layer(m) >= 0 for m in graph)  # a new top-level folder must be placed in LAYERS (KeyError otherwise)
    assert upward_imports(graph) == [], "an import runs up the layers (docs/DESIGN.md): move the shared part down"


def test_an_upward_import_is_found(tmp_path):
    """The layer check bites: the run-folder format importing the train kit, lazily."""
    pkg = tmp_path / "cpsl"
    shutil.copytree(REPO / "src" / "cpsl", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    fmt = pkg / "formats" / "run_folder.py"
    fmt.write_text(fmt.read_text() + "\n\ndef _late():\n    from cpsl.train import checkpoint  # noqa: F401\n")
    assert "cpsl.formats.run_folder -> cpsl.train.checkpoint" in upward_imports(deps.import_graph(pkg))


def test_no_stage_imports_another_stages_modules():
    assert stage_crossings(deps.import_graph()) == [], "move what two stages share to the package level"


def test_a_lazy_import_that_closes_a_circle_is_found(tmp_path):
    """The check bites: table_parts.py importing table1 inside a function (as tables.py once did) is a circle."""
    pkg = tmp_path / "cpsl"
    shutil.copytree(REPO / "src" / "cpsl", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    parts = pkg / "report" / "table_parts.py"
    parts.write_text(parts.read_text() + "\n\ndef _late():\n    from cpsl.report import table1  # noqa: F401\n")
    assert circles(deps.import_graph(pkg)) == [["cpsl.report.table1", "cpsl.report.table_parts"]]
    relative = pkg / "metrics" / "av_learnt.py"  # a relative import is resolved too
    relative.write_text(relative.read_text() + "\n\ndef _late():\n    from ..report import table1  # noqa: F401\n")
    found = circles(deps.import_graph(pkg))
    assert ["cpsl.metrics.av_learnt", "cpsl.report.table1", "cpsl.report.table_parts"] in found
    evaluate = pkg / "stages" / "evaluate.py"  # a stage reaching into another's modules, lazily
    evaluate.write_text(evaluate.read_text() + "\n\ndef _late():\n    from cpsl.report.stats import describe  # noqa\n")
    assert stage_crossings(deps.import_graph(pkg)) == ["cpsl.stages.evaluate -> cpsl.report.stats"]


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


# The package's only function-level imports of its own modules: the CLI imports one stage per subcommand
# (cpsl.runtime.deps follows a stage's imports from its entry module, not the CLI's other branches, and `cpsl --help`
# loads no torch).
ALLOWED_LAZY = {"cpsl.cli": None}


def lazy_imports(pkg) -> dict[str, set[str]]:
    """module -> the cpsl modules it imports inside a function or class (not at module level)."""
    import ast

    found: dict[str, set[str]] = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = path.relative_to(pkg).with_suffix("").parts
        module = ".".join(("cpsl", *(parts[:-1] if parts[-1] == "__init__" else parts)))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in top and (node.module or "").startswith("cpsl"):
                found.setdefault(module, set()).add(node.module)
            elif isinstance(node, ast.Import) and id(node) not in top:
                found.setdefault(module, set()).update(a.name for a in node.names if a.name.startswith("cpsl"))
    return {m: s for m, s in found.items() if s}


def test_the_only_lazy_imports_are_the_documented_ones():
    found = lazy_imports(deps.package_dir())
    unexpected = {m: s for m, s in found.items()
                  if m not in ALLOWED_LAZY or (ALLOWED_LAZY[m] is not None and not s <= ALLOWED_LAZY[m])}
    assert unexpected == {}, "import at module level, or document the reason in ALLOWED_LAZY"
    assert "cpsl.stages.train" in found["cpsl.cli"]  # the check reads function bodies
