"""The ``cpsl`` command: one subcommand per pipeline stage.

    cpsl prepare | align | train | evaluate | report   [--params params.yaml] [--set key=value ...]
    cpsl deps [STAGE] [--write-dvc | --check-dvc]     the package files each stage runs (cpsl.runtime.deps)

Every subcommand validates params.yaml before doing any work. Snakefile and dvc.yaml call only these.

The project root is the folder of the params file: the stages' relative paths (data/, results/, reports/, a
relative data.mirror or text model folder) resolve there, wherever the command is run from; the path
arguments given on the command line (--out, --raw, --data, --run, --results) are relative to the caller's
folder, as usual.

Exit codes: 0 done, 1 an input or environment problem the user can fix (one line naming the file/key/segment),
2 invalid params, arguments or CPSL_* environment variables, 3 collapse guard (train), 128+N interrupted by signal
N (train).
``--debug`` shows the traceback instead of the one line.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cpsl.config.env_vars import EnvVarError, check_environment
from cpsl.config.schema import SEED_MAX, ParamsError, load_params
from cpsl.errors import WRITE_ELSEWHERE, PipelineError, describe_os_error
from cpsl.runtime.engine_guard import stage_guard
from cpsl.runtime.io_utils import remove_stale_temporaries

EXIT_USER_ERROR = 1
EXIT_PARAMS = 2
PATH_ARGS = ("out", "raw", "data", "run", "results")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param for this call, e.g. --set cp.eta=0.3 (validated like the file)",
    )
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")


DESCRIPTION = """\
The stages of the CP+SL pipeline: prepare -> align -> train -> evaluate -> report.
Each stage validates params.yaml (and any --set) before any work; Snakefile and dvc.yaml call only these."""

EPILOG = """\
exit codes: 0 done, 1 an input or environment problem (one line naming the file, key or segment),
2 invalid params, arguments or CPSL_* variables, 3 collapse guard (train), 128+N stopped by signal N (train).

examples:
  cpsl prepare && cpsl align                         # raw .csd files, then the HDF5 cache
  cpsl train --ablation A6 --seed 0 --set cp.eta=0.3 # one run, with a param changed for this call
  cpsl <stage> --help                                # a stage's options and an example"""


def _sub(sub, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose help has a description and an example (plain text, shown as written)."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from cpsl import __version__

    parser = argparse.ArgumentParser(prog="cpsl", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cpsl {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = _sub(sub, "prepare", "download (or copy from a mirror, or generate the demo) the raw .csd files",
             "cpsl prepare --set data.mirror=/data/cmu-mosi   # copy from .csd files you already have")
    _common(p)
    p.add_argument("--out", help="output folder (default data/raw/<dataset>)")

    p = _sub(sub, "align", "word-align features, expand to subwords, pad, cache to HDF5",
             "cpsl align   # data/raw/<dataset>/ -> data/processed/<dataset>.h5")
    _common(p)
    p.add_argument("--raw", help="raw folder (default data/raw/<dataset>)")
    p.add_argument("--out", help="output .h5 (default data/processed/<dataset>.h5)")

    p = _sub(sub, "train", "train one (row, seed) run; spawns torchrun when execution.nproc > 1",
             "cpsl train --ablation A6 --seed 0   # -> results/<dataset>/A6-seed0/")
    _common(p)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--ablation", help="row ID: a Table 2 ID, T0 or a Table 1 baseline such as MAG "
                                      "(default: the first of params 'ablations')")
    p.add_argument("--data", help="cached .h5 (default data/processed/<dataset>.h5)")
    p.add_argument("--out", help="run folder (default results/<dataset>/<ablation>-seed<k>)")

    p = _sub(sub, "evaluate", "metrics of the validation-selected checkpoint on valid and test",
             "cpsl evaluate --run results/demo/A6-seed0   # writes metrics.json, predictions.csv there")
    _common(p)
    p.add_argument("--run", required=True, help="run folder written by 'cpsl train'")
    p.add_argument("--data", help="cached .h5 (default data/processed/<dataset>.h5)")

    p = _sub(sub, "report", "aggregate seeds, paired tests, Tables 1-2 and Figures 2-3",
             "cpsl report --table1   # -> reports/<dataset>/ (T0, A6 and the Table 1 baselines too)")
    _common(p)
    p.add_argument("--results", help="results folder (default results/<dataset>)")
    p.add_argument("--out", help="reports folder (default reports/<dataset>)")
    p.add_argument("--grid", action="store_true",
                   help="report the whole Table 2 grid plus 'ablations' (what `snakemake --config grid=true` trains)")
    p.add_argument("--table1", action="store_true",
                   help="report T0, A6 and every Table 1 baseline too (what `snakemake --config table1=true` trains)")
    p.add_argument("--strict", action="store_true",
                   help="a configured run without metrics.json is an error (default: a warning naming it)")

    p = _sub(sub, "deps", "the package files each stage runs; --write-dvc puts them into dvc.yaml",
             "cpsl deps train   # one file per line: what a code change must touch to rerun train")
    p.add_argument("stages", nargs="*", help="stages to list (default: all)")
    p.add_argument("--row", metavar="ROW", help="list a job of this row (train/evaluate: the kit + the row's own code)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write-dvc", metavar="DVC_YAML", nargs="?", const="dvc.yaml",
                      help="rewrite the code deps of every stage in this dvc.yaml and its workflow/row_code links")
    mode.add_argument("--check-dvc", metavar="DVC_YAML", nargs="?", const="dvc.yaml",
                      help="exit 1 when this dvc.yaml's code deps or workflow/row_code differ from the import graph")
    return parser


def _deps(args: argparse.Namespace) -> int:
    from cpsl.runtime import deps

    for name in ("write_dvc", "check_dvc"):
        target = getattr(args, name)
        if target:
            path = Path(target)
            text = path.read_text()
            # the repository of that dvc.yaml: its own src/cpsl, not necessarily the running package
            root = path.resolve().parent
            rendered = deps.render_dvc(text, root=root)
            if name == "write_dvc":
                if rendered != text:
                    path.write_text(rendered)
                deps.write_row_code(root)
                return 0
            if rendered != text:
                print(f"cpsl deps: {path}: code deps differ from the import graph; run `cpsl deps --write-dvc`",
                      file=sys.stderr)
                return 1
            stale = deps.row_code_stale(root)
            if stale:
                print(f"cpsl deps: {root / deps.ROW_CODE_DIR}: {stale[0]} ({len(stale)} difference(s)) from the "
                      "import graph; run `cpsl deps --write-dvc`", file=sys.stderr)
                return 1
            return 0
    for stage in args.stages or deps.STAGES:
        files = deps.row_files(stage, args.row) if args.row else deps.stage_files(stage)
        for path in files:
            print(f"{stage}\t{path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage == "deps":
        return _deps(args)
    here = os.getcwd()
    try:
        return _main(args)
    finally:
        os.chdir(here)  # main() is also called in-process (tests, torchrun workers)


def _fail(args: argparse.Namespace, message: str, code: int, label: str | None = None) -> int:
    if args.debug:
        raise  # noqa: PLE0704 - re-raise the exception being handled, with its traceback
    label = label or ("invalid params" if code == EXIT_PARAMS else "error")
    # one line: a message that carries a newline (e.g. from a library) must not look like a traceback
    print(f"cpsl {args.stage}: {label}: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _main(args: argparse.Namespace) -> int:
    try:
        check_environment()  # CPSL_* variables, like params: before any work
    except EnvVarError as exc:
        return _fail(args, str(exc), EXIT_PARAMS, "invalid environment")
    try:
        _to_project_root(args)
        params = load_params(args.params, overrides=args.overrides)
        _check_args(args, params)
    except ParamsError as exc:
        return _fail(args, str(exc), EXIT_PARAMS)

    try:
        with stage_guard():  # one workflow run per project: busy while a Snakemake (not this job's own) runs
            return _dispatch(args, params)
    except ParamsError as exc:
        return _fail(args, str(exc), EXIT_PARAMS)
    except PipelineError as exc:
        # A problem with the user's inputs: one line naming the file/key/segment, no traceback.
        return _fail(args, str(exc), EXIT_USER_ERROR)
    except OSError as exc:
        # read-only folder, full disk, missing permission, ...: the environment, not a bug
        return _fail(args, describe_os_error(exc, write_elsewhere(args.stage)) + " (--debug shows the traceback)",
                     EXIT_USER_ERROR)


def stage_flags(stage: str) -> set[str]:
    """The option strings the ``stage`` subcommand accepts (from the parser itself)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {flag for action in sub.choices[stage]._actions for flag in action.option_strings}


def write_elsewhere(stage: str) -> str:
    """How ``stage`` writes its outputs to a writable folder, naming only a flag it has: evaluate writes into the
    run folder it reads (no --out), so its remedy is a writable copy of that folder."""
    flags = stage_flags(stage)
    if "--out" in flags:
        return f"{WRITE_ELSEWHERE} (--out)"
    if "--run" in flags:
        return "copy the run folder somewhere writable and pass the copy as --run"
    return WRITE_ELSEWHERE


def _to_project_root(args: argparse.Namespace) -> None:
    """Resolve the command-line paths against the caller's folder, then work from the params file's folder."""
    params_file = Path(args.params).expanduser().absolute()
    if not params_file.is_file():
        raise ParamsError(f"{args.params}: params file not found (pass --params path/to/params.yaml; the project "
                          f"root is the folder of that file)")
    args.params = str(params_file)
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if value:
            setattr(args, name, str(Path(value).expanduser().absolute()))
    os.chdir(params_file.parent)


def _check_args(args: argparse.Namespace, params: dict) -> None:
    from cpsl.config.rows import ROWS

    if getattr(args, "ablation", None) is not None and args.ablation not in ROWS:
        raise ParamsError(f"--ablation {args.ablation!r} is not a Table 2 ID, T0 or a Table 1 baseline; use one "
                          f"of {', '.join(ROWS)}")
    if getattr(args, "seed", None) is not None and not 0 <= args.seed <= SEED_MAX:
        raise ParamsError(f"--seed {args.seed} is out of range; use an integer in [0, {SEED_MAX}]")


def _dispatch(args: argparse.Namespace, params: dict) -> int:
    # Stage modules are imported lazily: validation must not wait for torch/transformers.
    if args.stage == "prepare":
        from cpsl.stages.prepare import run_prepare
        run_prepare(params, out_dir=args.out)
    elif args.stage == "align":
        from cpsl.stages.align import run_align
        run_align(params, raw_dir=args.raw, out_path=args.out)
    elif args.stage == "train":
        from cpsl.stages.train import run_train
        return run_train(params, seed=args.seed, ablation=args.ablation, data_path=args.data, out_dir=args.out,
                         params_file=args.params, overrides=args.overrides)
    elif args.stage == "evaluate":
        from cpsl.stages.evaluate import evaluate_command
        if not Path(args.run).is_dir():
            raise PipelineError(f"--run {args.run}: no such run folder (check the path; `cpsl train --ablation ID "
                                f"--seed K` creates results/<dataset>/<ID>-seed<K>/)")
        evaluate_command(params, run_dir=args.run, data_path=args.data)
    elif args.stage == "report":
        from cpsl.config import paths
        from cpsl.stages.report import run_report
        remove_stale_temporaries(args.out or paths.reports_dir(params["dataset"]),
                                 [paths.summary_path(params["dataset"]).name, *paths.REPORT_FILES])
        run_report(params, results_dir=args.results, out_dir=args.out, grid=args.grid, strict=args.strict,
                   table1=args.table1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
