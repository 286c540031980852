"""What the docs name must exist: params keys, ``cpsl`` subcommands and flags, repository paths.

A scanner, not a test (tests/test_docs_truth.py runs it on the docs and on planted false mentions):

- param keys: dotted names inside backticks (and after ``-S``/``--set`` in fenced code) whose first part is a section
  of cpsl.config.schema.SCHEMA (``cp.eta``, ``train.lr_new_modules: 1e-3``, ``baselines.<name>.{mosi,mosei}``,
  ``demo.seed/videos``) must be in the schema or in params.yaml; ``<placeholder>``, ``{a,b}``, ``*`` and ``a/b``
  alternatives are understood. A key that does not exist passes only on a line that quotes it in an error message
  ('cp.eta.x') or says "unknown key": the rows of docs/hostile_inputs.md that show what a bad key gets.
- ``cpsl <subcommand> --flag`` (also ``python -m cpsl.cli ...``) inside backticks or fenced code: the subcommand
  must be one of cpsl.cli.build_parser()'s, every flag up to the end of that command one of its options. Where the
  word is followed by ":" it is a message (``cpsl train: error: ...``), not a command; a word that is no subcommand
  is an offence where it stands as a command (start of the code, after ``&&``/``|``, or before a flag), not
  inside a quoted sentence (``cpsl never writes through a link``).
- repository paths (``src/``, ``tests/``, ``docs/``, ``workflow/``, ``benchmarks/``, ``.ci/`` and the root files)
  anywhere in the text, and relative markdown link targets: must exist (a glob for placeholders; ``tests/m.attr``
  names m.py); a ``tests/x.py::test_name`` must define that test (a name cut with "…" is a prefix).
"""
from __future__ import annotations

import argparse
import functools
import glob
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from cpsl.cli import build_parser
from cpsl.config.param_types import Spec
from cpsl.config.schema import DEMO_TRAIN_KEYS, SCHEMA, read_params_file

ROOT = Path(__file__).resolve().parents[1]
FILE_SUFFIXES = {"h5", "json", "csv", "md", "pt", "py", "yaml", "yml", "png", "csd", "lock", "txt", "smk", "cff",
                 "sh", "toml", "html", "log", "lst", "safetensors", "bin"}


@dataclass(frozen=True)
class Offender:
    file: str
    line: int
    kind: str
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind} {self.text!r}: {self.why}"


# ---- where to look ------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*```")
_INLINE = re.compile(r"(`+)(.+?)\1")


def code_spans(text: str):
    """(line number, code, fenced) for every inline code span and every line of a fenced block."""
    fenced = False
    for no, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            yield no, line, True
        else:
            for m in _INLINE.finditer(line):
                yield no, m.group(2), False


# ---- params -------------------------------------------------------------------------------------------------

_SECTIONS = [k for k, v in SCHEMA.items() if isinstance(v, dict)]
_PARAM = re.compile(r"(?<![\w./:<-])(?:" + "|".join(_SECTIONS) + r")\.[A-Za-z0-9_.<>{},/*]*[A-Za-z0-9_>}*]")
_SET = re.compile(r"(?:-S|--set)\s+'?\"?([A-Za-z0-9_.<>{}]+)=")


def _alternatives(dotted: str) -> list[list[str]]:
    """``demo.seed/videos`` -> [demo, seed|videos]; ``a.{b,c}`` -> [a, b|c]: the parts, each a list of options."""
    parts = []
    for part in re.split(r"\.(?![^{]*\})", dotted):
        if part.startswith("{") and part.endswith("}"):
            parts.append(part[1:-1].split(","))
        else:
            parts.append(part.split("/"))
    return parts


def _exists(tree, parts: list[str]) -> bool:
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if isinstance(tree, Spec) or not isinstance(tree, dict):
        return False
    if head == "*" or re.fullmatch(r"<[^>]*>", head):
        return any(_exists(sub, rest) for sub in tree.values()) if rest else bool(tree)
    return head in tree and _exists(tree[head], rest)


def param_exists(dotted: str, values: dict) -> bool:
    for combo in product(*_alternatives(dotted)):
        parts = list(combo)
        if parts[:2] == ["demo", "train"] and len(parts) == 3 and parts[2] in DEMO_TRAIN_KEYS:
            continue  # demo.train is a mapping of these keys (its default sets only epochs)
        if not (_exists(SCHEMA, parts) or _exists(values, parts)):
            return False
    return True


def _param_names(code: str, fenced: bool) -> list[str]:
    if fenced:
        return _SET.findall(code)
    names = []
    for m in _PARAM.finditer(code):
        name = m.group(0).rstrip(".,")
        if name.rsplit(".", 1)[-1].lower() in FILE_SUFFIXES:
            continue  # demo.h5, eval.py: a file, not a param
        names.append(name)
    return names


# ---- cpsl commands ------------------------------------------------------------------------------------------

_CPSL = re.compile(r"(?<![\w./-])cpsl(?:\.cli)?\s+(<[^>]+>|[a-z][a-z-]*)(:?)([^;&|#`]*)")
# where a command starts: the start of the code, `&&`, `|`, `(`, `python -m`, a `$ ` prompt (not `;`: messages
# join sentences with it, "...; cpsl never writes through a link")
_COMMAND_START = re.compile(r"(?:^|&&|\||\(|\$ |-m )\s*(?:[A-Z_]+=\S*\s+)*$")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


STAGES = ("prepare", "align", "train", "evaluate", "report")


@functools.lru_cache(maxsize=1)
def cli_options() -> tuple[set[str], dict[str, set[str]]]:
    """The top-level options and {subcommand: its options} of cpsl.cli.build_parser()."""
    parser = build_parser()
    top = {o for a in parser._actions for o in a.option_strings}
    subs = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                subs[name] = {o for a in sub._actions for o in a.option_strings}
    return top, subs


def cli_offences(code: str) -> list[tuple[str, str]]:
    """(mention, why) for every ``cpsl <sub> --flag`` in ``code`` that build_parser() would refuse."""
    top, subs = cli_options()
    common = set.intersection(*(opts for name, opts in subs.items() if name in STAGES))
    out = []
    for m in _CPSL.finditer(code):
        sub, colon, rest = m.group(1), m.group(2), m.group(3)
        if colon:
            if sub not in subs and not sub.startswith("<"):
                out.append((f"cpsl {sub}:", f"no such subcommand (cpsl has {', '.join(sorted(subs))})"))
            continue  # a message: `cpsl train: error: ...`
        if sub.startswith("<"):
            allowed = common
        elif sub in subs:
            allowed = subs[sub]
        else:
            as_command = _COMMAND_START.search(code[:m.start()]) or _FLAG.match(rest.lstrip())
            if as_command:
                out.append((f"cpsl {sub}", f"no such subcommand (cpsl has {', '.join(sorted(subs))})"))
            continue
        for flag in _FLAG.findall(rest):
            if flag not in allowed and flag not in top:
                out.append((f"cpsl {sub} {flag}", f"no such option of cpsl {sub}"))
    # `cpsl --version`, `cpsl --help`
    for m in re.finditer(r"(?<![\w./-])cpsl\s+(--[a-z][a-z0-9-]*)", code):
        if m.group(1) not in top:
            out.append((f"cpsl {m.group(1)}", "no such top-level option"))
    return out


# ---- repository paths ---------------------------------------------------------------------------------------

_PATH = re.compile(r"(?<![\w./~$-])(?:src|tests|docs|workflow|benchmarks|\.ci)/[A-Za-z0-9_./*<>{},-]*[A-Za-z0-9_*>}/]"
                   r"(?:::[A-Za-z0-9_]+)?")
_ROOT_FILES = re.compile(r"(?<![\w./-])(?:README\.md|LICENSE|CITATION\.cff|Snakefile|params\.yaml|dvc\.yaml|"
                         r"pyproject\.toml)(?![\w.-])")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _expand(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [x for alt in m.group(1).split(",") for x in _expand(pattern[:m.start()] + alt + pattern[m.end():])]


def _hits(pattern: str, base: Path) -> list[str]:
    if any(c in pattern for c in "*?["):
        return glob.glob(str(base / pattern))
    if (base / pattern).exists():
        return [str(base / pattern)]
    module, dot, _attr = pattern.rpartition(".")
    if dot and "/" not in _attr and (base / f"{module}.py").is_file():
        return [str(base / f"{module}.py")]  # tests/train_helpers.planted_caches: an attribute of a module
    return []


def path_problem(mention: str, base: Path = ROOT, prefix: bool = False) -> str | None:
    """None when the path exists (placeholders as globs), else why not. ``prefix``: the test name was cut short."""
    path, _, test = mention.partition("::")
    for one in _expand(path):
        hits = _hits(re.sub(r"<[^>]*>", "*", one), base)
        if not hits:
            return "no such file or folder"
        name = re.escape(test) + (r"\w*" if prefix else "")
        if test and not any(re.search(rf"^\s*(?:async )?def {name}\(", Path(h).read_text(errors="replace"), re.M)
                            for h in hits if h.endswith(".py")):
            return f"{one} defines no {test}{'…' if prefix else ''}"
    return None


# ---- the scan -----------------------------------------------------------------------------------------------

def scan_text(text: str, name: str = "<text>", doc_dir: Path = ROOT, values: dict | None = None) -> list[Offender]:
    """Every false mention in one markdown text; ``doc_dir``: the folder its relative links start from."""
    values = read_params_file(ROOT / "params.yaml") if values is None else values
    lines = text.splitlines()
    out: list[Offender] = []
    seen: set[tuple] = set()

    def add(no, kind, mention, why):
        if (no, kind, mention) not in seen:
            seen.add((no, kind, mention))
            out.append(Offender(name, no, kind, mention, why))

    for no, code, fenced in code_spans(text):
        for key in _param_names(code, fenced):
            if f"'{key}'" in lines[no - 1] or "unknown key" in lines[no - 1]:
                continue  # a row showing what a bad key gets (docs/hostile_inputs.md)
            if not param_exists(key, values):
                add(no, "param", key, "not in the schema (src/cpsl/config/schema.py) nor in params.yaml")
        for mention, why in cli_offences(code):
            add(no, "command", mention, why)
    for no, line in enumerate(lines, 1):
        for m in _PATH.finditer(line):
            cut = line[m.end():m.end() + 3] in ("…", "...") or line[m.end():m.end() + 1] == "…"
            why = path_problem(m.group(0).rstrip("."), prefix=cut)
            if why:
                add(no, "path", m.group(0), why)
        for m in _ROOT_FILES.finditer(line):
            if not (ROOT / m.group(0)).exists():
                add(no, "path", m.group(0), "no such file")
        for m in _LINK.finditer(line):
            target = m.group(1)
            if re.match(r"[a-z]+:", target) or target.startswith("/"):
                continue  # a URL or an absolute path: not the repository's
            if not (doc_dir / target).exists():
                add(no, "link", target, f"no such file relative to {doc_dir.relative_to(ROOT) or '.'}")
    return out


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def scan_docs() -> list[Offender]:
    values = read_params_file(ROOT / "params.yaml")
    out = []
    for path in doc_files():
        if path.exists():
            out += scan_text(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), path.parent, values)
    return out


if __name__ == "__main__":
    for offender in scan_docs():
        print(offender)
