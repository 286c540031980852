"""The ``cpsl`` command: one subcommand per pipeline stage.

    cpsl prepare | align | train | evaluate | report   [--params params.yaml] [--set key=value ...]

Every subcommand validates params.yaml before doing any work. Snakefile and dvc.yaml call only these.
"""
from __future__ import annotations

import argparse
import sys

from cpsl.config import ParamsError, apply_overrides, load_params
from cpsl.errors import PipelineError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param for this call, e.g. --set cp.eta=0.3 (validated like the file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpsl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("prepare", help="download (or copy from a mirror, or generate the demo) raw .csd files")
    _common(p)
    p.add_argument("--out", help="output folder (default data/raw/<dataset>)")

    p = sub.add_parser("align", help="word-align features, expand to subwords, pad, cache to HDF5")
    _common(p)
    p.add_argument("--raw", help="raw folder (default data/raw/<dataset>)")
    p.add_argument("--out", help="output .h5 (default data/processed/<dataset>.h5)")

    p = sub.add_parser("train", help="train one (ablation, seed) run; spawns torchrun when train.nproc > 1")
    _common(p)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--ablation", help="Table 2 ID (default: params 'ablation')")
    p.add_argument("--data", help="cached .h5 (default data/processed/<dataset>.h5)")
    p.add_argument("--out", help="run folder (default results/<dataset>/<ablation>-seed<k>)")

    p = sub.add_parser("evaluate", help="metrics of the validation-selected checkpoint on valid and test")
    _common(p)
    p.add_argument("--run", required=True, help="run folder written by 'cpsl train'")
    p.add_argument("--data", help="cached .h5 (default data/processed/<dataset>.h5)")

    p = sub.add_parser("report", help="aggregate seeds, paired tests, Tables 1-2 and Figures 2-3")
    _common(p)
    p.add_argument("--results", help="results folder (default results/<dataset>)")
    p.add_argument("--out", help="reports folder (default reports/<dataset>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        if args.overrides:
            params = apply_overrides(params, args.overrides, args.params)
    except ParamsError as exc:
        print(f"cpsl {args.stage}: invalid params: {exc}", file=sys.stderr)
        return 2

    try:
        return _dispatch(args, params)
    except PipelineError as exc:
        # A problem with the user's inputs: one line naming the file/key/segment, no traceback.
        print(f"cpsl {args.stage}: error: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, params: dict) -> int:
    # Stage modules are imported lazily: validation must not wait for torch/transformers.
    if args.stage == "prepare":
        from cpsl.data.prepare import run_prepare
        run_prepare(params, out_dir=args.out)
    elif args.stage == "align":
        from cpsl.align.stage import run_align
        run_align(params, raw_dir=args.raw, out_path=args.out)
    elif args.stage == "train":
        from cpsl.train.stage import run_train
        return run_train(params, seed=args.seed, ablation=args.ablation, data_path=args.data, out_dir=args.out,
                         params_file=args.params, overrides=args.overrides)
    elif args.stage == "evaluate":
        from cpsl import gpu_slots
        from cpsl.evaluate.stage import run_evaluate
        # Evaluation runs on the first visible CUDA device: lease one so it does not land on a training job's.
        with gpu_slots.job_devices(1, params["train"]["device"], "cpsl evaluate"):
            run_evaluate(params, run_dir=args.run, data_path=args.data)
    elif args.stage == "report":
        from cpsl.report.stage import run_report
        run_report(params, results_dir=args.results, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
