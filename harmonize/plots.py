"""Figures as plain functions that write PNG files.

Matplotlib is used through its object-oriented API with the Agg canvas: no pyplot state, no
window, nothing changes the user's backend, and nothing ever calls ``plt.show``. Every function
writes its file atomically and returns the path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harmonize._fs import atomic_path

#: colour map of quantitative maps (the thesis shows maps in colour to make differences visible)
MAP_CMAP = "viridis"
DPI = 110


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


#: panels of the loss-curve figure: (title, log keys)
LOSS_PANELS = (
    ("Discriminators D_A, D_B (LSGAN)", ("d_a_real", "d_a_fake", "d_b_real", "d_b_fake")),
    ("Scanner discriminator (Eq. 7)", ("d_scanner_a", "d_scanner_fake_a", "d_scanner_b", "d_scanner_fake_b")),
    ("Generator totals (weighted)", ("g_a2b_total", "g_b2a_total")),
    ("Generator terms A->B (unweighted)", ("g_a2b_adv", "g_a2b_identity", "g_a2b_ssim", "g_a2b_cycle",
                                          "g_a2b_scanner")),
    ("Generator terms B->A (unweighted)", ("g_b2a_adv", "g_b2a_identity", "g_b2a_ssim", "g_b2a_cycle",
                                          "g_b2a_scanner")),
)


def plot_loss_curves(step_rows, epoch_rows, path, title=None, rules=None):
    """Training losses per step (thin) and their epoch means (markers), one panel per group.

    Parameters
    ----------
    step_rows : list of dict or pandas.DataFrame
        Per-step rows with a ``step`` column and log keys (losses.csv).
    epoch_rows : list of dict or pandas.DataFrame
        Per-epoch rows with ``step`` (the last step of the epoch) and the epoch means.
    path : str or Path
        Output PNG.
    title : str, optional
    rules : dict, optional
        Thresholds drawn as dotted lines: ``{"rule_d_fake": 0.3, "rule_g_total": 1.0}``.

    Returns
    -------
    Path
    """
    import pandas as pd

    steps = pd.DataFrame(step_rows)
    epochs = pd.DataFrame(epoch_rows)
    columns = set(steps.columns) | set(epochs.columns)
    panels = [(t, [k for k in keys if k in columns]) for t, keys in LOSS_PANELS]
    panels = [(t, keys) for t, keys in panels if keys]
    fig = _figure(9, 2.4 * max(1, len(panels)))
    rules = rules or {}
    for i, (panel_title, keys) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        for j, key in enumerate(keys):
            colour = f"C{j}"
            if key in steps and len(steps):
                ax.plot(steps["step"], steps[key], color=colour, lw=0.6, alpha=0.45)
            if key in epochs and len(epochs):
                ax.plot(epochs["step"], epochs[key], color=colour, lw=1.4, marker="o", ms=3, label=key)
        if panel_title.startswith("Discriminators") and rules.get("rule_d_fake") is not None:
            ax.axhline(rules["rule_d_fake"], color="k", ls=":", lw=0.8, label=f"D fake rule {rules['rule_d_fake']:g}")
        if panel_title.startswith("Generator totals") and rules.get("rule_g_total") is not None:
            ax.axhline(rules["rule_g_total"], color="k", ls=":", lw=0.8, label=f"G rule {rules['rule_g_total']:g}")
        ax.set_title(panel_title, fontsize=9, loc="left")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3, loc="upper right")
        if i == len(panels) - 1:
            ax.set_xlabel("step (lines: per step; markers: epoch mean)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_sample_grid(real_a, fake_b, real_b, fake_a, path, vmax_a, vmax_b, label_a="A", label_b="B",
                     units_a="ms", units_b="ms", map_a="T1", map_b="T1", title=None):
    """Rows of (A, fake B, B, fake A) slices in physical units with fixed colour scales.

    Columns of domain A (A, fake A) use ``[0, vmax_a]`` and those of domain B (fake B, B) use
    ``[0, vmax_b]``, the same every epoch, so grids of different epochs compare by eye.

    Parameters
    ----------
    real_a, fake_b, real_b, fake_a : np.ndarray
        (n, rows, cols) maps in physical units (``fake_b = G(real_a)``, ``fake_a = F(real_b)``).
    path : str or Path
        Output PNG.
    vmax_a, vmax_b : float
        Top of the colour scale of each domain (units of the domain).
    label_a, label_b : str
        Scanner labels.
    units_a, units_b, map_a, map_b : str
        Units ('ms', '%') and map types for the colour-bar labels.
    title : str, optional

    Returns
    -------
    Path
    """
    arrays = [np.asarray(x, dtype=np.float32) for x in (real_a, fake_b, real_b, fake_a)]
    n = len(arrays[0])
    heads = [f"A ({label_a})", "fake B = G(A)", f"B ({label_b})", "fake A = F(B)"]
    domains = ["A", "B", "B", "A"]
    fig = _figure(2.3 * 4 + 0.8, 2.3 * n + 0.4)
    grid = fig.add_gridspec(n, 5, width_ratios=[1, 1, 1, 1, 0.06])
    images = {}
    for r in range(n):
        for c in range(4):
            ax = fig.add_subplot(grid[r, c])
            vmax = vmax_a if domains[c] == "A" else vmax_b
            images[domains[c]] = ax.imshow(arrays[c][r], cmap=MAP_CMAP, vmin=0.0, vmax=vmax,
                                           interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=9)
    if vmax_a == vmax_b and units_a == units_b and map_a == map_b:
        cbar = fig.colorbar(images["B"], cax=fig.add_subplot(grid[:, 4]))
        cbar.set_label(f"{map_b} ({units_b})")
    else:
        half = max(1, n // 2)
        cax_a = fig.add_subplot(grid[:half, 4]) if n > 1 else fig.add_subplot(grid[:, 4])
        fig.colorbar(images["A"], cax=cax_a).set_label(f"A: {map_a} ({units_a})")
        if n > 1:
            fig.colorbar(images["B"], cax=fig.add_subplot(grid[half:, 4])).set_label(f"B: {map_b} ({units_b})")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
