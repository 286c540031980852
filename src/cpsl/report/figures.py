"""Figures 2 and 3 of the paper from the runs' history.csv files (one row per epoch).

* Figure 2 (figure2_losses.png): total, task, reconstruction, unimodal, diversity and statistical loss
  per epoch, train and valid, in the paper's panel order (a)-(f). Panel (e) shows the feature diversity
  as the entropy H_2 = -L_div (the quantity maximised), so it rises as the paper's Fig. 2(e) does.
* Figure 3 (figure3_modulation.png): (a) the modulation coefficients c_a and c_v, (b) the modality
  imbalance degree, per epoch; shaded bands are the ranges the paper reports (Section 3.5,
  cpsl.report.paper_results.FIGURE3_RANGES) and the legend gives the share of the modulation window's epochs
  inside them (cpsl.report.telemetry), so a run that does not behave as the paper describes shows at once.

Curves are the mean over the seeds of one ablation (a band shows +/- one std when there are >= 2 seeds).
Epochs are aligned by the ``epoch`` column; a seed that stopped early simply does not count at later
epochs. The same means go to history_mean.csv so that ``dvc plots`` can draw the identical curves.
A column a run did not record (e.g. gm/* for a configuration without modulation) leaves its panel
with a "not recorded" note instead of failing.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from cpsl.config.names import LOSS_TERMS
from cpsl.report.paper_results import FIGURE3_RANGES
from cpsl.runtime.io_utils import atomic_path, write_text_atomic

# panel titles of Figure 2, in the paper's order (cpsl.config.names.LOSS_TERMS)
PANELS = {"total": "(a) Total loss", "task": "(b) Main regression loss", "recon": "(c) Reconstruction loss",
          "uni": "(d) Unimodal loss", "div": "(e) Feature diversity (entropy H_2 = -L_div)",
          "stat": "(f) Statistical loss"}
MODULATION = (("gm/c_a", "c_a (acoustic)"), ("gm/c_v", "c_v (visual)"))
IMBALANCE = "gm/imbalance"


def columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """History rows (cpsl.formats.run_folder.read_history) -> column name -> float array."""
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: np.asarray([row.get(name, math.nan) for row in rows], dtype=np.float64) for name in names}


def mean_over_seeds(histories: Sequence[dict[str, np.ndarray]]) -> tuple[np.ndarray, dict, dict]:
    """(epochs, mean per column, std per column) over runs, aligned on epoch; NaN where nothing recorded."""
    epochs = np.unique(np.concatenate([h["epoch"][np.isfinite(h["epoch"])] for h in histories]))
    names = sorted({k for h in histories for k in h if k != "epoch"})
    means, stds = {}, {}
    for name in names:
        grid = np.full((len(histories), epochs.size), np.nan)
        for i, h in enumerate(histories):
            if name in h:
                pos = np.searchsorted(epochs, h["epoch"])
                ok = np.isfinite(h["epoch"])
                grid[i, pos[ok]] = h[name][ok]
        counts = np.isfinite(grid).sum(axis=0)
        with warnings.catch_warnings():  # all-NaN epochs are handled by the counts
            warnings.simplefilter("ignore", RuntimeWarning)
            means[name] = np.where(counts > 0, np.nanmean(grid, axis=0), np.nan)
            stds[name] = np.where(counts > 1, np.nanstd(grid, axis=0, ddof=1), np.nan)
    return epochs, means, stds


def _plot(ax, epochs, means, stds, column, label, style="-"):
    y = means.get(column)
    if y is None or not np.isfinite(y).any():
        return False
    line, = ax.plot(epochs, y, style, label=label, marker="." if epochs.size < 40 else None)
    s = stds.get(column)
    if s is not None and np.isfinite(s).any():
        ax.fill_between(epochs, y - s, y + s, color=line.get_color(), alpha=0.2, linewidth=0)
    return True


def _paper_band(ax, column: str, line_label: str, against: dict | None) -> str:
    """Shade the paper's range for ``column`` (in the colour of its curve) and return the curve's legend label
    with the share of window epochs inside it."""
    lo, hi = FIGURE3_RANGES[column]
    color = next((ln.get_color() for ln in ax.get_lines() if ln.get_label() == line_label), "gray")
    # hatched, so it does not read as the curve's +/- std band
    ax.axhspan(lo, hi, facecolor="none", edgecolor=color, hatch="///", alpha=0.35, linewidth=0,
               label=f"paper: {lo:g}-{hi:g}")
    frac = ((against or {}).get(column) or {}).get("fraction_in_range_in_window")
    return line_label if frac is None else f"{line_label}: {frac:.0%} of window epochs in range"


def _relabel(ax, labels: dict) -> None:
    for line in ax.get_lines():
        if line.get_label() in labels:
            line.set_label(labels[line.get_label()])


def _note_missing(ax, what: str):
    ax.text(0.5, 0.5, f"{what}\nnot recorded", ha="center", va="center", transform=ax.transAxes, color="gray")


def _save(fig, path: Path):
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def write_figures(histories: Sequence[dict[str, np.ndarray]], out_dir, title: str,
                  against: dict | None = None) -> list[str]:
    """Draw Figures 2 and 3 and write history_mean.csv into ``out_dir``; return the written paths. ``against``
    (cpsl.report.telemetry.against_paper of the same runs) puts the in-range shares in Figure 3's legends."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or a cluster node
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not histories:
        raise ValueError("no history.csv to draw Figures 2 and 3 from")
    out_dir = Path(out_dir)
    epochs, means, stds = mean_over_seeds(histories)
    written = []

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    for split in ("train", "valid"):  # panel (e): the entropy that L_div = -H_2 maximises
        if f"{split}/div" in means:
            means[f"{split}/entropy"], stds[f"{split}/entropy"] = -means[f"{split}/div"], stds[f"{split}/div"]
    for ax, term in zip(axes.ravel(), LOSS_TERMS):
        panel = PANELS[term]
        term = "entropy" if term == "div" else term
        drawn = _plot(ax, epochs, means, stds, f"train/{term}", "train")
        drawn |= _plot(ax, epochs, means, stds, f"valid/{term}", "valid", "--")
        if drawn:
            ax.legend(fontsize=8)
        else:
            _note_missing(ax, term)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Figure 2: loss trajectories - {title}")
    fig.tight_layout()
    _save(fig, out_dir / "figure2_losses.png")
    plt.close(fig)
    written.append(str(out_dir / "figure2_losses.png"))

    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = {column: _plot(ax_a, epochs, means, stds, column, label) for column, label in MODULATION}
    if any(drawn.values()):
        ax_a.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")  # no modulation
        _relabel(ax_a, {label: _paper_band(ax_a, column, label, against) for column, label in MODULATION
                        if drawn[column]})
        ax_a.legend(fontsize=7)
    else:
        _note_missing(ax_a, "c_a, c_v")
    ax_a.set_title("(a) Modulation coefficients (bands: the paper's Sec. 3.5 ranges)", fontsize=10)
    if _plot(ax_b, epochs, means, stds, IMBALANCE, "imbalance degree"):
        _relabel(ax_b, {"imbalance degree": _paper_band(ax_b, IMBALANCE, "imbalance degree", against)})
        ax_b.legend(fontsize=7)
    else:
        _note_missing(ax_b, "imbalance degree")
    ax_b.set_title("(b) Modality imbalance degree (band: the paper's range)", fontsize=10)
    window = (against or {}).get("window")
    for ax in (ax_a, ax_b):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if window and epochs.size and epochs.max() > window[1]:  # where the modulation window ends
            ax.axvline(window[1] + 0.5, color="gray", linewidth=0.8, linestyle="--")
    fig.suptitle(f"Figure 3: gradient modulation - {title}")
    fig.tight_layout()
    _save(fig, out_dir / "figure3_modulation.png")
    plt.close(fig)
    written.append(str(out_dir / "figure3_modulation.png"))

    # Same curves as the PNGs, for `dvc plots show/diff` (x: epoch).
    names = sorted(means)
    lines = [",".join(["epoch"] + names)]
    for i, ep in enumerate(epochs):
        cells = [str(int(ep)) if float(ep).is_integer() else repr(float(ep))]
        cells += ["" if not np.isfinite(means[n][i]) else repr(float(means[n][i])) for n in names]
        lines.append(",".join(cells))
    write_text_atomic(out_dir / "history_mean.csv", "\n".join(lines) + "\n")
    written.append(str(out_dir / "history_mean.csv"))
    return written
