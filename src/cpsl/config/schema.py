"""params.yaml: loading and validation.

Every stage calls :func:`load_params` first, so a typo in ``dvc exp run -S cp.etta=0.3`` or an
out-of-range value fails before any work, with a message naming the dotted key.

The schema below is the one place that lists every param, its type and its allowed range.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from cpsl.baselines import registry as baselines_registry
from cpsl.config.ablations import ALIASES
from cpsl.config.param_types import BOOL as _BOOL
from cpsl.config.param_types import STRING as _STR
from cpsl.config.param_types import Spec
from cpsl.config.param_types import choice as _choice
from cpsl.config.param_types import number as _num
from cpsl.config.rows import ROWS
from cpsl.errors import ParamsError


def _ablation_list(v) -> bool:
    return len(v) > 0 and all(isinstance(a, str) and a in ROWS for a in v) and len(set(v)) == len(v)


# train.* keys the demo may set for itself (demo.train): its ~100 training segments give 14 steps per epoch,
# where MOSI gives 160, so a CPU demo trains fewer epochs (params.yaml).
DEMO_TRAIN_KEYS = ("epochs", "lr", "lr_new_modules", "warmup_ratio")


def _demo_train(v) -> bool:
    return all(k in DEMO_TRAIN_KEYS for k in v)


# Seeds feed torch.manual_seed (64 bits, after the per-rank offset) and the GE generator (32 bits):
# 32 bits keeps every derived seed in range.
SEED_MAX = 2**32 - 1


def _seed_list(v) -> bool:
    return (len(v) > 0 and len(set(v)) == len(v)
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= SEED_MAX for s in v))


# The params section of execution settings (see SCHEMA).
EXECUTION = "execution"

SCHEMA: dict = {
    "dataset": _choice("demo", "mosi", "mosei"),
    "ablations": Spec((list,), _ablation_list, "a non-empty list of distinct row IDs among " + ", ".join(ROWS)),
    "data": {
        "mirror": Spec((str,), lambda v: bool(v.strip()), "a folder path or null", nullable=True),
        "max_seq_len": _num(4, 512, integer=True),
    },
    "demo": {
        "seed": _num(0, integer=True),
        "videos": _num(6, 10000, integer=True),
        "min_segments": _num(1, 1000, integer=True),
        "max_segments": _num(1, 1000, integer=True),
        "text_model": _STR,
        "train": Spec((dict,), _demo_train, "a mapping of train keys among " + ", ".join(DEMO_TRAIN_KEYS)
                      + " (they replace train.* when dataset is demo)"),
    },
    "text": {"model": _STR},
    "model": {
        "intermediate_dim": _num(1, integer=True),
        "fusion_dim": _num(1, integer=True),
        "fusion": _choice("gated", "concat", "sum"),
        "encoder_dropout": _num(0, 1, hi_open=True),
        "classifier_dropout": _num(0, 1, hi_open=True),
        "beta": _num(0),
        "pooling": _choice("cls", "mean"),
        "var_eps": _num(0, lo_open=True),
        "eval_norm": _choice("clamped", "running", "extremes", "batch"),  # cpsl.nn.normalize.NORM_MODES
    },
    "loss": {
        "task": _choice("l1", "mse"),
        "recon": _num(0),
        "uni": _num(0),
        "div": _num(0),
        "stat": _num(0),
    },
    "gm": {
        "alpha": _num(0),
        "start_epoch": _num(0, integer=True),
        "end_epoch": _num(0, integer=True),
        "eps": _num(0, lo_open=True),
        # the two choices the paper does not make; their defaults are the paper's Eq. 5 as written and the official
        # OGM-GE noise (cpsl.model.modulation), taken when a gm mapping given to the API leaves them out
        "coefficient": _choice("paper", "shifted", default="paper"),
        "ge_noise": _choice("unmodulated", "modulated", default="unmodulated"),
    },
    "cp": {"eta": _num(0, 1, lo_open=True, hi_open=True)},
    "train": {
        "epochs": _num(1, integer=True),
        "lr": _num(0, 1, lo_open=True),
        "lr_new_modules": Spec((int, float), lambda v: 0 < v <= 1, "a number in (0, 1] or null (= train.lr)",
                               nullable=True),
        "weight_decay": _num(0),
        "warmup_ratio": _num(0, 1, hi_open=True),
        "batch_size": _num(1, integer=True),
        "seeds": Spec((list,), _seed_list, "a non-empty list of distinct integers in [0, 4294967295]"),
        "bf16": _BOOL,
        "grad_clip": _num(0),
    },
    "eval": {"reliance_permutations": _num(0, 100, integer=True)},
    # HOW a stage runs, never WHAT it computes: no stage declares this section as a param (STAGE_PARAMS), so
    # changing it reruns nothing; runs record it (train_summary.json, metrics.json) and the run fingerprint and
    # the report's consistency check (cpsl.formats.run_identity) leave it out.
    EXECUTION: {
        "device": _choice("auto", "cpu", "cuda"),
        "nproc": _num(1, 1024, integer=True),
        "step": _choice("auto", "eager", "sync_free", "cuda_graph"),
        "optimizer_impl": _choice("foreach", "fused"),  # AdamW kernels: the same update up to float rounding
        "cuda_graph_scope": _choice("body", "step"),     # step: capturable AdamW inside the graph too
        "eval_batch_size": _num(1, integer=True),
        "download": {
            "retries": _num(1, 100, integer=True),
            "backoff_s": _num(0, 600),
            "timeout_s": _num(0, 3600, lo_open=True),
        },
    },
}

# Keys that moved into the execution section (issue 17): an old params file fails naming the new place.
MOVED_KEYS = {
    "data.download": "execution.download",
    "train.nproc": "execution.nproc",
    "train.device": "execution.device",
    "train.step": "execution.step",
    "eval.batch_size": "execution.eval_batch_size",
}
# the Table 1 baselines' sections (baselines.<name>.{mosi,mosei}), declared next to each baseline's row
SCHEMA["baselines"] = baselines_registry.schema(SCHEMA["train"])


def _validate(node: Any, schema: Any, path: str, source: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(node, Mapping):
            raise ParamsError(f"{source}: '{path}' must be a mapping of {sorted(schema)}, got {node!r}")
        unknown = sorted(set(node) - set(schema))
        if unknown:
            names = ", ".join(f"'{path + '.' if path else ''}{k}'" for k in unknown)
            raise ParamsError(f"{source}: unknown key {names} (allowed here: {', '.join(sorted(schema))})")
        missing = sorted(set(schema) - set(node))
        if missing:
            names = ", ".join(f"'{path + '.' if path else ''}{k}'" for k in missing)
            raise ParamsError(f"{source}: missing key {names}")
        for key, sub in schema.items():
            _validate(node[key], sub, f"{path}.{key}" if path else key, source)
        return
    spec: Spec = schema
    if node is None:
        if spec.nullable:
            return
        raise ParamsError(f"{source}: '{path}' must be {spec.expect}, got null")
    # bool is an int subclass in Python; never accept it for a number.
    if isinstance(node, bool) and bool not in spec.types:
        raise ParamsError(f"{source}: '{path}' must be {spec.expect}, got {node!r}")
    if not isinstance(node, spec.types):
        raise ParamsError(f"{source}: '{path}' must be {spec.expect}, got {type(node).__name__} {node!r}")
    # nan fails every range comparison silently (so .nan passed any range), inf passes open-ended ones
    if isinstance(node, float) and not math.isfinite(node):
        raise ParamsError(f"{source}: '{path}' must be a finite number ({spec.expect}), got {node!r}")
    if spec.check is not None and not spec.check(node):
        raise ParamsError(f"{source}: '{path}' must be {spec.expect}, got {node!r}")


def _refuse_moved_keys(params: Mapping, source: str) -> None:
    """An old params file (or ``-S train.nproc=2``) fails naming where each moved key lives now, before the
    missing execution section or the unknown key is reported without that hint."""
    moved = []
    for old, new in MOVED_KEYS.items():
        node = params
        for key in old.split("."):
            node = node.get(key, _ABSENT) if isinstance(node, Mapping) else _ABSENT
        if node is not _ABSENT:
            moved.append(f"'{old}' moved to '{new}'")
    if moved:
        raise ParamsError(f"{source}: unknown key: {'; '.join(moved)} (the execution section holds what changes "
                          f"how a stage runs, never its results; see docs/params.md)")


_ABSENT = object()


def _cross_checks(p: dict, source: str) -> None:

    aliased = [a for a in p["ablations"] if a in ALIASES]
    if aliased:
        raise ParamsError(
            f"{source}: 'ablations' lists {', '.join(aliased)}: the paper's duplicate rows are trained once, under "
            f"{', '.join(ALIASES[a] for a in aliased)} (same switches), and reported under both labels; list that ID")
    if p["demo"]["min_segments"] > p["demo"]["max_segments"]:
        raise ParamsError(f"{source}: 'demo.min_segments' ({p['demo']['min_segments']}) exceeds 'demo.max_segments'")
    if p["gm"]["start_epoch"] > p["gm"]["end_epoch"]:
        raise ParamsError(f"{source}: 'gm.start_epoch' ({p['gm']['start_epoch']}) exceeds 'gm.end_epoch'")
    batches = {"train.batch_size": p["train"]["batch_size"]}
    batches.update({f"baselines.{name}.{ds}.train.batch_size": section[ds]["train"]["batch_size"]
                    for name, section in p["baselines"].items() for ds in baselines_registry.DATASETS})
    for key, batch in batches.items():
        if batch % p[EXECUTION]["nproc"]:
            raise ParamsError(f"{source}: '{key}' ({batch}) is the global batch and must be divisible by "
                              f"'execution.nproc' ({p[EXECUTION]['nproc']})")


def validate_params(params: Mapping, source: str = "params") -> dict:
    """Validate a params mapping against :data:`SCHEMA`; return a deep copy. With ``dataset: demo`` the
    returned ``train`` section has ``demo.train`` applied (validated like any train value)."""
    params = copy.deepcopy(dict(params))
    _refuse_moved_keys(params, source)
    _validate(params, SCHEMA, "", source)
    if params["dataset"] == "demo" and params["demo"]["train"]:
        params["train"].update(params["demo"]["train"])
        _validate(params["train"], SCHEMA["train"], "train", f"{source} (with demo.train applied)")
    _cross_checks(params, source)
    return params


# Deepest nesting a params file may have: params.yaml itself is 6 levels deep (baselines.mag.mosi.train.seeds[0]).
# PyYAML composes nodes recursively: 100k nested `[` was a 3,000-line RecursionError (Snakemake: 990 lines).
MAX_DEPTH = 32


class YamlShapeError(ValueError):
    """Valid YAML that no params file may hold: nesting beyond MAX_DEPTH, a key given twice."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that floats in every standard form are floats: PyYAML needs a dot
    and a signed exponent, so ``2e-05`` (what ``dvc exp run -S train.lr=2e-5`` writes) or ``1e3`` were strings.
    Nesting is bounded while the document is composed, before the recursion could run deep."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlShapeError(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1}, column "
                                     f"{mark.column + 1}); a params file is a few levels of sections")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _refuse_duplicate_keys(root: yaml.Node) -> None:
    """A key given twice in one mapping: YAML loaders keep the last one silently (PyYAML, so cpsl and Snakemake),
    DVC refuses the file; so the engines would disagree on the params. Name the key and both lines."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                    continue
                dotted = f"{path}.{key.value}" if path else key.value
                line = key.start_mark.line + 1
                if (key.tag, key.value) in seen:
                    raise YamlShapeError(f"duplicate key '{dotted}' (lines {seen[key.tag, key.value]} and {line}): "
                                         f"YAML readers keep the last silently and DVC refuses the file; keep one")
                seen[key.tag, key.value] = line
                stack.append((value, dotted))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))


def parse_yaml(text: str):
    """Parse params YAML (a file or one ``--set`` value) with :class:`_Loader`; raises :class:`YamlShapeError`
    for nesting beyond MAX_DEPTH or a duplicate key, yaml.YAMLError for invalid YAML."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def read_params_file(path: str | Path = "params.yaml") -> dict:
    """The params file's values as written (not validated, demo.train not applied), read with :func:`parse_yaml`:
    what cpsl validates and what the Snakefile gives its rules as ``config`` (one loader for both engines' view)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (pass --params path/to/params.yaml; the project root "
                          f"is the folder of that file)")
    try:
        raw = parse_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {_one_line(exc)}") from exc
    except YamlShapeError as exc:
        raise ParamsError(f"{path}: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{path}: must be a mapping of {sorted(SCHEMA)}, got a {type(raw).__name__}")
    return dict(raw)


def load_params(path: str | Path = "params.yaml", overrides=()) -> dict:
    """Read, apply ``key=value`` overrides to the FILE's values (so demo.train is applied after them, once),
    validate."""
    raw = read_params_file(path)
    if overrides:
        return apply_overrides(raw, list(overrides), str(path))
    return validate_params(raw, str(path))


def set_dotted(params: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict (used by CLI overrides and tests); unknown keys stay unknown
    so that validation afterwards names them."""
    node = params
    *parents, leaf = dotted.split(".")
    if not all(dotted.split(".")):
        raise ParamsError(f"override key {dotted!r} has an empty part")
    for i, key in enumerate(parents):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            # e.g. cp.eta.x=1: cp.eta is a value, not a section
            raise ParamsError(f"override key {dotted!r}: '{'.'.join(parents[:i + 1])}' is a value, not a section")
    node[leaf] = value


def apply_overrides(params: Mapping, overrides: list[str], source: str = "params") -> dict:
    """Apply ``key=value`` strings (value parsed as YAML, like ``dvc exp run -S``) then validate. ``params``
    are the file's values (cpsl's CLI passes them through load_params): applied to params that already had
    demo.train applied, a switch away from the demo would keep the demo's schedule."""
    out = copy.deepcopy(dict(params))
    for item in overrides:
        set_dotted(out, *parse_override(item))
    return validate_params(out, f"{source} (with overrides {overrides})")


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value parsed as YAML), as `cpsl -S` and `dvc exp run -S` take it."""
    if "=" not in item:
        raise ParamsError(f"override {item!r} must look like key=value")
    key, text = item.split("=", 1)
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {item!r}: value is not valid YAML: {_one_line(exc)}") from exc
    except YamlShapeError as exc:
        raise ParamsError(f"override {item[:60]!r}: value: {exc}") from exc
    return key.strip(), value


# Params each stage depends on (dotted prefixes). The Snakefile and dvc.yaml declare exactly these,
# so that changing e.g. cp.eta reruns training and what follows, never a data stage. The execution section is
# in no list: how a stage runs never makes its outputs out of date.
STAGE_PARAMS: dict[str, list[str]] = {
    "prepare": ["dataset", "data.mirror", "demo.seed", "demo.videos", "demo.min_segments", "demo.max_segments"],
    "align": ["dataset", "data.max_seq_len", "text.model", "demo.text_model"],
    "train": ["dataset", "text.model", "demo.text_model", "demo.train", "model", "loss", "gm", "cp", "train",
              "baselines"],
    "evaluate": ["dataset", "eval", "train.batch_size"],
    "report": ["dataset", "ablations", "train.seeds"],
}


def stage_slice(params: Mapping, stage: str, missing_ok: bool = False) -> dict:
    """{dotted key: value} of the params ``stage`` reads (STAGE_PARAMS): what identifies its work. ``missing_ok``:
    leave out the keys ``params`` lacks (a row's run params hold only the sections it reads: cpsl.config.rows)."""
    out = {}
    for dotted in STAGE_PARAMS[stage]:
        node = params
        try:
            for key in dotted.split("."):
                node = node[key]
        except KeyError:
            if missing_ok:
                continue
            raise
        out[dotted] = node
    return out
