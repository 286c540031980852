"""Which params a run was trained with, whether its outputs belong to the configured run, and whether the runs
the report puts in one row agree.

A run's identity (:func:`identity`): the params training reads (flattened, less :data:`PER_RUN_KEYS`), the row, the
seed, the cache's content (sha256: cpsl.formats.cache.content_identity) and the train stage's code (cpsl.runtime.deps).
train records
it with its sha256, the fingerprint, in best.pt's meta and train_summary.json; evaluate copies the checkpoint's into
metrics.json ("run"), after :func:`check_same_run` against the configured run's; the report checks metrics.json's
params against params.yaml and its fingerprint against the run's train_summary.json (:func:`check_metrics_run`), so a
checkpoint or metrics.json of other params is never reported under these.

Every seed of one ablation row must come from the same params: averaging seed 0 trained with cp.eta=0.3
and seed 1 trained with cp.eta=0.5 would report a configuration that never existed. ``train_summary.json``
records the params of each run; the keys that legitimately differ between the runs of one row are left out
of the comparison: :data:`PER_RUN_KEYS`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cpsl.config.rows import canonical, run_params
from cpsl.config.schema import stage_slice
from cpsl.errors import PipelineError
from cpsl.formats import run_folder

# the rows being trained (a row can be trained alone or beside others: `ablations`), the list of seeds (a row
# may be trained a seed at a time), the evaluation settings (evaluate only, not training) and how a run was
# executed (device, processes, step mode, ...: cpsl.config.schema.EXECUTION, never what it computes)
PER_RUN_KEYS = ("ablations", "train.seeds", "eval", "execution")


class MixedParamsError(PipelineError):
    """Runs of one report row were trained with different params."""


class RunMismatchError(PipelineError):
    """A checkpoint or metrics.json was produced by another run than the configured one (other params, cache,
    code, row or seed); the message names the file and what differs."""


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


# ----------------------------------------------------------------------------------------------- identity
def _plain(obj):
    """``obj`` as it reads back from JSON (tuples become lists), so a recorded identity compares equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _per_run(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in PER_RUN_KEYS)


def trained_params(params: dict, ablation: str) -> dict:
    """The flattened params a run of ``ablation`` is trained with (its row's: cpsl.config.rows.run_params; the train
    stage's keys: cpsl.config.schema.STAGE_PARAMS), less PER_RUN_KEYS (adding a seed must not make the others other
    runs)."""
    flat = _flatten(stage_slice(run_params(params, ablation), "train", missing_ok=True))
    return _plain({k: v for k, v in flat.items() if not _per_run(k)})


def identity(params: dict, ablation: str, seed: int, cache: dict | None = None, code: str | None = None) -> dict:
    """What makes a run this run. ``cache`` (cpsl.formats.cache.content_identity) and ``code``
    (cpsl.runtime.deps.code_hash of
    train) are left out when None: the report compares params, row and seed only."""
    ablation = canonical(ablation)
    out = {"params": trained_params(params, ablation), "ablation": ablation, "seed": int(seed)}
    if cache is not None:
        out["cache"] = cache
    if code is not None:
        out["code"] = code
    return _plain(out)


def fingerprint(ident: dict) -> str:
    """The sha256 of an identity: equal for equal identities, whatever their key order or tuple/list."""
    return hashlib.sha256(json.dumps(_plain(ident), sort_keys=True).encode()).hexdigest()


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(recorded: dict, configured: dict) -> list[str]:
    """What differs between a recorded identity and the configured one, as ``key: run X, params Y`` items
    (params first, by key); only the parts ``configured`` has are compared."""
    recorded, configured = _plain(recorded), _plain(configured)
    out = []
    if "params" in configured:
        had, want = recorded.get("params") or {}, configured["params"]
        for key in sorted(set(had) | set(want)):
            if had.get(key, "<absent>") != want.get(key, "<absent>"):
                out.append(f"{key}: run {_short(had.get(key, '<absent>'))}, params {_short(want.get(key, '<absent>'))}")
    for part in ("ablation", "seed"):
        if part in configured and recorded.get(part) != configured[part]:
            out.append(f"{part}: run {recorded.get(part)!r}, configured {configured[part]!r}")
    if "cache" in configured and recorded.get("cache") != configured["cache"]:
        out.append("cache: its content changed since training (realigned or edited in place)")
    if "code" in configured and recorded.get("code") != configured["code"]:
        out.append("code: the train stage's code changed since training")
    return out


def _listed(diffs: list[str], most: int = 4) -> str:
    return "; ".join(diffs[:most]) + (f" (+{len(diffs) - most} more)" if len(diffs) > most else "")


def check_same_run(what: str, recorded: dict | None, configured: dict, hint: str) -> None:
    """Refuse ``what`` (a file, named in the message) unless its recorded identity is the configured run's."""
    if not isinstance(recorded, dict):
        raise RunMismatchError(f"{what}: records no run identity (written by hand or by an older cpsl), so it "
                               f"cannot be shown to belong to the configured run; {hint}")
    diffs = differences(recorded, configured)
    if diffs:
        raise RunMismatchError(f"{what}: does not belong to the configured run: {_listed(diffs)}; "
                               f"{hint}")


def check_metrics_run(run_dir: str | Path, metrics: dict, params: dict) -> None:
    """The report's check of one run: its metrics.json evaluated a checkpoint trained under ``params`` (for this
    folder's row and seed), and of the training the folder holds now (train_summary.json's fingerprint)."""
    run_dir = Path(run_dir)
    path = run_dir / run_folder.METRICS_FILE
    record = metrics.get("run") if isinstance(metrics.get("run"), dict) else {}
    evaluate = f"`cpsl evaluate --run {run_dir}`"
    check_same_run(str(path), record.get("identity"), identity(params, metrics["ablation"], metrics["seed"]),
                   f"train the run under these params (`{_train_command(run_dir)}`), then {evaluate}")
    try:
        summary = run_folder.read_summary(run_dir)
    except (OSError, run_folder.RunFolderError):
        summary = None
    trained = summary.get("fingerprint") if isinstance(summary, dict) else None
    if trained is not None and trained != record.get("fingerprint"):
        raise RunMismatchError(f"{path}: evaluated another training of this run than the one in "
                               f"{run_dir / run_folder.SUMMARY_FILE} (a stale metrics.json); rerun {evaluate}")


def _train_command(run_dir: Path) -> str:
    named = run_folder.named_run(run_dir)
    return f"cpsl train --ablation {named[0]} --seed {named[1]}" if named else "cpsl train"
