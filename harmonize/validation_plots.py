"""Figures of ``harmonize assess`` and ``harmonize evaluate`` (thesis Figs. 7-12, 16, image grids).

Every function draws on a :class:`matplotlib.figure.Figure` created without pyplot (Agg canvas,
no global figure state, nothing is ever shown) and writes one PNG atomically. Quantitative maps
are drawn in their physical units with one colour scale shared by every panel of a figure, so a
colour means the same T1 (ms) everywhere; difference maps use a symmetric diverging scale in the
same units.

=====================================  ==========================================================
:func:`histogram_figure`               average histograms per scanner (Fig. 7), one panel per
                                       condition (before / after registration)
:func:`histogram_panels_figure`        the four-panel A / B / fake A / fake B figure (Fig. 16)
:func:`image_grid_figure`              rows of maps (shared scale) and difference maps
:func:`classifier_examples_figure`     test slices with the classifier's P(A), P(B) (Fig. 8)
:func:`gradcam_figure`                 Grad-CAM overlays (Figs. 9-12)
:func:`accuracy_figure`                Table 3 accuracies per run and variant
=====================================  ==========================================================
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harmonize._fs import atomic_path

#: colours of the image sets, the same in every figure
COLOURS = {"A": "#1f77b4", "B": "#d62728", "fake A": "#17becf", "fake B": "#ff7f0e", "true B": "#2ca02c",
           "none": "#7f7f7f", "linear": "#9467bd", "histmatch": "#8c564b", "nyul": "#e377c2"}
MAP_CMAP = "viridis"
DIFF_CMAP = "RdBu_r"
HEAT_CMAP = "jet"
DPI = 110


def _figure(width, height, layout="constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path):
    """Write ``fig`` to ``path`` (PNG) atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def unit_label(map_type, units):
    """Axis label of a map in its units, e.g. ``'T1 (ms)'``."""
    units = f" ({units})" if units else ""
    return f"{map_type or 'value'}{units}"


def _colour(name, i):
    """Fixed colour of an image set or method ('A (SIGNA)' -> colour of 'A'), else a cycle colour."""
    default = ["#1f77b4", "#d62728", "#ff7f0e", "#17becf", "#2ca02c", "#9467bd", "#8c564b"]
    key = str(name).split(" (")[0]
    if key.startswith("CycleGAN"):
        return "#ff7f0e"
    return COLOURS.get(name, COLOURS.get(key, default[i % len(default)]))


def _draw_curves(ax, curves, xlim=None, log=False):
    for i, (name, (edges, hist)) in enumerate(curves.items()):
        edges = np.asarray(edges, float)
        hist = np.asarray(hist, float)
        ax.stairs(hist, edges, label=name, color=_colour(name, i), linewidth=1.2)
    if xlim is not None:
        ax.set_xlim(*xlim)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel("mean fraction of voxels per bin")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.25)


def histogram_figure(panels, path, *, map_type="", units="", xlim=None, log=False, suptitle=None):
    """Average histograms, one panel per condition (thesis Fig. 7).

    Parameters
    ----------
    panels : dict of str -> dict of str -> (edges, hist)
        Panel title (e.g. 'before registration') -> curve label (e.g. 'A (SIGNA)') ->
        ``(bin_edges, histogram)`` from :func:`harmonize.metrics.average_histogram`.
    path : str or Path
        Output PNG.
    map_type, units : str
        For the x-axis label, e.g. 'T1', 'ms'.
    xlim : (float, float), optional
        x-axis limits in the map's units (the histogram itself is not changed).
    log : bool
        Logarithmic y-axis.
    """
    n = max(len(panels), 1)
    fig = _figure(5.2 * n, 3.6)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (title, curves) in zip(axes, panels.items()):
        _draw_curves(ax, curves, xlim=xlim, log=log)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit_label(map_type, units))
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path)


def histogram_panels_figure(panels, path, *, map_type="", units="", xlim=None, log=False, ncols=2, suptitle=None):
    """Several histogram panels on a grid, e.g. the thesis's four-panel A/B/fakeA/fakeB figure.

    ``panels`` is a list of ``(title, {label: (edges, hist)})``.
    """
    n = max(len(panels), 1)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig = _figure(5.0 * ncols, 3.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, curves) in zip(axes, panels):
        _draw_curves(ax, curves, xlim=xlim, log=log)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit_label(map_type, units))
    for ax in axes[n:]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path)


def robust_max(*stacks, percentile=99.5):
    """Upper end of a shared colour scale: the ``percentile`` of the positive values of all stacks."""
    vals = [np.asarray(s, float)[np.asarray(s) > 0] for s in stacks if s is not None]
    vals = [v for v in vals if v.size]
    if not vals:
        return 1.0
    hi = float(np.percentile(np.concatenate(vals), percentile))
    return hi if hi > 0 else 1.0


def image_grid_figure(rows, path, *, map_type="", units="", vmax=None, diff_max=None, col_titles=None,
                      suptitle=None, cell=2.1):
    """A grid of slices: one row per image set, one column per slice.

    Parameters
    ----------
    rows : list of (label, images, kind)
        ``images`` (n, H, W) in physical units; ``kind`` is 'map' (drawn from 0 to ``vmax`` with
        :data:`MAP_CMAP`) or 'diff' (a difference map, drawn from ``-diff_max`` to ``+diff_max``
        with :data:`DIFF_CMAP`). Every row must have the same number of slices.
    path : str or Path
        Output PNG.
    map_type, units : str
        For the colour-bar labels.
    vmax : float, optional
        Top of the shared map scale; default :func:`robust_max` of every 'map' row.
    diff_max : float, optional
        Half-range of the difference scale; default the 99th percentile of |difference| over
        every 'diff' row.
    col_titles : list of str, optional
        One title per column (e.g. subject and slice).
    """
    if not rows:
        raise ValueError("image_grid_figure needs at least one row")
    ncols = len(rows[0][1])
    for label, images, _ in rows:
        if len(images) != ncols:
            raise ValueError(f"row {label!r} has {len(images)} slices, the first row {ncols}")
    maps = [np.asarray(im) for _, im, kind in rows if kind == "map"]
    diffs = [np.asarray(im) for _, im, kind in rows if kind == "diff"]
    vmax = robust_max(*maps) if vmax is None else float(vmax)
    if diff_max is None:
        allabs = np.concatenate([np.abs(d).ravel() for d in diffs]) if diffs else np.zeros(1)
        nz = allabs[allabs > 0]
        diff_max = float(np.percentile(nz, 99)) if nz.size else 1.0
    diff_max = diff_max if diff_max > 0 else 1.0
    nrows = len(rows)
    fig = _figure(cell * ncols + 1.6, cell * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im_map = im_diff = None
    for r, (label, images, kind) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if kind == "diff":
                im_diff = ax.imshow(np.asarray(images[c], float), cmap=DIFF_CMAP, vmin=-diff_max, vmax=diff_max,
                                    interpolation="nearest")
            else:
                im_map = ax.imshow(np.asarray(images[c], float), cmap=MAP_CMAP, vmin=0.0, vmax=vmax,
                                   interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0 and col_titles is not None:
                ax.set_title(str(col_titles[c]), fontsize=8)
    label = unit_label(map_type, units)
    map_axes = [axes[r, c] for r, row in enumerate(rows) if row[2] != "diff" for c in range(ncols)]
    diff_axes = [axes[r, c] for r, row in enumerate(rows) if row[2] == "diff" for c in range(ncols)]
    if im_map is not None:
        fig.colorbar(im_map, ax=map_axes, shrink=0.8, label=label, fraction=0.03, pad=0.02)
    if im_diff is not None:
        fig.colorbar(im_diff, ax=diff_axes, shrink=0.8, label=f"difference, {label}", fraction=0.03, pad=0.02)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return save_figure(fig, path)


def classifier_examples_figure(images, p_b, true_domains, path, *, labels=("A", "B"), vmax=None,
                               map_type="", units="", ncols=6, suptitle=None):
    """Test slices with the classifier's probabilities (thesis Fig. 8).

    Parameters
    ----------
    images : np.ndarray
        (n, H, W) slices in physical units (as the classifier saw them, before normalisation).
    p_b : np.ndarray
        (n,) predicted probability of scanner B.
    true_domains : sequence of str
        'A' or 'B' per slice.
    labels : (str, str)
        Display names of scanner A and B.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols)) if n else 1
    vmax = robust_max(images) if vmax is None else vmax
    fig = _figure(2.0 * ncols, 2.6 * nrows + 0.4, layout=None)
    grid = fig.add_gridspec(nrows * 2, ncols, height_ratios=[4, 1] * nrows, hspace=0.12, wspace=0.08)
    for k in range(n):
        r, c = divmod(k, ncols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(np.asarray(images[k], float), cmap=MAP_CMAP, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        predicted = "B" if p_b[k] >= 0.5 else "A"
        correct = predicted == true_domains[k]
        true_name = labels[0] if true_domains[k] == "A" else labels[1]
        ax.set_title(f"true {true_domains[k]} ({true_name})", fontsize=7)
        bx = fig.add_subplot(grid[2 * r + 1, c])
        probs = [1.0 - float(p_b[k]), float(p_b[k])]
        colours = ["#bbbbbb", "#bbbbbb"]
        colours[1 if predicted == "B" else 0] = "#1f77b4" if correct else "#d62728"
        bx.barh([1, 0], probs, color=colours, height=0.8)
        for yy, name, pv in ((1, "A", probs[0]), (0, "B", probs[1])):
            bx.text(0.02, yy, f"P({name}) = {pv:.2f}", va="center", ha="left", fontsize=7)
        bx.set_xlim(0, 1)
        bx.set_ylim(-0.5, 1.5)
        bx.set_xticks([])
        bx.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle + "\nblue: correct, red: wrong", fontsize=10)
    return save_figure(fig, path)


def gradcam_figure(images, heatmaps, titles, path, *, alpha=0.45, ncols=4, vmax=None, suptitle=None):
    """Grad-CAM heat maps over the slices they explain (thesis Figs. 9-12).

    Parameters
    ----------
    images : np.ndarray
        (n, H, W) slices (any units; drawn in grey on their own shared scale).
    heatmaps : np.ndarray
        (n, H, W) Grad-CAM maps in [0, 1] on the same grid.
    titles : sequence of str
        One per slice (true scanner, P(B)).
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols)) if n else 1
    vmax = robust_max(images) if vmax is None else vmax
    fig = _figure(2.4 * ncols + 0.8, 2.5 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    heat = None
    for k in range(nrows * ncols):
        ax = axes.ravel()[k]
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.set_visible(False)
            continue
        ax.imshow(np.asarray(images[k], float), cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        heat = ax.imshow(np.asarray(heatmaps[k], float), cmap=HEAT_CMAP, vmin=0, vmax=1, alpha=alpha,
                         interpolation="bilinear")
        ax.set_title(str(titles[k]), fontsize=8)
    if heat is not None:
        fig.colorbar(heat, ax=list(axes.ravel()), shrink=0.7, label="Grad-CAM (relative importance)",
                     fraction=0.03, pad=0.02)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def accuracy_figure(table, path, *, chance=0.5, suptitle=None):
    """Test accuracy of every run of every classifier variant (Table 3) as points with the mean.

    ``table`` is a DataFrame with columns ``variant`` and ``accuracy`` (one row per run).
    """
    variants = list(dict.fromkeys(table["variant"]))
    fig = _figure(1.6 * max(len(variants), 2) + 1.5, 3.4)
    ax = fig.subplots()
    for i, v in enumerate(variants):
        acc = table.loc[table["variant"] == v, "accuracy"].to_numpy(float)
        ax.plot(np.full(len(acc), i), acc, "o", color="#1f77b4", alpha=0.7)
        if len(acc):
            ax.plot([i - 0.25, i + 0.25], [np.nanmean(acc)] * 2, color="k", linewidth=2)
    ax.axhline(chance, color="#d62728", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(variants)), variants, fontsize=8, rotation=15)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("test accuracy")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.25, axis="y")
    if suptitle:
        ax.set_title(suptitle, fontsize=10)
    return save_figure(fig, path)


def bias_figure(summary, path, *, tissues=("CSF", "GM", "WM"), suptitle=None):
    """Tissue-mean bias (%) per method as grouped bars (the errors-against-truth summary).

    ``summary`` is a DataFrame with a ``method`` column, ``bias_pct`` (brain) and
    ``bias_pct_<tissue>`` columns, one row per method.
    """
    groups = [("brain", "bias_pct")] + [(t, f"bias_pct_{t}") for t in tissues if f"bias_pct_{t}" in summary]
    methods = list(summary["method"])
    n = len(methods)
    width = 0.8 / max(n, 1)
    fig = _figure(1.6 * len(groups) + 2.5, 3.6)
    ax = fig.subplots()
    x = np.arange(len(groups))
    for i, m in enumerate(methods):
        vals = [float(summary.loc[summary["method"] == m, col].iloc[0]) for _, col in groups]
        ax.bar(x - 0.4 + width * (i + 0.5), vals, width, label=m, color=_colour(m, i))
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xticks(x, [g for g, _ in groups])
    ax.set_ylabel("bias against truth (%)")
    ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(alpha=0.25, axis="y")
    if suptitle:
        ax.set_title(suptitle, fontsize=10)
    return save_figure(fig, path)
