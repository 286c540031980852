"""Which params a run was trained with, and whether the runs the report puts in one row agree.

Every seed of one ablation row must come from the same params: averaging seed 0 trained with cp.eta=0.3
and seed 1 trained with cp.eta=0.5 would report a configuration that never existed. ``train_summary.json``
records the params of each run; the keys that legitimately differ between the runs of one row are left out
of the comparison: :data:`PER_RUN_KEYS`.
"""
from __future__ import annotations

from pathlib import Path

from cpsl import run_folder
from cpsl.errors import PipelineError

# the rows being trained (a row can be trained alone or beside others: `ablations`), the list of seeds (a row
# may be trained a seed at a time), the evaluation settings (evaluate only, not training) and how a run was
# executed (device, processes, step mode, ...: cpsl.config.EXECUTION, never what it computes)
PER_RUN_KEYS = ("ablations", "train.seeds", "eval", "execution")


class MixedParamsError(PipelineError):
    """Runs of one report row were trained with different params."""


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def training_params(run_dir: str | Path) -> dict | None:
    """The flattened params of a run from its train_summary.json, less PER_RUN_KEYS; None if not recorded."""
    try:
        summary = run_folder.read_summary(Path(run_dir))
    except (OSError, run_folder.RunFolderError) as exc:
        raise MixedParamsError(f"{exc}; rerun `cpsl train` for this run") from exc
    params = summary.get("params") if isinstance(summary, dict) else None
    if not isinstance(params, dict):
        return None
    flat = _flatten(params)
    return {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") for p in PER_RUN_KEYS)}


def check_rows_consistent(runs: list[dict]) -> None:
    """Refuse, in one line naming the run folders and the first differing keys, any ablation row whose runs
    (dicts with "ablation" and "folder") were trained with different params. Runs without a recorded
    train_summary.json are not compared."""
    rows: dict[str, list[tuple[Path, dict]]] = {}
    for run in runs:
        params = training_params(run["folder"])
        if params is not None:
            rows.setdefault(run["ablation"], []).append((Path(run["folder"]), params))
    for ablation, members in rows.items():
        ref_folder, ref = members[0]
        for folder, params in members[1:]:
            diff = sorted(k for k in set(ref) | set(params) if ref.get(k, "<absent>") != params.get(k, "<absent>"))
            if diff:
                shown = ", ".join(f"{k}={ref.get(k, '<absent>')!r} vs {params.get(k, '<absent>')!r}" for k in diff[:3])
                more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
                raise MixedParamsError(
                    f"{ref_folder} and {folder} are both {ablation} but were trained with different params: "
                    f"{shown}{more}; retrain the outdated run(s) with the current params (or move them out of "
                    f"{folder.parent}) before reporting")
