"""Every row the stages can train and the tables show, by row ID: the CP+SL rows (the ablation switch sets of
cpsl.config.ablations: A0-A6, B1-B5, C1-C5, and T0) and the Table 1 baselines (cpsl.baselines.registry: MAG, ...).

A row ID names what `ablations` lists, what `cpsl train --ablation` trains, the run folder ``<ID>-seed<k>`` and the
row of the tables. Every row goes through the same stages, cache, folds, seeds, selection and metrics; what differs
is the model (cpsl.nn.zoo), how it is trained (cpsl.train.recipes) and the params it reads (:func:`run_params`).
Standard library only: config and report read this module without loading torch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from cpsl.baselines.registry import BASELINES, DATASETS
from cpsl.baselines.spec import BaselineSpec
from cpsl.config.ablations import ABLATIONS, ALIASES, PAPER_ROWS

# the params sections only the CP+SL rows read, and the one holding every baseline's section
CPSL_SECTIONS = ("model", "loss", "gm", "cp")
BASELINES_SECTION = "baselines"
CPSL_FAMILY = "cpsl"


@dataclass(frozen=True)
class Row:
    id: str
    label: str                          # the configuration label in the tables
    baseline: BaselineSpec | None = None  # None: a CP+SL row (its switches: cpsl.config.ablations)

    @property
    def family(self) -> str:
        """The key of the row's model and recipe: "cpsl" for every CP+SL row, the params section of a baseline."""
        return CPSL_FAMILY if self.baseline is None else self.baseline.section


# the CP+SL rows in the paper's Table 2 order, then T0, then the baselines in Table 1's order
ROWS: dict[str, Row] = {
    **{rid: Row(rid, label) for rid, (_, label) in ABLATIONS.items()},
    **{spec.row: Row(spec.row, spec.label, spec) for spec in BASELINES},
}
BASELINE_IDS = tuple(spec.row for spec in BASELINES)
# the rows `--config table1=true` trains: the text-only reference, the full model and every baseline
TABLE1_IDS = ("T0", "A6", *BASELINE_IDS)


def row(row_id: str) -> Row:
    try:
        return ROWS[row_id]
    except KeyError:
        raise KeyError(f"unknown row {row_id!r}; known: {', '.join(ROWS)}") from None


def canonical(row_id: str) -> str:
    """The ID a row is trained (and its run folder named) under: B1 -> A1, C3 -> A2, C4 -> A5, others themselves."""
    row(row_id)  # unknown IDs fail here, naming the known ones
    return ALIASES.get(row_id, row_id)


def trained_rows(ablations, grid: bool = False, table1: bool = False) -> list[str]:
    """The rows a run of the pipeline trains, each once under its canonical ID: the configured ``ablations``; with
    ``grid`` (`snakemake --config grid=true`, `cpsl report --grid`) the whole Table 2 grid first, with ``table1``
    (`--config table1=true`, `cpsl report --table1`) T0, A6 and every Table 1 baseline after them."""
    wanted = (list(PAPER_ROWS) if grid else []) + list(ablations) + (list(TABLE1_IDS) if table1 else [])
    return list(dict.fromkeys(canonical(a) for a in wanted))


def is_baseline(row_id: str) -> bool:
    return row(row_id).baseline is not None


def hyper_dataset(dataset: str) -> str:
    """The sub-section of a baseline's params a dataset reads: its own, "mosi" for the demo."""
    return dataset if dataset in DATASETS else DATASETS[0]


def hyper(params: dict, row_id: str) -> dict:
    """A baseline's hyper-parameters for ``params["dataset"]`` (its ``baselines.<section>.<dataset>`` section)."""
    spec = row(row_id).baseline
    if spec is None:
        raise ValueError(f"row {row_id} is a CP+SL row: its hyper-parameters are the model/loss/gm/cp sections")
    return params[BASELINES_SECTION][spec.section][hyper_dataset(params["dataset"])]


def run_params(params: dict, row_id: str) -> dict:
    """The params a run of ``row_id`` is trained with (and recorded with, in best.pt and train_summary.json):

    - a CP+SL row: ``params`` without the baselines' sections (so exactly the params it had before baselines
      existed, and an edit of a baseline never changes its fingerprint);
    - a baseline: ``params`` without the CP+SL sections (model, loss, gm, cp) and the other baselines, and on
      MOSI/MOSEI with its own schedule (``baselines.<section>.<dataset>.train``) in place of ``train.*``; on the
      demo the demo's schedule (train with demo.train) is every row's.
    """
    spec = row(row_id).baseline
    out = copy.deepcopy(params)
    if spec is None:
        out.pop(BASELINES_SECTION, None)
        return out
    for section in CPSL_SECTIONS:
        out.pop(section, None)
    out[BASELINES_SECTION] = {spec.section: copy.deepcopy(params[BASELINES_SECTION][spec.section])}
    if params["dataset"] in DATASETS:
        out["train"].update(copy.deepcopy(params[BASELINES_SECTION][spec.section][params["dataset"]]["train"]))
    return out


def backbone(text_model: str) -> str | None:
    """The paper's Table 1 suffix of a text model: "d" (DeBERTa), "b" (BERT), or None (e.g. the demo's MiniLM)."""
    name = str(text_model).lower()
    if "deberta" in name:
        return "d"
    if "bert-base" in name or "bert_base" in name:
        return "b"
    return None


def snakemake_pattern() -> str:
    """The run folders' row wildcard (Snakemake wildcard_constraints): every row ID."""
    return "|".join(sorted(ROWS, key=len, reverse=True))
