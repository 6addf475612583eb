"""Write the guided-tour notebooks (notebooks/*.ipynb) from the Python source in this file.

    python tools/make_notebooks.py           # (re)write every notebook, outputs cleared
    python tools/make_notebooks.py --check   # exit status 1 when a stored notebook differs from this source

The notebooks are thin over the package API: every computation is a harmonize call; the cells
only choose settings, call the API, plot and explain. Cells shared by several notebooks (the
parameters, the profile settings, the data and run helpers) are written once here, so the four
notebooks cannot drift apart. Edit this file, run it, and commit the notebooks it writes.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
#: per-cell timeout for nbmake / nbclient (seconds); the CI profile needs far less
CELL_TIMEOUT_S = 1800


def md(text):
    return ("md", textwrap.dedent(text).strip("\n"))


def code(text, tags=()):
    return ("code", textwrap.dedent(text).strip("\n"), tuple(tags))


# ----------------------------------------------------------------------------------------------
# cells shared by the notebooks

def parameters(extra=""):
    """The first code cell of every notebook (tagged 'parameters', as papermill expects)."""
    text = '''
    # Parameters. Edit them here, or set HARMONIZE_NOTEBOOK_PROFILE=ci|quick|thesis before starting Jupyter.
    import os

    PROFILE = os.environ.get("HARMONIZE_NOTEBOOK_PROFILE", "quick")  # "quick" (default), "ci" or "thesis"
    SEED = 0  # seeds the choices made in this notebook (splits, weights, slices shown)
    '''
    return code(textwrap.dedent(text).strip("\n") + ("\n" + textwrap.dedent(extra).strip("\n") if extra else ""),
                tags=("parameters",))


SETUP = '''
%matplotlib inline
import json
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import harmonize
from harmonize.builtin import SOURCE_LABEL, TARGET_LABEL, builtin_data_dir, builtin_dataset, cache_dir
from harmonize.io.dataset import PreparedDataset
from harmonize.prepare import prepare_dataset
from harmonize.simulate import simulate
{imports}
if PROFILE not in ("ci", "quick", "thesis"):
    raise ValueError(f"PROFILE = {{PROFILE!r}}: use 'quick', 'ci' or 'thesis'")

# Every file of the tour goes to one folder per profile, shared by notebooks 01-04 (never notebooks/).
WORK = cache_dir() / "notebooks" / PROFILE
WORK.mkdir(parents=True, exist_ok=True)

# The data of each profile. ci: a small simulated dataset; quick: the built-in dataset (12 subjects)
# resampled to 64 x 64; thesis: the built-in dataset at its native 256 x 256.
DATA = {{"ci": {{"subjects": 5, "slices": 12, "size": 64, "image_size": 64}},
        "quick": {{"image_size": 64}},
        "thesis": {{"image_size": None}}}}[PROFILE]
{settings}
pd.set_option("display.precision", 3)
pd.set_option("display.max_columns", 40)
pd.set_option("display.width", 200)
warnings.filterwarnings("ignore", message=".*IProgress not found.*")
print(f"harmonize {{harmonize.__version__}}; profile {{PROFILE!r}}; files in {{WORK}}")
'''

DATA_HELPERS = '''
def profile_dataset(map_type="T1", target_map_type=None, interpolator=None):
    """The prepared dataset (.h5) of this profile: created on first use, then reused by every notebook.
    ``interpolator``: how the 3-D registered counterparts are resampled (an experiment's data.interpolator)."""
    if PROFILE != "ci":
        return Path(builtin_dataset(map_type, target_map_type, image_size=DATA["image_size"], progress=False,
                                    interpolator=interpolator))
    data_dir = profile_data_dir()
    if not (data_dir / "simulation.json").exists():
        simulate(data_dir, subjects=DATA["subjects"], slices=DATA["slices"], size=DATA["size"],
                 maps=("T1", "T2"), seed=0, progress=False, overwrite=True)
    path = WORK / f"dataset-{map_type}{'-' + target_map_type if target_map_type else ''}.h5"
    if not path.exists():
        prepare_dataset(data_dir, path, source=SOURCE_LABEL, target=TARGET_LABEL, map_type=map_type,
                        target_map_type=target_map_type, test_subjects=2, register=True, seed=0, progress=False)
    return path


def profile_data_dir():
    """The simulated data folder behind profile_dataset (maps, paired truth, tissue labels)."""
    return WORK / "data" if PROFILE == "ci" else builtin_data_dir(progress=False)
'''

SHOW_MAPS = '''
def show_maps(rows, col_titles, label, vmax=None, dmax=None, title=None):
    """Rows of slices (name, (n, H, W) array, 'map' or 'diff'); every 'map' row shares one colour scale
    (0 to vmax), every 'diff' row one symmetric scale (-dmax to dmax); a colour bar per row."""
    maps = np.concatenate([np.ravel(a) for _, a, kind in rows if kind == "map"])
    vmax = vmax or float(np.percentile(maps[maps > 0], 99.5))
    diffs = [np.abs(a).ravel() for _, a, kind in rows if kind == "diff"]
    if diffs and dmax is None:
        nonzero = np.concatenate(diffs)
        nonzero = nonzero[nonzero > 0]
        dmax = float(np.percentile(nonzero, 99)) if nonzero.size else 1.0
    n = len(col_titles)
    fig, axes = plt.subplots(len(rows), n, figsize=(2.6 * n + 1.2, 2.5 * len(rows)), squeeze=False,
                             layout="constrained")
    for r, (name, images, kind) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            if kind == "diff":
                im = ax.imshow(images[c], cmap="RdBu_r", vmin=-dmax, vmax=dmax)
            else:
                im = ax.imshow(images[c], cmap="viridis", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0:
                ax.set_title(col_titles[c], fontsize=9)
        fig.colorbar(im, ax=list(axes[r]), shrink=0.9, label=label if kind == "map" else f"difference, {label}")
    if title:
        fig.suptitle(title)
    plt.show()


def spread_pick(values, k):
    """Indices of k entries spread evenly over those with at least 60 % of the largest value."""
    good = np.flatnonzero(values >= 0.6 * values.max())
    return good[np.linspace(0, len(good) - 1, min(k, len(good))).round().astype(int)]
'''

TRAIN_SETTINGS = '''
# Training of each profile. quick: the experiment file's own quick profile (64 x 64 slices, small
# networks, 4 epochs of 80 steps); ci: the same, shortened to 2 epochs of 8 steps; thesis: the
# experiment file as written (Experiment 3: 20 epochs of 270 steps at 256 x 256, hours on a CPU).
TRAIN = {"ci": {"quick": True, "overrides": {"train.epochs": 2, "train.steps_per_epoch": 8,
                                             "data.sample_slices": 2}},
         "quick": {"quick": True, "overrides": {}},
         "thesis": {"quick": False, "overrides": {}}}[PROFILE]
'''

RUN_HELPERS = '''
def experiment_config():
    """The experiment's settings for this profile, pointed at the dataset (DATASET or the profile's)."""
    cfg = load_experiment(EXPERIMENT, TRAIN["overrides"], quick=TRAIN["quick"])
    path = Path(DATASET) if DATASET else profile_dataset(cfg.data.map_type, cfg.data.target_map_type,
                                                          cfg.data.interpolator)
    return cfg.replace({"data.dataset": str(path), "data.image_size": PreparedDataset(path).image_size[0]})


def ensure_run(run_dir):
    """The run of notebook 02 in run_dir; trained here (same settings and API) when it is missing."""
    if not (run_dir / "checkpoints.csv").exists():
        print(f"No training run in {run_dir}: training one now with the {PROFILE!r} settings of notebook 02.")
        train_experiment(experiment_config(), out=run_dir, overwrite=True, verbose=2, progress=False)
    if not (run_dir / "selected.json").exists():
        write_selection(run_dir, select_checkpoint(run_dir, seed=SEED))
    return json.loads((run_dir / "selected.json").read_text())
'''


def setup_cell(imports="", settings=()):
    """The second code cell: imports, the profile's folder and data, and this notebook's settings.

    ``settings`` is a sequence of source pieces, each dedented on its own."""
    pieces = [textwrap.dedent(piece).strip("\n") for piece in settings]
    text = SETUP.format(imports=textwrap.dedent(imports).strip("\n") + "\n" if imports else "",
                        settings="".join("\n" + piece + "\n" for piece in pieces))
    return code(text)


# ----------------------------------------------------------------------------------------------
# 01: data and variability

NB01 = [
    md('''
    # 1. The data and how different the two scanners are

    This notebook measures how different the two scanners are **before** any harmonisation (thesis
    sections 2.3 and 3.1): corresponding slices of both scanners in ms, their average histograms
    (Fig. 7), the SSIM and NRMSE of corresponding slices (Table 2), and a small CNN trained to tell
    the scanners apart (Table 3), with Grad-CAM maps of where it looks (Figs. 9-12).

    The measuring is one call, `harmonize.assess.assess_dataset`; the command line gives the same
    with `harmonize assess --out DIR`. The cells below choose the data, call it, and explain the
    results.

    **Profiles.** The first code cell reads the environment variable `HARMONIZE_NOTEBOOK_PROFILE`:

    | profile | data | scanner classifier (Table 3) | time on a 2-core CPU |
    |---|---|---|---|
    | `quick` (default) | built-in dataset, 12 subjects, slices resampled to 64 x 64 | 1 run of 10 epochs per variant | 2-4 minutes, plus 2-3 minutes on first use to simulate and prepare the built-in dataset |
    | `ci` | 5 simulated subjects, 12 slices of 64 x 64 | 1 run of 1 epoch, full slices only | about a minute |
    | `thesis` | built-in dataset at its native 256 x 256 | 5 runs of 10 epochs on the native grid | hours |

    Files go to `<cache>/notebooks/<profile>/` (the cache is `$HARMONIZE_CACHE`, else
    `~/.cache/harmonize`), where notebooks 02-04 find them.
    '''),
    parameters('''
    DATA_DIR = None  # None: the simulated data; or your folder: DATA/<scanner>/<subject>.nii.gz (ms), or DICOM series
    SOURCE = None    # with DATA_DIR: scanner label of A, the source (None: the first in sorted order)
    TARGET = None    # with DATA_DIR: scanner label of B, the target (None: the other scanner)
    MAP_TYPE = "T1"  # with DATA_DIR: "T1", "T2" or "PD"
    '''),
    setup_cell(imports='''
    from harmonize.assess import assess_dataset, inputs_for_metadata
    from harmonize.explain import grad_cam
    from harmonize.metrics import paired_slice_metrics
    from harmonize.models.classifier import load_classifier
    from harmonize.prepare import format_summary
    ''', settings=('''
    # The variability assessment of each profile (harmonize.assess.assess_dataset arguments).
    # image_size: classifier input, longer side in pixels (0 = the native grid, as in the thesis).
    ASSESS = {"ci": {"runs": 1, "epochs": 1, "image_size": 64, "cropped": False},
              "quick": {"runs": 1, "epochs": 10, "image_size": 64, "cropped": True},
              "thesis": {"runs": 5, "epochs": 10, "image_size": 0, "cropped": True}}[PROFILE]
    ''',)),
    code(DATA_HELPERS + SHOW_MAPS),
    md('''
    ## The data

    With `DATA_DIR = None` the notebook uses the simulated two-scanner data that comes with harmonize
    (docs/simulator.md). Subjects are deformed copies of the MNI ICBM152 anatomy, each scanned once
    on "SIGNA" (A, the source scanner) and once on "Optima MR450w" (B, the target scanner). The
    scanners differ by effects of the size reported in the literature: a T1 bias of about 4 %, a
    smooth residual B1 field, noise level and texture, resolution and ringing, slice profile, and
    clipping of long T1. The two sessions of a subject also differ in head position, as real
    sessions do.

    Because the simulator knows the anatomy, it also writes the **paired truth**: each A session
    rendered, noise-free, with B's effects. This is what a perfect harmonisation of that session
    would return; notebook 03 measures errors against it.

    With your own maps, set `DATA_DIR` (and `SOURCE`, `TARGET`, `MAP_TYPE`). The cell below then
    prepares them once into one HDF5 file, as `harmonize prepare` does: slices in physical units,
    a train/test split by subject, head masks, registered copies, and the normalisation. Own data
    have no truth, so the truth-based cells are skipped.
    '''),
    code('''
    if DATA_DIR is None:
        DATASET = profile_dataset("T1")
    else:
        DATASET = WORK / "my_dataset.h5"
        summary = prepare_dataset(DATA_DIR, DATASET, source=SOURCE, target=TARGET, map_type=MAP_TYPE,
                                  image_size=DATA["image_size"], register=True, seed=SEED, progress=False)
        print(format_summary(summary))
        print(f"To train on these data, set DATASET = {str(DATASET)!r} in notebooks 02-04.")

    ds = PreparedDataset(DATASET)
    train, test = ds.split("train"), ds.split("test")
    print(f"{DATASET}\\nA = {ds.source}, B = {ds.target}; {ds.map_type_a} maps in {ds.units_a}; "
          f"{ds.image_size[0]} x {ds.image_size[1]} pixels of {ds.pixel_spacing_mm[0]:.2f} mm; "
          f"normalisation {ds.normalization.kind!r}")
    pd.DataFrame({"subjects": [", ".join(s.subjects) for s in (train, test)],
                  "A slices": [len(train.a), len(test.a)], "B slices": [len(train.b), len(test.b)],
                  "corresponding pairs": [len(train.pairs), len(test.pairs)]}, index=["train", "test"])
    '''),
    code('''
    simulation = profile_data_dir() / "simulation.json"
    if DATA_DIR is None and simulation.exists():
        sim = json.loads(simulation.read_text())
        print(f"Simulated scanner difference: mean |A - truth on B| / truth on B in the brain = "
              f"{100 * sim['mean_abs_rel_t1_diff']:.2f} % (T1), over {len(sim['subjects'])} subjects.")
        print("This is the difference a harmonisation has to remove; notebook 03 measures how much of it is left.")
    '''),
    md('''
    ## Corresponding slices of both scanners

    Below: the same subject and slice index from each scanner, in ms, on one colour scale. The
    difference B - A mixes two things: the scanner effect (a few percent) and anatomy, because the
    head sat differently in the two sessions (shift, rotation, and a through-plane offset of up to
    3 mm between slice k of one session and slice k of the other). For simulated data the last two
    rows separate them: the truth (A's own session as B would measure it) minus A is the scanner
    effect alone, drawn on the same difference scale.
    '''),
    code('''
    area = test.a.masks[test.pairs[:, 0]].sum(axis=(1, 2))
    shown = test.pairs[spread_pick(area, 3)]
    ia, ib = shown[:, 0], shown[:, 1]
    label = f"{ds.map_type_a} ({ds.units_a})"
    rows = [(f"A ({ds.source})", test.a.images[ia], "map"), (f"B ({ds.target})", test.b.images[ib], "map"),
            ("B - A (two sessions)", test.b.images[ib] - test.a.images[ia], "diff")]
    if test.a.truth is not None:
        rows += [("truth: A's session on B", test.a.truth[ia], "map"),
                 ("truth - A (scanner only)", test.a.truth[ia] - test.a.images[ia], "diff")]
    titles = [f"{s}, slice {k}" for s, k in zip(test.a.subjects[ia], test.a.slices[ia])]
    # differences on +-250 ms: the edges of B - A saturate; the scanner effect alone is tens of ms
    show_maps(rows, titles, label, dmax=250.0, title=f"Corresponding test slices, {label}")
    '''),
    md('''
    ## The assessment: Fig. 7, Table 2, Table 3 and Grad-CAM in one call

    `assess_dataset` uses every subject of both splits, as the thesis did. It writes each table as
    CSV, the figures as PNG and one `report.html`, and it saves the classifier of run 1 (full slices,
    before registration, trained on the dataset's *train* subjects only) so that notebook 03 can use
    it for Table 7 on the test subjects. The classifier sees slices split **by subject**: no subject
    has slices in both its training and its test set (the thesis split by image).
    '''),
    code('''
    result = assess_dataset(DATASET, WORK / "assess" / DATASET.stem, seed=SEED, verbose=True, **ASSESS)
    print("report:", result["report"])
    print("classifier for Table 7:", result["classifier"]["path"])
    '''),
    md('''
    ## Fig. 7: average histograms

    The histogram of each scanner's values inside the head masks, 500 bins, averaged over slices,
    before and after registration. In the thesis the two scanners' histograms looked alike; here too.
    Alike histograms do **not** mean alike scanners: a 4 % bias moves white matter by about 30 ms,
    a few bins, and noise or resolution barely change a histogram at all. The tissue means below
    (from the simulator's tissue labels) show the bias more directly, but they still compare two
    sessions, so they include partial-volume and positioning differences.
    '''),
    code('''
    hist = result["histograms"]
    centres = 0.5 * (hist["bin_low"] + hist["bin_high"])
    conditions = [c for c in ("before registration", "after registration") if f"A {c}" in hist]
    fig, axes = plt.subplots(1, len(conditions), figsize=(6 * len(conditions), 3.6), squeeze=False,
                             layout="constrained")
    for ax, condition in zip(axes[0], conditions):
        for dom, name in (("A", ds.source), ("B", ds.target)):
            ax.plot(centres, hist[f"{dom} {condition}"], lw=1, label=f"{dom} ({name})")
        ax.set_xlim(0, float(centres[hist[f"A {condition}"] > 0].max()) * 1.02)
        ax.set_xlabel(f"{ds.map_type_a} ({ds.units_a})")
        ax.set_ylabel("share of head voxels per bin")
        ax.set_title(f"Average histogram, {condition}")
        ax.legend()
    plt.show()
    result["histogram_summary"]
    '''),
    code('''
    result["tissue_means"] if result["tissue_means"] is not None else "no tissue labels in this dataset"
    '''),
    md('''
    ## Table 2: SSIM and NRMSE of corresponding slices

    Mean SSIM and NRMSE between slice k of a subject on A and slice k of the same subject on B,
    whole slices, before and after the in-plane registration (thesis: SSIM 0.80 / 0.81, NRMSE
    0.56 / 0.58). These numbers are **confounded by anatomy**: the two slices come from two sessions,
    so they differ by repositioning and through-plane offset as well as by the scanner, and an
    in-plane registration removes only part of that.

    The second table shows the size of the confound on the test subjects: the same two metrics for
    A against the truth (the same session, only the scanner effects differ) are much closer to a
    perfect 1 and 0 than A against B. So SSIM between sessions mostly measures how well the
    anatomy lines up, not the scanner difference, and it cannot show whether harmonisation worked.
    '''),
    code('''
    result["table2"]
    '''),
    code('''
    compare = "no paired truth in this dataset (own data)"
    if test.a.truth is not None:
        data_range = float(result["table2"].set_index("measure").loc["SSIM data range"].iloc[0])
        a, b = test.a.images[test.pairs[:, 0]], test.b.images[test.pairs[:, 1]]
        metrics = {"A vs B (two sessions: anatomy + scanner)": paired_slice_metrics(a, b, data_range),
                   "A vs truth on B (one session: scanner only)": paired_slice_metrics(test.a.images, test.a.truth,
                                                                                     data_range)}
        compare = pd.DataFrame(metrics).T[["ssim", "nrmse", "n_slices"]]
        compare.columns = ["mean SSIM", "mean NRMSE", "slices (test subjects)"]
    compare
    '''),
    md('''
    ## Table 3: can a small CNN tell the scanners apart?

    The thesis classifier (five 3x3 convolutions with 16-512 filters and 2x2 pooling, horizontal
    flips, batch 20) is trained to say which scanner a slice comes from, on full slices and on
    slices cropped around the head, before and after registration. Test accuracy is measured on
    subjects it never saw; 0.5 is chance. The thesis found 0.7-0.9 although the histograms looked
    alike: the scanners leave a learnable signature.

    What the accuracy does **not** say: which effect the network uses (bias, noise texture,
    resolution, field, background), or how large the difference is in ms. And an accuracy near 0.5
    only means "no signature found" when the classifier learned its training slices. With very
    short trainings (the `ci` profile) the training accuracy itself stays near 0.5: then the
    network simply did not learn, and the test accuracy says nothing about the scanners. A high
    training accuracy with a test accuracy near 0.5, or one scanner's slices nearly all called
    the other (`accuracy_A`, `accuracy_B`), means the network learned something about its
    training subjects that does not carry over. On 64-pixel slices (`ci`, `quick`) the
    resolution and ringing differences are averaged away; the `thesis` profile trains on the
    native grid.
    '''),
    code('''
    result["table3"]
    '''),
    code('''
    runs = result["table3_runs"]
    train_acc = float(runs["train_accuracy"].mean())
    verdict = ("the classifiers learned their training slices; the test accuracy on unseen subjects shows how much "
               "of what they learned is a scanner signature that carries over"
               if train_acc > 0.65 else
               "the classifiers did not even learn their training slices: too short a training for a verdict")
    print(f"mean training accuracy {train_acc:.2f}: {verdict}")
    runs[["run", "variant", "accuracy", "accuracy_A", "accuracy_B", "train_accuracy", "test_subjects", "seconds"]]
    '''),
    md('''
    ## Grad-CAM: where does the classifier look?

    Grad-CAM weighs the feature maps of the classifier's last convolution (`last_conv`) by how much
    they raise the score of the predicted scanner. Below: test slices of each scanner in ms as the
    classifier sees them (resampled to its input grid), and the Grad-CAM map on top (red = more
    evidence). The map has 1/16 of the input resolution: read it as a region, not a voxel map. The
    thesis found attention "on random areas with a preference for edges". `assess_dataset` saved
    the same kind of figure for the last run of every variant (`figures/fig9..12_gradcam_*.png`).
    '''),
    code('''
    model, meta = load_classifier(result["classifier"]["path"])
    norm = ds.normalization
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.4), layout="constrained")
    for d, (dom, name) in enumerate((("A", ds.source), ("B", ds.target))):
        split_dom = test.domain(dom)
        picks = spread_pick(split_dom.masks.sum(axis=(1, 2)).astype(float), 2)
        x = inputs_for_metadata(split_dom.images[picks], dom, meta, norm)
        heat, p_b = grad_cam(model, x, return_scores=True)
        seen = norm.from_network(x, dom)  # the classifier's input, back in physical units
        for k in range(len(picks)):
            ax_map, ax_cam = axes[0, 2 * d + k], axes[1, 2 * d + k]
            im = ax_map.imshow(seen[k], cmap="viridis", vmin=0, vmax=float(np.percentile(seen[seen > 0], 99.5)))
            ax_map.set_title(f"{dom} ({name}) {split_dom.subjects[picks[k]]} s{split_dom.slices[picks[k]]}\\n"
                             f"P(B) = {p_b[k]:.2f}", fontsize=9)
            ax_cam.imshow(seen[k], cmap="gray")
            cam = ax_cam.imshow(heat[k], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            for ax in (ax_map, ax_cam):
                ax.set_xticks([])
                ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label=f"{ds.map_type_a} ({ds.units_a})")
    fig.colorbar(cam, ax=list(axes[1]), shrink=0.8, label="Grad-CAM (relative)")
    fig.suptitle("Scanner classifier (run 1, full slices, before registration): input in ms and Grad-CAM")
    plt.show()
    '''),
    md('''
    ## What these results mean, and what they do not

    - **Histograms and tissue means** show the global value distribution. A harmonisation target
      of a few percent hides inside them; alike histograms are not evidence of alike scanners.
    - **Table 2** compares two sessions. It is dominated by anatomy and positioning, which the
      comparison with the truth makes visible; it is a poor yardstick for harmonisation.
    - **Table 3** shows whether a learnable scanner signature exists, provided the classifier
      learned. It gives neither the size of the difference in ms nor its cause.
    - **The truth** (simulated data only) is the one measure of the difference in ms without the
      anatomy confound; notebook 03 uses it to score harmonisation.

    Next: notebook 02 trains a CycleGAN experiment on the same dataset; notebook 03 uses the
    classifier saved here for Table 7.
    '''),
]


# ----------------------------------------------------------------------------------------------
# 02: train

NB02 = [
    md('''
    # 2. Train a harmonisation experiment

    This notebook trains one CycleGAN experiment of the thesis (Table 1), follows its losses, and
    picks a checkpoint with the thesis's epoch-selection rules. It is the notebook form of

    ```bash
    python -m harmonize.train --exp 3 --quick --out RUN_DIR
    harmonize select --run RUN_DIR
    ```

    **Profiles** (environment variable `HARMONIZE_NOTEBOOK_PROFILE`):

    | profile | training | time on a 2-core CPU |
    |---|---|---|
    | `quick` (default) | the experiment's own `quick` profile: 64 x 64 slices of the built-in dataset, small networks, 4 epochs of 80 steps | 2-4 minutes |
    | `ci` | the same, cut to 2 epochs of 8 steps | under a minute |
    | `thesis` | the experiment file as written (Experiment 3: 20 epochs of 270 steps of batch 1 at 256 x 256) | many hours on a CPU; use a GPU |

    The `quick` run shows the machinery (logs, checkpoints, selection), not a finished
    harmonisation: 320 steps of a small network are far too few, and notebook 03 shows that.
    The run goes to `<cache>/notebooks/<profile>/runs/exp<N>/`, where notebooks 03 and 04 find it.
    '''),
    parameters('''
    EXPERIMENT = 3    # 1-6: thesis Table 1; 7-16: recipe study; 15: recommended recipe (needs a dataset
                      # prepared with --register-volumes, see docs/recipe.md); or the path of your own experiment YAML
    DATASET = None    # None: the dataset of the profile (as in notebook 01); or the path of a prepared .h5
    RUN_MODE = "resume" if PROFILE == "thesis" else "new"  # "new": replace an earlier run; "resume": continue it
    '''),
    setup_cell(imports='''
    from harmonize.config import EXPERIMENTS_DIR, load_experiment
    from harmonize.errors import ConfigError
    from harmonize.select import select_checkpoint, write_selection
    from harmonize.train import train_experiment
    ''', settings=(TRAIN_SETTINGS, '''
    RUN_DIR = WORK / "runs" / f"exp{Path(str(EXPERIMENT)).stem.removeprefix('exp')}"
    ''')),
    code(DATA_HELPERS + RUN_HELPERS),
    md('''
    ## The experiments

    Each experiment is a YAML file in `experiments/`: data, networks, loss weights and training
    settings, plus a `quick` section that shrinks it for a CPU. The table lists them as the
    thesis's Table 1 does (weights of 0 switch a loss term off; "scanner D" is the extra
    discriminator of Experiment 3 that learns {A, fake A} against {B, fake B}).
    '''),
    code('''
    def experiment_number(path):
        digits = path.stem.removeprefix("exp")
        return int(digits) if digits.isdigit() else 10**6

    rows = []
    for path in sorted(EXPERIMENTS_DIR.glob("exp*.yaml"), key=experiment_number):
        c = load_experiment(path)
        rows.append({"exp": c.name, "batch": c.train.batch_size, "epochs": c.train.epochs,
                     "G": c.model.generator, "adv": c.loss.adversarial, "cycle": c.loss.cycle,
                     "identity": c.loss.identity, "SSIM": c.loss.ssim, "scanner D": c.loss.scanner,
                     "paired": c.data.paired, "registered": c.data.registered, "augment": c.data.augment,
                     "maps A->B": f"{c.data.map_type}->{c.data.map_type_b}", "what it tests": c.description})
    pd.DataFrame(rows).set_index("exp")
    '''),
    md('''
    ## The settings of this run

    The experiment file, its `quick` section (profiles `quick` and `ci`), the profile's overrides,
    and the dataset. `config.yaml` in the run folder records exactly this, plus the data and
    software versions.
    '''),
    code('''
    cfg = experiment_config()
    print(cfg.to_yaml())
    '''),
    md('''
    ## Training

    Each step updates both generators (G: A -> B, F: B -> A) and the discriminators. The run
    folder receives, as training goes:

    - `losses.csv` (every step) and `losses_epoch.csv` (epoch means): the quantities of thesis
      Table 4; with a paired truth also `val_mae_a2b`, the error of G(A) against the truth in ms
      on the test subjects;
    - `g_AtoB_<step>.h5`, `g_BtoA_<step>.h5`: generators saved every `checkpoint_every` epochs, at
      the end, and whenever a thesis rule fires (a discriminator's loss on fakes above 0.3, or both
      generator losses below 1), listed in `checkpoints.csv`;
    - `loss_curves.png`, `samples/epoch_<E>.png`, and `state/` to continue with `RUN_MODE = "resume"`.
    '''),
    code('''
    resume = RUN_MODE == "resume" and (RUN_DIR / "config.yaml").exists()
    run = train_experiment(cfg, out=RUN_DIR, resume=resume, overwrite=not resume, verbose=2, progress=False)
    print(run.summary())
    '''),
    md('''
    ## Loss curves

    The adversarial losses are least squares (LSGAN). A discriminator that cannot tell real from
    fake answers 0.5 for everything and scores 0.25 on both; one that wins drives its real and fake
    losses towards 0, and the generator's adversarial term towards 1. The thesis looked for a
    balance: discriminator losses on real images of 0.01-0.15 and on fakes above 0.1, generator
    totals below 1.5 and similar in both directions. The generator totals are weighted sums, so the
    cycle term (weight 10) dominates them early on. Thin lines: every step; markers: epoch means;
    dotted: the thesis thresholds.
    '''),
    code('''
    steps = pd.read_csv(RUN_DIR / "losses.csv")
    epochs = pd.read_csv(RUN_DIR / "losses_epoch.csv")
    panels = [("Discriminators D_A, D_B (LSGAN)", ["d_a_real", "d_a_fake", "d_b_real", "d_b_fake"], [0.3]),
              ("Generator totals (weighted)", ["g_a2b_total", "g_b2a_total"], [1.0, 1.5]),
              ("Generator terms A->B (unweighted)", ["g_a2b_adv", "g_a2b_cycle", "g_a2b_identity", "g_a2b_ssim",
                                                     "g_a2b_scanner"], [])]
    if "val_mae_a2b" in epochs:
        panels.append(("Error of G(A) against the truth, test subjects (ms)",
                       ["val_mae_a2b", "val_mae_a2b_identity"], []))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True, layout="constrained")
    for ax, (title, keys, lines) in zip(axes, panels):
        for j, key in enumerate(k for k in keys if k in steps or k in epochs):
            if key in steps:
                ax.plot(steps["step"], steps[key], color=f"C{j}", lw=0.6, alpha=0.4)
            if key in epochs:
                ax.plot(epochs["step"], epochs[key], color=f"C{j}", marker="o", ms=3, label=key)
        for y in lines:
            ax.axhline(y, color="k", ls=":", lw=0.8)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel("ms" if title.startswith("Error") else "loss")
        ax.legend(fontsize=7, ncol=3)
    axes[-1].set_xlabel("training step")
    plt.show()
    epochs
    '''),
    md('''
    In the truth panel (simulated data), `val_mae_a2b_identity` is the error of doing nothing
    (A compared with its truth on B): a generator helps only where its curve lies below that line.

    ## Sample grids

    After each epoch the run draws the same test slices: A, fake B = G(A), B, fake A = F(B), in ms
    on a colour scale fixed for the whole run, so the grids of different epochs compare by eye.
    The last one:
    '''),
    code('''
    last = sorted((RUN_DIR / "samples").glob("epoch_*.png"), key=lambda p: int(p.stem.split("_")[-1]))[-1]
    image = plt.imread(last)
    fig, ax = plt.subplots(figsize=(11, 11 * image.shape[0] / image.shape[1]))
    ax.imshow(image)
    ax.set_axis_off()
    ax.set_title(f"{last.name} (colour bars in ms)")
    plt.show()
    '''),
    md('''
    ## Choosing the checkpoint (thesis 2.4)

    The thesis picked its test epoch from the logged losses: among the checkpoints in the second
    half of training, both generator totals below 1.5 and balanced, both discriminators' losses on
    real images in 0.01-0.15, their losses on fakes above 0.1 where possible; then a random one of
    those that pass. `select_checkpoint` applies these rules to the epoch means and, when no
    checkpoint passes them all, relaxes them in a documented order; `reason` says what was used.
    The choice goes to `selected.json`, which notebooks 03 and 04 read.

    These rules select for a balanced *game*, not for correct maps in ms. With a paired truth the
    alternative is `by="metric"` (lowest `val_mae_a2b`), shown below for comparison only: it uses
    the test subjects, so the test errors of a checkpoint chosen that way are optimistic.
    '''),
    code('''
    selection = select_checkpoint(RUN_DIR, seed=SEED)
    write_selection(RUN_DIR, selection)
    print(f"selected step {selection['step']} (epoch {selection['epoch']}): {selection['g_AtoB']}")
    print(f"rule level {selection['rule']!r}: {selection['reason']}")
    pd.DataFrame([{"step": c["step"], "epoch": c["epoch"], **c["losses"], "rules failed": ", ".join(c["failed"]) or "-"}
                  for c in selection["checked"]])
    '''),
    code('''
    try:
        by_metric = select_checkpoint(RUN_DIR, by="metric", metric="val_mae_a2b")
        print(f"by the truth metric: step {by_metric['step']} (epoch {by_metric['epoch']}); {by_metric['reason']}")
    except ConfigError as err:  # no paired truth: no validation metric was logged
        print(err)
    '''),
    md('''
    ## Next

    Notebook 03 validates the selected checkpoint (thesis Tables 4-7, errors against the truth and
    the classical baselines); notebook 04 applies its generator to new NIfTI and DICOM scans. To
    train another experiment, set `EXPERIMENT` and run this notebook again; each experiment has its
    own run folder. For the thesis settings set `HARMONIZE_NOTEBOOK_PROFILE=thesis` (hours), or
    run `python -m harmonize.train --exp 3` on a GPU machine.
    '''),
]


# ----------------------------------------------------------------------------------------------
# 03: validate

NB03 = [
    md('''
    # 3. Validate a trained run

    This notebook validates the checkpoint chosen in notebook 02 on the test subjects: the thesis
    quantities (Table 4 losses, Tables 5 and 6 similarity of the six image pairs, Table 7 scanner
    classifier, Fig. 16 histograms), and what the thesis could not measure: the error of the
    harmonised maps **against the truth in ms**, next to no harmonisation and three classical
    baselines. It is the notebook form of `harmonize evaluate --run RUN_DIR`.

    If notebook 02 has not run for this profile, the next cells train the same short run first
    (with the `thesis` profile that is hours: run notebook 02 first). The classifier for Table 7
    is the one notebook 01 saved for the dataset; without it, one is trained here on the train
    subjects.

    | profile | run | time on a 2-core CPU |
    |---|---|---|
    | `quick` (default) | the quick run of notebook 02 | 1-2 minutes (plus the run and the classifier if missing) |
    | `ci` | the ci run of notebook 02 | under a minute |
    | `thesis` | the thesis run of notebook 02 | 10-20 minutes |
    '''),
    parameters('''
    EXPERIMENT = 3    # the experiment trained in notebook 02
    RUN_DIR = None    # None: the run of notebook 02 for this profile; or the folder of any 'harmonize train' run
    CHECKPOINT = None  # None: selected.json; or a step number of checkpoints.csv
    BASELINES = ("none", "linear", "histmatch", "nyul")  # classical methods in the truth table
    DATASET = None    # only used when a run must be trained here (as in notebook 02)
    '''),
    setup_cell(imports='''
    from harmonize.apply import load_generator
    from harmonize.assess import find_classifier, train_dataset_classifier
    from harmonize.config import load_experiment
    from harmonize.evaluate import evaluate_run, resolve_run_dataset
    from harmonize.select import select_checkpoint, write_selection
    from harmonize.train import train_experiment
    ''', settings=(TRAIN_SETTINGS, '''
    # The Table-7 classifier, when notebook 01 has not saved one for the dataset (assess settings).
    CLASSIFIER = {"ci": {"epochs": 2, "image_size": 64},
                  "quick": {"epochs": 10, "image_size": 64},
                  "thesis": {"epochs": 10, "image_size": 0}}[PROFILE]
    RUN_DIR = Path(RUN_DIR) if RUN_DIR else WORK / "runs" / f"exp{Path(str(EXPERIMENT)).stem.removeprefix('exp')}"
    ''')),
    code(DATA_HELPERS + RUN_HELPERS + SHOW_MAPS),
    code('''
    selected = ensure_run(RUN_DIR)
    print(f"run {RUN_DIR}\\nselected: step {selected['step']} (epoch {selected['epoch']}); {selected['reason']}")

    data_path, found_in = resolve_run_dataset(RUN_DIR, progress=False)
    ds = PreparedDataset(data_path)
    classifier = find_classifier(ds)
    if classifier is None:
        classifier = WORK / f"classifier-{data_path.stem}.h5"
        train_dataset_classifier(ds, data_path, classifier, seed=SEED, verbose=True, **CLASSIFIER)
    print(f"dataset {data_path} (from {found_in})\\nclassifier {classifier}")
    '''),
    md('''
    ## Evaluation

    On the dataset's test subjects, fake B = G(A) and fake A = F(B) are computed in physical units
    exactly as `harmonize apply` computes them, and every table below is written as CSV beside a
    `report.html` in `<run>/evaluation/`. The baselines are fitted on the *train* subjects and
    applied to the test A maps: `none` (A as it is), `linear` (a line that gives A's values the mean
    and standard deviation of B's), `histmatch` (quantile mapping of the pooled histograms) and
    `nyul` (Nyul-Udupa piecewise-linear landmark standardisation, per subject).
    '''),
    code('''
    res = evaluate_run(RUN_DIR, checkpoint=CHECKPOINT, classifier=classifier, baselines=BASELINES, seed=SEED,
                       verbose=True)
    info = dict(zip(res["info"]["key"], res["info"]["value"]))
    units = info["units"]
    print(f"checkpoint: step {info['step']} ({info['checkpoint_source']}); test subjects {info['test_subjects']}")
    print("report:", info["report"])
    for note in filter(None, info["notes"].split(" | ")):
        print("note:", note)
    '''),
    md('''
    ## Table 4: losses at the chosen checkpoint

    The logged losses at the checkpoint's step and their mean over its epoch (thesis Table 4 lists
    one value per quantity). They describe the state of the adversarial game: discriminators that
    still separate real from fake (low losses) or that are fooled (around 0.25 and above). They
    say nothing direct about the maps in ms: the thesis reported balanced losses for experiments
    whose fakes the classifier never accepted.
    '''),
    code('''
    res["table4"]
    '''),
    md('''
    ## Tables 5 and 6: correlation, mutual information, SSIM and NRMSE of six image pairs

    Over corresponding test slices (same subject and slice index on both scanners): A, B, fake A =
    F(B) and fake B = G(A). In the thesis the best scores were always A-fake B and B-fake A, and
    this is expected: fake B *is* A's session (same anatomy) with a small change, so A-fake B
    mostly measures how well the generator **preserves anatomy**. The pair one might hope to see
    improve, B-fake B, compares two sessions and is confounded by anatomy and positioning (as
    Table 2 in notebook 01 showed). None of these pairs measures whether fake B has B's values.
    '''),
    code('''
    res["table5"]
    '''),
    code('''
    res["table6"]
    '''),
    md('''
    ## Table 7: does the scanner classifier call fake B "B"?

    The classifier trained on real slices (notebook 01) judges real A, real B, fake B and fake A of
    the test subjects. "Fooling rate" (`relative to real`) is the share of fake B called B divided
    by the share of real B called B. In the thesis, fake B was called A in almost every case.

    A high fooling rate is **not** proof of harmonisation: a generator can learn whatever cue this
    one small network uses (a texture, the background, the edge) without getting the T1 values
    right, and a classifier that is near chance on real slices (check the first rows) calls
    everything at random. A low rate only says that some signature of A survives.
    '''),
    code('''
    res["table7"]
    '''),
    md('''
    ## Fig. 16: histograms

    Average histograms of the test maps (inside the head masks): A, B, fake A, fake B and, for
    simulated data, the truth on B. The thesis saw the fake histograms shifted; a matching histogram
    is necessary for a good harmonisation but far from sufficient (histogram matching achieves it
    by construction, whatever happens to each voxel).
    '''),
    code('''
    hist = res["histograms"]
    centres = 0.5 * (hist["bin_low"] + hist["bin_high"])
    fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
    for name in [c for c in hist.columns if c not in ("bin_low", "bin_high")]:
        ax.plot(centres, hist[name], lw=1.4 if name == "true B" else 0.9, ls="--" if name == "true B" else "-",
                label=name)
    ax.set_xlim(0, float(centres[(hist.drop(columns=["bin_low", "bin_high"]) > 0).any(axis=1)].max()))
    ax.set_xlabel(f"{info['map_type']} ({units})")
    ax.set_ylabel("share of head voxels per bin")
    ax.set_title(f"Average histograms of the test maps ({units})")
    ax.legend()
    plt.show()
    '''),
    md('''
    ## The maps

    Test slices of A, the harmonised fake B = G(A) and, with simulated data, the truth (A's session
    as B would measure it), in ms on one colour scale, and the differences on one symmetric scale:
    the error left after harmonisation (fake B - truth) beside the error before it (A - truth).
    Structure in the error map (edges, a global offset, blur) shows what the generator gets wrong.
    '''),
    code('''
    test = ds.split("test")
    generator = load_generator(info["g_AtoB"])
    picks = spread_pick(test.a.masks.sum(axis=(1, 2)).astype(float), 4)
    a = test.a.images[picks]
    fake_b = generator.harmonize(a, mask=test.a.masks[picks].astype(bool))
    label = f"{info['map_type']} ({units})"
    rows = [(f"A ({ds.source})", a, "map"), ("fake B = G(A)", fake_b, "map")]
    if test.a.truth is not None:
        truth = test.a.truth[picks]
        rows += [("truth on B", truth, "map"), ("fake B - truth", fake_b - truth, "diff"),
                 ("A - truth", a - truth, "diff")]
    else:
        rows += [("fake B - A", fake_b - a, "diff")]
    titles = [f"{s}, slice {k}" for s, k in zip(test.a.subjects[picks], test.a.slices[picks])]
    show_maps(rows, titles, label, title=f"Step {info['step']}: test slices, {label}")
    '''),
    md('''
    ## Errors against the truth: the table that measures harmonisation

    For simulated data, every method's output for the test A maps is compared with the truth in the
    brain (CSF, GM and WM labels): MAE in ms, mean relative error, the bias of the mean in percent,
    the same per tissue, SSIM against the truth (same anatomy, so here SSIM is meaningful), and the
    share the classifier calls B. `none (A unharmonised)` is the starting point: a method helps
    where it beats that row. This is the measure the thesis asked for (perfectly matched anatomy)
    and could not have; the baselines show what a simple global mapping already achieves.
    '''),
    code('''
    if "truth_summary" in res:
        summary = res["truth_summary"]
        columns = ["method", "mae", "rel_error_pct", "bias_pct", "bias_pct_CSF", "bias_pct_GM", "bias_pct_WM",
                   "ssim", "called B by classifier"]
        shown_summary = summary[[c for c in columns if c in summary]].set_index("method")
    else:
        shown_summary = "no paired truth in this dataset (own data): only the thesis tables above apply"
    shown_summary
    '''),
    code('''
    if "truth_summary" in res:
        tissues = [t for t in ("CSF", "GM", "WM") if f"bias_pct_{t}" in summary]
        width = 0.8 / len(summary)
        fig, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
        for i, row in summary.reset_index(drop=True).iterrows():
            ax.bar(np.arange(len(tissues)) + i * width, [row[f"bias_pct_{t}"] for t in tissues], width,
                   label=row["method"])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(tissues)) + width * (len(summary) - 1) / 2, tissues)
        ax.set_ylabel("bias of the tissue mean against the truth (%)")
        ax.set_title(f"Tissue-mean {info['map_type']} bias after each method (0 = perfect)")
        ax.legend(fontsize=8)
        plt.show()
    res["truth"].set_index(["method", "subject"])[["mae", "bias_pct", "ssim"]] if "truth" in res else None
    '''),
    md('''
    ## What the numbers mean, and what they do not

    - **Table 4** describes the training game, not the maps.
    - **Tables 5-6** between A and fake B measure anatomy preservation; between B and fake B they
      are confounded by two sessions' anatomy. They cannot show whether the values were harmonised.
    - **Table 7** tells whether one classifier's cue was removed. A fooling rate near 1 is not proof
      of harmonisation, and with a classifier at chance on real slices it means nothing at all.
    - **Histograms** must match after a good harmonisation, but matching histograms are easy to get
      and do not prove that each voxel is right.
    - **The truth table** is what measures harmonisation: the error in ms left in each tissue,
      against doing nothing and against simple baselines. It exists only where a truth exists (the
      simulated data); on real data the thesis quantities are all there is, read with the caveats
      above. Simulated scanner effects are one parametric model; a method tuned to them may do less
      well on a real scanner pair (`harmonize simulate --scanners alternative` gives another one).

    The `quick` run is far too short to harmonise: expect its CycleGAN row to be worse than `none`.
    Longer training (profile `thesis`, or `python -m harmonize.train --exp N` on a GPU) is where
    the comparison with the baselines becomes informative.
    '''),
]


# ----------------------------------------------------------------------------------------------
# 04: apply

NB04 = [
    md('''
    # 4. Harmonise new scans

    This notebook loads a saved generator (`g_AtoB_<step>.h5`) and harmonises scans it has never
    seen: one NIfTI volume with the Python API and one DICOM series with the `harmonize apply`
    command, then compares them before and after, in ms. Output maps keep the input's units and
    voxel grid and, for DICOM, its header tags: only the UIDs, the description, the derivation and
    the rescale change.

    The generator is the checkpoint chosen in notebook 02 (trained here first if that run is
    missing, with the same settings), or any file given in `GENERATOR`. The new scans are a newly
    simulated subject (another seed than the training data) with its paired truth, or your own
    files in `NIFTI_INPUT` / `DICOM_INPUT`.

    | profile | new scans | time on a 2-core CPU |
    |---|---|---|
    | `quick` (default) | one subject, 27 slices of 256 x 256 (the generator works on 64 x 64) | about a minute |
    | `ci` | one subject, 8 slices of 96 x 96 | under a minute |
    | `thesis` | one subject, 27 slices of 256 x 256 | about a minute |
    '''),
    parameters('''
    EXPERIMENT = 3     # the experiment trained in notebook 02
    GENERATOR = None   # None: the selected g_AtoB of notebook 02's run; or the path of any saved g_AtoB_*.h5
    NIFTI_INPUT = None  # None: a newly simulated subject; or your map file (.nii.gz / .nii / .npy / .npz) in ms or %
    DICOM_INPUT = None  # None: the same new subject as a DICOM series; or the folder of your DICOM series
    DATASET = None     # only used when a run must be trained here (as in notebook 02)
    '''),
    setup_cell(imports='''
    from harmonize.apply import load_generator
    from harmonize.cli import main as harmonize_cli
    from harmonize.config import load_experiment
    from harmonize.io.dicom import read_dicom_series
    from harmonize.io.nifti import read_map, write_map
    from harmonize.metrics import TISSUE_LABELS, truth_error_table
    from harmonize.select import select_checkpoint, write_selection
    from harmonize.train import train_experiment
    ''', settings=(TRAIN_SETTINGS, '''
    # The new scans: a subject simulated with another seed than the training data (never seen).
    NEW_SCAN = {"ci": {"size": 96, "slices": 8}, "quick": {"size": 256, "slices": 27},
                "thesis": {"size": 256, "slices": 27}}[PROFILE]
    RUN_DIR = WORK / "runs" / f"exp{Path(str(EXPERIMENT)).stem.removeprefix('exp')}"
    OUT = WORK / "harmonised"
    ''')),
    code(DATA_HELPERS + RUN_HELPERS + SHOW_MAPS),
    md('''
    ## The generator

    A saved generator is a Keras `.h5` file with a JSON attribute that says what it does: its
    direction, the scanners, the map type and units of its input and output, its image size and
    training pixel spacing, and the normalisation that turns ms into the network range and back.
    `load_generator` reads both; nothing else is needed to apply it.
    '''),
    code('''
    if GENERATOR is None:
        selected = ensure_run(RUN_DIR)
        GENERATOR = RUN_DIR / selected["g_AtoB"]
    gen = load_generator(GENERATOR)
    print(gen)
    keys = ["direction", "source_label", "target_label", "input_map_type", "input_units", "output_map_type",
            "output_units", "image_size", "pixel_spacing_mm", "normalization", "experiment", "step", "epoch"]
    pd.Series({k: gen.metadata.get(k) for k in keys}, name=Path(GENERATOR).name).to_frame()
    '''),
    md('''
    ## New scans

    A new subject is simulated (seed 1000 + `SEED`; the training data use seed 0, so anatomy,
    tissue values and head position are all new) on scanner A, once as NIfTI and once as a DICOM
    series with the same values. The simulator also writes its truth on scanner B and its tissue
    labels, so the result can be checked in ms.
    '''),
    code('''
    new_nifti, new_dicom = WORK / "new_scans" / "nifti", WORK / "new_scans" / "dicom"
    for folder, fmt in ((new_nifti, "nifti"), (new_dicom, "dicom")):
        if not (folder / "simulation.json").exists():
            simulate(folder, subjects=1, slices=NEW_SCAN["slices"], size=NEW_SCAN["size"], fmt=fmt,
                     maps=(gen.input_map_type,), seed=1000 + SEED, progress=False, overwrite=True)
    simulated_input = NIFTI_INPUT is None
    if NIFTI_INPUT is None:
        NIFTI_INPUT = new_nifti / SOURCE_LABEL / "sub01.nii.gz"
    if DICOM_INPUT is None:
        DICOM_INPUT = new_dicom / "dicom" / SOURCE_LABEL / "sub01" / gen.input_map_type
    if simulated_input and gen.source_label not in (None, SOURCE_LABEL):
        print(f"note: the generator was trained on {gen.source_label} -> {gen.target_label}, "
              f"the simulated scans come from {SOURCE_LABEL}")
    print(NIFTI_INPUT, DICOM_INPUT, sep="\\n")
    '''),
    md('''
    ## A NIfTI volume, with the Python API

    `read_map` gives a `MapVolume` (values in ms plus the geometry); `gen.harmonize` returns one of
    the same kind on the same grid. Slices whose size differs from the generator's grid are
    resampled to its training pixel spacing, harmonised, and the network's *change* is resampled
    back and added to the input, so the input keeps its own detail. The head mask keeps the
    background at 0.
    '''),
    code('''
    volume = read_map(NIFTI_INPUT, gen.input_map_type)
    harmonised = gen.harmonize(volume)
    out_nifti = write_map(harmonised, OUT / "nifti" / Path(NIFTI_INPUT).name)
    written = read_map(out_nifti, gen.output_map_type)
    pd.DataFrame({"input": [volume.shape, volume.spacing, volume.origin, float(volume.array.max())],
                  "written output": [written.shape, written.spacing, written.origin, float(written.array.max())]},
                 index=["shape (slices, rows, cols)", "spacing (mm)", "origin (mm)", f"max ({gen.output_units})"])
    '''),
    md('''
    ### Before and after, in ms

    For the simulated subject the truth is known: the same session as scanner B would have
    measured it. The difference maps share one symmetric scale: the error before harmonisation
    (A - truth, the scanner difference) and after it (harmonised - truth), next to the change the
    generator made (harmonised - A).
    '''),
    code('''
    truth_file = new_nifti / "_truth" / TARGET_LABEL / "sub01.nii.gz"
    labels_file = new_nifti / "_tissue" / SOURCE_LABEL / "sub01_labels.nii.gz"
    # the truth is a map of the input's type: it can judge a generator that keeps the map type (not T1 -> T2)
    has_truth = simulated_input and truth_file.exists() and gen.input_map_type == gen.output_map_type
    picks = spread_pick((volume.array > 0).sum(axis=(1, 2)).astype(float), 3)
    label = f"{gen.output_map_type} ({gen.output_units})"
    rows = [("A (input)", volume.array[picks], "map"), ("harmonised", harmonised.array[picks], "map")]
    if has_truth:
        truth = read_map(truth_file, gen.output_map_type).array
        rows += [("truth on B", truth[picks], "map"), ("A - truth", (volume.array - truth)[picks], "diff"),
                 ("harmonised - truth", (harmonised.array - truth)[picks], "diff")]
    rows.append(("harmonised - A", (harmonised.array - volume.array)[picks], "diff"))
    show_maps(rows, [f"slice {k}" for k in picks], label, title=f"{Path(NIFTI_INPUT).name}: before and after, {label}")
    '''),
    md('''
    The same comparison as numbers, in the brain (CSF, GM and WM of the tissue labels): MAE in ms,
    bias of the mean in percent overall and per tissue, SSIM against the truth. A short `quick` or
    `ci` training usually makes the maps *worse* than doing nothing; these numbers are the check
    to run before trusting any generator on new scans.
    '''),
    code('''
    if has_truth:
        tissue = read_map(labels_file, "T1").array.astype(np.uint8)  # read as a plain volume of labels
        brain = np.isin(tissue, list(TISSUE_LABELS))
        table = truth_error_table({"before: A as measured": volume.array, "after: harmonised": harmonised.array},
                                  truth, brain, tissue=tissue)
        columns = ["method", "mae", "bias_pct", "bias_pct_CSF", "bias_pct_GM", "bias_pct_WM", "ssim"]
        shown = table[columns].set_index("method")
    else:
        shown = "no truth to compare with (own data, or a generator that changes the map type)"
    shown
    '''),
    md('''
    ## A DICOM series, with the `harmonize apply` command

    The command takes a series folder (or a whole tree of series and map files) and writes a new
    series: every original tag is kept, the Series and SOP Instance UIDs are new, the
    SeriesDescription ends in "harmonized to <scanner>", the first ImageType value is DERIVED, and the
    RescaleSlope/Intercept store the new values to the precision of the original series.
    `harmonize.cli.main` runs the command from Python and returns its exit status.
    '''),
    code('''
    out_dicom = OUT / "dicom"
    status = harmonize_cli(["apply", "--generator", str(GENERATOR), str(DICOM_INPUT), str(out_dicom),
                            "--overwrite", "--no-progress"])
    if status != 0:
        raise RuntimeError(f"harmonize apply failed with status {status} (message above)")
    original = read_dicom_series(DICOM_INPUT, gen.input_map_type)
    # (a generator that changes the map type, T1 -> T2 in Experiment 6, keeps the input series' map-type tags)
    result = read_dicom_series(out_dicom, gen.output_map_type, check_type=gen.input_map_type == gen.output_map_type)
    tags = ["PatientID", "ManufacturerModelName", "SeriesDescription", "ImageType", "SeriesInstanceUID",
            "RescaleSlope", "RescaleIntercept", "DerivationDescription"]
    pd.DataFrame({"original": [str(original.dicom[0].get(t, "")) for t in tags],
                  "harmonised": [str(result.dicom[0].get(t, "")) for t in tags]}, index=tags)
    '''),
    md('''
    For the simulated subject the DICOM route and the NIfTI route harmonise the same maps; they
    differ only by the storage precision of the DICOM values (integers with a rescale slope), in
    the input and again in the output. Below: the middle slice of the series before and after.
    '''),
    code('''
    same_grid = result.shape == harmonised.shape
    if simulated_input and same_grid:
        gap = np.abs(result.array - harmonised.array)
        print(f"DICOM vs NIfTI result: max |difference| {gap.max():.2f} {gen.output_units}, "
              f"mean {gap[harmonised.array > 0].mean():.3f} {gen.output_units} "
              f"(input storage step {original.meta['rescale'][0][0]:g} {gen.units})")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    k = len(original.array) // 2
    same_type = gen.input_map_type == gen.output_map_type
    both = np.concatenate([original.array.ravel(), result.array.ravel()])
    for axis, (name, vol) in zip(ax, (("original DICOM", original), ("harmonised DICOM", result))):
        values = both if same_type else vol.array.ravel()  # one colour scale unless the map type changed
        im = axis.imshow(vol.array[k], cmap="viridis", vmin=0, vmax=float(np.percentile(values[values > 0], 99.5)))
        axis.set_title(f"{name}, slice {k}")
        axis.set_axis_off()
        fig.colorbar(im, ax=axis, shrink=0.8, label=f"{vol.map_type} ({vol.units})")
    plt.show()
    '''),
    md('''
    ## Before using a generator on real scans

    - A generator knows one scanner pair, one map type and the anatomy range of its training data.
      Maps of another map type are refused; maps in other units (T1 in seconds, PD as a fraction)
      are refused too.
    - Whether it *helps* is a question for notebook 03's truth table (simulated data) or, for real
      data, for a study with repeated scans of the same subjects on both scanners. The thesis
      quantities (similarity, classifier) cannot answer it.
    - Inputs of another size or pixel spacing are resampled to the training spacing; very
      different resolutions (e.g. a generator trained at 3.75 mm applied to 0.94 mm maps, as in
      the `quick` profile) correct only the coarse part of the scanner difference.
    '''),
]


NOTEBOOKS = {
    "01_data_and_variability.ipynb": NB01,
    "02_train_experiment.ipynb": NB02,
    "03_validate.ipynb": NB03,
    "04_harmonise_new_scans.ipynb": NB04,
}


def build(name, cells):
    """The nbformat notebook of ``cells``, outputs cleared, with stable cell ids."""
    nb = new_notebook()
    stem = name.split("_")[0]
    for i, cell in enumerate(cells):
        if cell[0] == "md":
            c = new_markdown_cell(cell[1])
        else:
            c = new_code_cell(cell[1])
            c.execution_count = None
            c.outputs = []
            if cell[2]:
                c.metadata["tags"] = list(cell[2])
        c["id"] = f"nb{stem}-{i:02d}"
        nb.cells.append(c)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    nb.metadata["execution"] = {"timeout": CELL_TIMEOUT_S}
    nbformat.validate(nb)
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare the stored notebooks with this source")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(name, cells)) + "\n"
        path = NOTEBOOK_DIR / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        NOTEBOOK_DIR.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"out of date (run python tools/make_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
