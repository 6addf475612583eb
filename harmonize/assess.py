"""Measure how different the two scanners are, before any harmonisation (thesis 2.3 and 3.1).

    harmonize assess [--data DATASET.h5] --out DIR [--runs 5] [--epochs 10] [--batch-size 20]
                     [--seed 0] [--image-size 128] [--no-cropped]

Without --data the built-in two-scanner dataset is used (created and cached on first use).
All slices of both splits (every subject) are used, as in the thesis.

What it measures (files in DIR; every table also as CSV; report.html gathers them):
  Fig. 7    figures/fig7_histograms.png   average 500-bin histograms of each scanner in physical
            units (inside the head masks), before and after registration; histograms.csv,
            histogram_summary.csv (mean, percentiles, overlap of the two histograms) and, when
            the dataset has tissue labels, tissue_means.csv (mean CSF/GM/WM value per scanner).
  Table 2   table2_ssim_nrmse.csv         mean SSIM and NRMSE of corresponding slices (same subject,
            same slice index) of the two scanners, whole slices, before and after registration
            (and after 3-D registration: each A slice against its counterpart, for datasets
            prepared with --register-volumes); scikit-image metrics with the data range stated.
  Table 3   table3_accuracy.csv (runs x variants + mean) and table3_runs.csv (one row per trained
            classifier): the scanner classifier of thesis 2.3 (conv 16-32-128-256-512, 3x3, 2x2
            pooling, flip augmentation, --epochs 10, --batch-size 20, 80/20 split) trained --runs
            times on full and cropped slices, before and after registration. Split by SUBJECT: no
            subject has slices in both train and test (the thesis split by image, which lets the
            classifier see other slices of a test subject during training). Run 1 uses the
            dataset's own train/test subjects; later runs draw new 80/20 subject splits.
            Cropped: a box around the pixels that are brain (tissue labels, else head masks)
            in at least half of all slices, cut on the original grid, not stretched.
            table3_auc.csv: the ROC AUC of P(B) on the test slices (threshold-free).
  Fig. 8    figures/fig8_examples_*.png   test slices of the last run with P(A), P(B).
  Figs 9-12 figures/fig9..12_gradcam_*.png Grad-CAM maps on the last conv layer for random test
            slices of each scanner (last run); gradcam.csv: share of each map inside the head and
            in its 3-pixel border band.
  classifier.h5  the run-1 classifier on full slices before registration (trained on the dataset's
            train subjects, so the dataset's test subjects are unseen): `harmonize evaluate` uses
            it for thesis Table 7. Its location is recorded in <cache>/classifiers.json.

Classifier input size (--image-size): slices are resampled (anti-aliased) so their longer side
has N pixels before entering the classifier; the crop box of the cropped variant is cut on the
original grid first, then resampled by the same factor. Default 128: at the native 256 px one
classifier training (540 slices x 10 epochs) took 8-10 minutes on this project's 2-core CPU,
which puts `assess --runs 1` (four variants) above half an hour; at 128 px it is about 4x to 10x
faster. Use --image-size 0 for the native grid (the thesis setting) where time allows (a GPU).
Global and smooth scanner effects (bias, B1 field, noise level) survive a 2x reduction; the
finest edge effects (PSF, ringing) are attenuated, so accuracy at 128 px is if anything a lower
bound of the native one.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from harmonize import _runtime
from harmonize.errors import ConfigError, InputError
from harmonize.models.classifier import BN_STATISTICS

DEFAULT_RUNS = 5
DEFAULT_EPOCHS = 10
DEFAULT_BATCH = 20
DEFAULT_CLASSIFIER_SIZE = 128
TEST_FRACTION = 0.2
HIST_BINS = 500
GRADCAM_PER_SCANNER = 3
EXAMPLES_PER_SCANNER = 4
#: variant name -> (cropped, registered); thesis Table 3 column order
VARIANTS = {
    "full, before registration": (False, False),
    "full, after registration": (False, True),
    "cropped, before registration": (True, False),
    "cropped, after registration": (True, True),
}
FIGURE_NUMBERS = {"full, before registration": 9, "full, after registration": 10,
                  "cropped, before registration": 11, "cropped, after registration": 12}
INDEX_NAME = "classifiers.json"
#: mean test accuracy below this is reported as "near chance"
NEAR_CHANCE = 0.6


# ------------------------------------------------------------------------------------- CLI

def add_arguments(parser):
    parser.add_argument("--data", metavar="DATASET.h5",
                        help="prepared dataset (harmonize prepare); default: the built-in simulated dataset")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (report.html, CSV tables, figures/)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help=f"classifier trainings per variant (thesis: 5); default {DEFAULT_RUNS}")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"classifier epochs; default {DEFAULT_EPOCHS}")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"classifier batch size; default {DEFAULT_BATCH}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject splits, weights and figures; default 0")
    parser.add_argument("--image-size", type=int, default=DEFAULT_CLASSIFIER_SIZE, metavar="N",
                        help="classifier input: longer side resampled to N pixels (0 = native grid, the thesis); "
                             f"default {DEFAULT_CLASSIFIER_SIZE} (see the module help for the timing)")
    parser.add_argument("--no-cropped", action="store_true", help="skip the cropped-image variants of Table 3")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def run(args):
    _runtime.import_tensorflow_quietly()
    result = assess_dataset(args.data, args.out, runs=args.runs, epochs=args.epochs, seed=args.seed,
                            batch_size=args.batch_size, cropped=not args.no_cropped, image_size=args.image_size,
                            verbose=not args.quiet)
    t2 = result["table2"].set_index("measure")
    print(f"Table 2 (corresponding slices, whole slices): SSIM {t2.loc['SSIM', 'before registration']:.3f} before, "
          f"NRMSE {t2.loc['NRMSE', 'before registration']:.3f} before registration"
          + (f"; SSIM {t2.loc['SSIM', 'after 3-D registration']:.3f}, NRMSE {t2.loc['NRMSE', 'after 3-D registration']:.3f} "
             "after 3-D registration" if "after 3-D registration" in t2.columns else ""))
    mean = result["table3"].set_index("run").loc["mean"]
    print("Table 3 (mean test accuracy): " + ", ".join(f"{k}: {v:.2f}" for k, v in mean.items()))
    print(f"classifier for evaluate: {result['classifier']['path']}")
    print(f"report: {result['report']}")
    return 0


# ------------------------------------------------------------------------------------- helpers

def _say(verbose, text):
    if verbose:
        print(f"assess: {text}", file=sys.stderr, flush=True)


def resolve_dataset(data=None, progress=True):
    """Path of the dataset to use: ``data`` (checked), or the built-in dataset (created on first use)."""
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise InputError(f"{path}: dataset not found; create it with 'harmonize prepare DATA_DIR --out {path}' "
                             "or leave out --data for the built-in dataset")
        return path
    from harmonize.builtin import builtin_dataset

    return Path(builtin_dataset(progress=progress))


def pooled_domains(ds):
    """Both splits of a dataset pooled per scanner (the thesis used every subject in 3.1).

    Returns
    -------
    dict
        ``{"A": DomainData, "B": DomainData, "pairs": (M, 2) int array into the pooled stacks,
        "split_of_subject": {subject: split name}}``.
    """
    from harmonize.io.dataset import DomainData

    parts = [ds.split(name) for name in ds.splits]
    out = {"split_of_subject": {}}
    for dom in ("A", "B"):
        doms = [p.domain(dom) for p in parts]
        fields = {}
        for name in ("images", "masks", "subjects", "slices", "spacing"):
            fields[name] = np.concatenate([getattr(d, name) for d in doms])
        for name in ("registered", "truth", "tissue", "counterpart"):
            vals = [getattr(d, name) for d in doms]
            fields[name] = np.concatenate(vals) if all(v is not None for v in vals) else None
        out[dom] = DomainData(**fields)
    pairs, off_a, off_b = [], 0, 0
    for p in parts:
        pairs.append(p.pairs + np.array([off_a, off_b], np.int32))
        off_a += len(p.a)
        off_b += len(p.b)
        for s in p.subjects:
            out["split_of_subject"].setdefault(s, p.name)
    out["pairs"] = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int32)
    return out


def classifier_scale(image_shape, image_size):
    """Resampling factor of the classifier input: longer side -> ``image_size`` (0/None: 1)."""
    if not image_size:
        return 1.0
    image_size = int(image_size)
    if image_size < 16:
        raise ConfigError(f"--image-size {image_size}: the classifier pools 4 times and needs at least 16 pixels; "
                          "use 0 for the native grid or a size >= 16")
    return min(1.0, image_size / float(max(image_shape)))


def classifier_geometry(image_shape, masks=None, cropped=False, scale=1.0):
    """Crop box (on the original grid) and network input size of a classifier variant.

    Returns
    -------
    crop_box : tuple of 4 int or None
        ``(row0, row1, col0, col1)`` around the union of the head masks (cropped variant), sides
        rounded so that after resampling by ``scale`` they are multiples of 16 pixels.
    input_size : (int, int)
        Rows, columns of the classifier input.
    """
    from harmonize.models.classifier import center_crop_box

    rows, cols = int(image_shape[0]), int(image_shape[1])
    box = None
    if cropped:
        multiple = max(16, int(np.ceil(16.0 / scale)))
        box = center_crop_box(masks, margin=max(1, int(round(4 / scale))), multiple=multiple)
        rows, cols = box[1] - box[0], box[3] - box[2]
    size = (max(16, int(round(rows * scale))), max(16, int(round(cols * scale))))
    return box, size


def crop_region(pool, frequency=0.5):
    """The region the cropped classifier variant keeps: where the brain lies in most slices.

    Pixels that are brain (tissue labels CSF, GM, WM when the dataset has them, else the head
    masks) in at least ``frequency`` of all slices of both scanners; the crop box is drawn around
    it (:func:`classifier_geometry`). The union of all masks would keep almost the whole field of
    view, because the head of some slice of some subject reaches every border.

    Returns
    -------
    region : np.ndarray of bool
        (H, W).
    kind : str
        'brain (tissue labels)' or 'head (masks)'.
    """
    if pool["A"].tissue is not None and pool["B"].tissue is not None:
        masks = [np.isin(pool[d].tissue, (1, 2, 3)) for d in ("A", "B")]
        kind = "brain (tissue labels)"
    else:
        masks = [pool[d].masks.astype(bool) for d in ("A", "B")]
        kind = "head (masks)"
    freq = (masks[0].sum(axis=0) + masks[1].sum(axis=0)) / float(len(masks[0]) + len(masks[1]))
    region = freq >= frequency
    if not region.any():
        region = freq > 0
    return region, kind


def classifier_inputs(images, domain, normalization, crop_box=None, input_size=None):
    """Slices in physical units -> classifier input in the network range (as in training).

    Crop (``crop_box`` on the original grid), resample anti-aliased to ``input_size`` when it
    differs, set negatives to 0, normalise with ``normalization.to_network(x, domain)`` and clip
    to [-1, 1]. ``domain`` is the scanner whose scale applies: 'A' for real A and fake A, 'B' for
    real B and fake B (a generator's output is in its output domain's units and scale).

    Returns
    -------
    np.ndarray
        (N, rows, cols) float32.
    """
    from harmonize.models.classifier import apply_crop_box
    from harmonize.preprocess.resample import resize_slices

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    x = apply_crop_box(x, crop_box)
    if input_size is not None and tuple(x.shape[1:]) != tuple(input_size):
        x = resize_slices(x, tuple(input_size), order=1)
    x = normalization.to_network(np.maximum(x, 0.0), domain)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def classifier_masks(masks, crop_box=None, input_size=None):
    """Head masks on the classifier's input grid (nearest neighbour), bool (N, rows, cols)."""
    from harmonize.models.classifier import apply_crop_box
    from harmonize.preprocess.resample import resize_slices

    m = apply_crop_box(np.asarray(masks).astype(np.uint8), crop_box)
    if input_size is not None and tuple(m.shape[1:]) != tuple(input_size):
        m = resize_slices(m, tuple(input_size), order=0)
    return m.astype(bool)


def inputs_for_metadata(images, domain, metadata, normalization=None):
    """Classifier input for a saved classifier: its crop box, input size and normalisation."""
    from harmonize.preprocess.intensity import Normalization

    norm = Normalization.from_dict(metadata["normalization"]) if metadata.get("normalization") else normalization
    size = tuple(int(v) for v in np.ravel(metadata["image_size"]))
    return classifier_inputs(images, domain, norm, metadata.get("crop_box"), size)


# ------------------------------------------------------------------------------------- classifier index

def classifier_index_path():
    """``<cache>/classifiers.json``: dataset -> the classifier assess (or evaluate) saved for it."""
    from harmonize.builtin import cache_dir

    return cache_dir() / INDEX_NAME


def _dataset_key(ds):
    return str(Path(ds.path).resolve())


def register_classifier(ds, classifier_path):
    """Record ``classifier_path`` as the Table-7 classifier of dataset ``ds`` (PreparedDataset)."""
    from harmonize._fs import atomic_path

    path = classifier_index_path()
    try:
        index = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        index = {}
    index[_dataset_key(ds)] = {"classifier": str(Path(classifier_path).resolve()),
                               "dataset_created": str(ds.attrs.get("created", "")),
                               "registered": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path


def find_classifier(ds):
    """The classifier registered for dataset ``ds``, or None (missing file or re-created dataset)."""
    path = classifier_index_path()
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8")).get(_dataset_key(ds))
    except (OSError, ValueError):
        return None
    if not entry:
        return None
    clf = Path(entry["classifier"])
    if not clf.exists() or entry.get("dataset_created", "") != str(ds.attrs.get("created", "")):
        return None
    # classifiers saved before their batch-norm statistics were recalibrated call nearly every slice
    # one scanner in inference mode: train anew rather than report their numbers
    from harmonize.models.saving import read_model_metadata

    try:
        meta = read_model_metadata(clf) or {}
    except (InputError, ValueError):  # an unreadable file is as good as none: train anew
        return None
    if meta.get("batch_norm_statistics") != BN_STATISTICS:
        return None
    return clf


def classifier_metadata(ds, data_path, crop_box, input_size, train_subjects, test_subjects, accuracy, epochs,
                        batch_size, seed, image_size_option, variant):
    """Metadata stored with a saved classifier (see :mod:`harmonize.models.classifier`)."""
    return {
        "image_size": list(input_size), "crop_box": list(crop_box) if crop_box else None,
        "source_image_size": list(ds.image_size), "classifier_image_size_option": image_size_option,
        "normalization": ds.normalization.to_dict(), "labels": {"A": ds.source, "B": ds.target},
        "map_type": ds.map_type_a, "map_type_b": ds.map_type_b, "units": ds.units_a,
        "dataset": str(Path(data_path).resolve()), "dataset_created": str(ds.attrs.get("created", "")),
        "variant": variant, "train_subjects": list(train_subjects), "test_subjects": list(test_subjects),
        "test_accuracy": accuracy, "epochs": int(epochs), "batch_size": int(batch_size), "seed": int(seed),
        "recipe": "thesis 2.3: conv 16-32-128-256-512 3x3, 2x2 pooling, horizontal flips, Adam, BCE",
        "batch_norm_statistics": BN_STATISTICS,
    }


def train_dataset_classifier(ds, data_path, out_path, *, epochs=DEFAULT_EPOCHS, batch_size=DEFAULT_BATCH, seed=0,
                             image_size=DEFAULT_CLASSIFIER_SIZE, verbose=False):
    """Train the Table-7 classifier on the dataset's TRAIN split (real slices, full, unregistered).

    Same recipe as :func:`assess_dataset`; saved to ``out_path`` with its accuracy on the test
    split and registered in the cache index. Returns ``(model, metadata)``.
    """
    from harmonize.models.classifier import classifier_accuracy, save_classifier, train_scanner_classifier

    train, test = ds.split("train"), ds.split("test")
    scale = classifier_scale(ds.image_size, image_size)
    box, size = classifier_geometry(ds.image_size, None, False, scale)
    norm = ds.normalization
    _say(verbose, f"training the scanner classifier on the train split ({len(train.a)} A + {len(train.b)} B slices, "
                  f"{size[0]}x{size[1]} px, {epochs} epochs)")
    t0 = time.perf_counter()
    model, hist = train_scanner_classifier(classifier_inputs(train.a.images, "A", norm, box, size),
                                           classifier_inputs(train.b.images, "B", norm, box, size),
                                           epochs=epochs, batch_size=batch_size, seed=seed, augment_flip=True)
    acc = classifier_accuracy(model, classifier_inputs(test.a.images, "A", norm, box, size),
                              classifier_inputs(test.b.images, "B", norm, box, size))
    acc["train_accuracy"] = float(hist.get("accuracy", [float("nan")])[-1])
    acc["seconds"] = time.perf_counter() - t0
    meta = classifier_metadata(ds, data_path, box, size, train.subjects, test.subjects, acc, epochs, batch_size,
                               seed, image_size, "full, before registration")
    save_classifier(model, out_path, meta)
    register_classifier(ds, out_path)
    _say(verbose, f"classifier saved: {out_path} (accuracy on the test split {acc['accuracy']:.2f})")
    return model, meta


# ------------------------------------------------------------------------------------- the assessment

def histogram_tables(pool, ds, bins=HIST_BINS):
    """Average histograms per scanner before/after registration and their summary.

    Returns ``(curves, hist_df, summary_df, value_range)``; ``curves`` is
    ``{condition: {label: (edges, hist)}}`` for the figure.
    """
    import pandas as pd

    from harmonize.metrics import average_histogram
    from harmonize.preprocess.masks import foreground_mask

    # voxels of the head with a value: 0 is the vendor's background/bone mask, not a measurement
    conditions = {"before registration": {d: (pool[d].images, pool[d].masks.astype(bool) & (pool[d].images > 0))
                                          for d in ("A", "B")}}
    if pool["A"].registered is not None and pool["B"].registered is not None:
        # the registered copies moved by half the shift: their own (per-slice) head masks
        conditions["after registration"] = {
            d: (pool[d].registered, np.stack([foreground_mask(s) for s in pool[d].registered]) & (pool[d].registered > 0))
            for d in ("A", "B")}
    hi = max(float(v[0].max()) for c in conditions.values() for v in c.values())
    value_range = (0.0, hi if hi > 0 else 1.0)
    labels = {"A": f"A ({ds.source})", "B": f"B ({ds.target})"}
    curves, columns, rows = {}, {}, []
    for cond, doms in conditions.items():
        curves[cond] = {}
        hists = {}
        for d, (images, masks) in doms.items():
            edges, hist = average_histogram(images, bins=bins, value_range=value_range, mask=masks)
            curves[cond][labels[d]] = (edges, hist)
            hists[d] = hist
            columns["bin_low"], columns["bin_high"] = edges[:-1], edges[1:]
            columns[f"{d} {cond}"] = hist
            vals = images[masks]
            rows.append({"condition": cond, "scanner": f"{d} ({ds.source if d == 'A' else ds.target})",
                         "slices": len(images), "voxels": int(vals.size), "mean": float(vals.mean()),
                         "sd": float(vals.std()), "p1": float(np.percentile(vals, 1)),
                         "median": float(np.median(vals)), "p99": float(np.percentile(vals, 99)),
                         "histogram overlap A-B": np.nan})
        overlap = float(np.minimum(hists["A"], hists["B"]).sum())
        for r in rows:
            if r["condition"] == cond:
                r["histogram overlap A-B"] = overlap
    return curves, pd.DataFrame(columns), pd.DataFrame(rows), value_range


def tissue_means_table(pool, ds):
    """Mean map value per tissue per scanner (tissue labels of each scanner's own slices), or None."""
    import pandas as pd

    from harmonize.metrics import TISSUE_LABELS

    if pool["A"].tissue is None or pool["B"].tissue is None:
        return None
    rows = []
    for label, name in TISSUE_LABELS.items():
        ma = pool["A"].images[pool["A"].tissue == label]
        mb = pool["B"].images[pool["B"].tissue == label]
        if not ma.size or not mb.size:
            continue
        rows.append({"tissue": name, f"A ({ds.source}) mean": float(ma.mean()),
                     f"B ({ds.target}) mean": float(mb.mean()),
                     "B - A (%)": 100.0 * (float(mb.mean()) - float(ma.mean())) / float(ma.mean()),
                     "A sd": float(ma.std()), "B sd": float(mb.std())})
    return pd.DataFrame(rows) if rows else None


def paired_table(pool):
    """Thesis Table 2: mean SSIM and NRMSE of corresponding slices, before/after registration.

    Columns: before registration (same subject and slice index), after registration (the thesis's
    half-way in-plane translation, datasets prepared with ``--register``) and after 3-D registration
    (each A slice against its counterpart, the subject's B volume registered onto A's; datasets
    prepared with ``--register-volumes``; A slices without a counterpart are left out).
    """
    import pandas as pd

    from harmonize.metrics import paired_slice_metrics

    pairs = pool["pairs"]
    if not len(pairs):
        raise InputError("the dataset has no corresponding slices (same subject and slice index on both scanners); "
                         "Table 2 needs subjects scanned on both scanners")
    a = pool["A"].images[pairs[:, 0]]
    b = pool["B"].images[pairs[:, 1]]
    data_range = float(max(pool["A"].images.max(), pool["B"].images.max()))
    cols = {"before registration": paired_slice_metrics(a, b, data_range)}
    if pool["A"].registered is not None and pool["B"].registered is not None:
        cols["after registration"] = paired_slice_metrics(pool["A"].registered[pairs[:, 0]],
                                                          pool["B"].registered[pairs[:, 1]], data_range)
    counterpart = pool["A"].counterpart
    if counterpart is not None:
        has = np.flatnonzero(np.isfinite(counterpart[:, 0, 0]))
        if len(has):
            cols["after 3-D registration"] = paired_slice_metrics(pool["A"].images[has], counterpart[has], data_range)
    rows = []
    for measure, key in (("SSIM", "ssim"), ("NRMSE", "nrmse"), ("SSIM sd", "ssim_std"), ("NRMSE sd", "nrmse_std"),
                         ("slice pairs", "n_slices")):
        rows.append({"measure": measure, **{c: v[key] for c, v in cols.items()}})
    rows.append({"measure": "SSIM data range", **{c: data_range for c in cols}})
    return pd.DataFrame(rows), data_range


def roc_auc(p_a, p_b):
    """Area under the ROC curve of scores ``p_b`` (positives, scanner B) against ``p_a`` (scanner A).

    The Mann-Whitney form: the probability that a random B slice scores above a random A slice
    (ties count one half). NaN when either group is empty.
    """
    from scipy.stats import rankdata

    p_a, p_b = np.asarray(p_a, float).ravel(), np.asarray(p_b, float).ravel()
    if not len(p_a) or not len(p_b):
        return float("nan")
    ranks = rankdata(np.concatenate([p_a, p_b]))
    return float((ranks[len(p_a):].sum() - len(p_b) * (len(p_b) + 1) / 2) / (len(p_a) * len(p_b)))


def _pick(rng, candidates, k):
    candidates = np.asarray(candidates)
    if len(candidates) <= k:
        return candidates
    return np.sort(rng.choice(candidates, size=k, replace=False))


def _brainy(masks, idx, fraction=0.5):
    """Indices among ``idx`` whose head area is at least ``fraction`` of the largest (figures)."""
    area = masks[idx].reshape(len(idx), -1).sum(axis=1)
    return idx[area >= fraction * area.max()] if len(idx) and area.max() > 0 else idx


def assess_dataset(data=None, out_dir="assess", runs=DEFAULT_RUNS, epochs=DEFAULT_EPOCHS, seed=0,
                   batch_size=DEFAULT_BATCH, cropped=True, image_size=DEFAULT_CLASSIFIER_SIZE, verbose=False):
    """Run the variability assessment of thesis 2.3 / 3.1 on a prepared dataset.

    Parameters
    ----------
    data : str or Path, optional
        Prepared ``.h5`` dataset; default the built-in dataset.
    out_dir : str or Path
        Output folder (created; existing files of the same names are replaced atomically).
    runs, epochs, batch_size : int
        Classifier trainings per variant, epochs and batch size (thesis: 5, 10, 20).
    seed : int
        Seeds the subject splits (run r uses ``seed + r``), the weights and the figure slices.
    cropped : bool
        Also train on slices cropped around the head (thesis Table 3, right half).
    image_size : int
        Classifier input: longer side resampled to this many pixels; 0 = native grid.
    verbose : bool
        Progress messages on stderr.

    Returns
    -------
    dict
        ``histograms``, ``histogram_summary``, ``tissue_means`` (or None), ``table2``, ``table3``
        (runs x variants, last row ``mean``), ``table3_auc`` (the same for the ROC AUC), ``table3_runs`` (one row per trained classifier),
        ``gradcam`` (DataFrames); ``classifier`` (``{"path", "metadata"}``), ``report`` (Path),
        ``out_dir`` (Path), ``notes`` (list of str).
    """
    import pandas as pd

    from harmonize import validation_plots as vp
    from harmonize._fs import check_not_input
    from harmonize.io.dataset import PreparedDataset
    from harmonize.models.classifier import (classifier_accuracy, predict_scanner, save_classifier, subject_split,
                                             train_scanner_classifier)

    runs, epochs, batch_size = int(runs), int(epochs), int(batch_size)
    if runs < 1 or epochs < 1 or batch_size < 1:
        raise ConfigError(f"runs={runs}, epochs={epochs}, batch_size={batch_size}: each must be at least 1")
    t_start = time.perf_counter()
    data_path = resolve_dataset(data, progress=verbose)
    out_dir = Path(out_dir)
    check_not_input(out_dir, [data_path])
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose an output folder")
    ds = PreparedDataset(data_path)
    pool = pooled_domains(ds)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    units, map_type = ds.units_a, ds.map_type_a
    notes = []
    if ds.map_type_a != ds.map_type_b:
        notes.append(f"Scanner A holds {ds.map_type_a} maps and B {ds.map_type_b} maps (different map types): "
                     "histograms share one axis in mixed units and SSIM/NRMSE compare different quantities.")
    _say(verbose, f"{data_path}: {len(pool['A'])} A + {len(pool['B'])} B slices, {len(pool['pairs'])} corresponding pairs")

    # ---- Fig. 7 and Table 2
    curves, hist_df, hist_summary, value_range = histogram_tables(pool, ds)
    registered = "after registration" in curves
    if not registered:
        notes.append("The dataset has no registered copies (prepare without --register): only the 'before "
                     "registration' columns are reported.")
    tissue_df = tissue_means_table(pool, ds)
    fig7 = vp.histogram_figure(curves, out_dir / "figures" / "fig7_histograms.png", map_type=map_type, units=units,
                               xlim=value_range,
                               suptitle="Average histograms per scanner (500 bins, inside the head masks)")
    _say(verbose, "histograms done; computing SSIM/NRMSE of corresponding slices")
    table2, data_range = paired_table(pool)

    # ---- Table 3: classifiers
    variants = {k: v for k, v in VARIANTS.items() if (cropped or not v[0]) and (registered or not v[1])}
    scale = classifier_scale(ds.image_size, image_size)
    region, region_kind = crop_region(pool)
    geometry = {name: classifier_geometry(ds.image_size, region, crop, scale) for name, (crop, _) in variants.items()}
    norm = ds.normalization
    inputs = {}
    for name, (crop, reg) in variants.items():
        box, size = geometry[name]
        inputs[name] = {d: classifier_inputs(pool[d].registered if reg else pool[d].images, d, norm, box, size)
                        for d in ("A", "B")}
    if scale < 1.0:
        notes.append(f"Classifier inputs resampled by {scale:.3g} (longer side {image_size} px instead of "
                     f"{max(ds.image_size)}) to keep the run time on CPU reasonable; --image-size 0 uses the native grid.")
    subjects_all = sorted(set(pool["A"].subjects.tolist()) | set(pool["B"].subjects.tolist()))
    has_test = "test" in ds.splits and len(ds.split("test").subjects) > 0
    rng = np.random.default_rng(seed)
    run_rows, gradcam_rows, figures = [], [], {}
    saved = None
    for r in range(runs):
        if r == 0 and has_test:
            train_s = ds.split("train").subjects
            test_s = ds.split("test").subjects
            split_kind = "dataset train/test split"
        else:
            train_s, test_s = subject_split(subjects_all, TEST_FRACTION, seed=seed + r)
            split_kind = f"random {int(100 * (1 - TEST_FRACTION))}/{int(100 * TEST_FRACTION)} subject split (seed {seed + r})"
        sel = {d: (np.isin(pool[d].subjects, train_s), np.isin(pool[d].subjects, test_s)) for d in ("A", "B")}
        for name in variants:
            x = inputs[name]
            t0 = time.perf_counter()
            model, hist = train_scanner_classifier(x["A"][sel["A"][0]], x["B"][sel["B"][0]], epochs=epochs,
                                                   batch_size=batch_size, seed=seed + r, augment_flip=True)
            acc = classifier_accuracy(model, x["A"][sel["A"][1]], x["B"][sel["B"][1]])
            auc = roc_auc(predict_scanner(model, x["A"][sel["A"][1]]), predict_scanner(model, x["B"][sel["B"][1]]))
            seconds = time.perf_counter() - t0
            run_rows.append({"run": r + 1, "variant": name, "split": split_kind, "accuracy": acc["accuracy"],
                             "accuracy_A": acc["accuracy_a"], "accuracy_B": acc["accuracy_b"], "auc": auc,
                             "train_accuracy": float(hist.get("accuracy", [np.nan])[-1]),
                             "n_train_A": int(sel["A"][0].sum()), "n_train_B": int(sel["B"][0].sum()),
                             "n_test_A": acc["n_a"], "n_test_B": acc["n_b"],
                             "input_size": "x".join(map(str, geometry[name][1])),
                             "test_subjects": " ".join(test_s), "seconds": seconds})
            _say(verbose, f"run {r + 1}/{runs}, {name}: test accuracy {acc['accuracy']:.2f} ({seconds:.0f} s)")
            if r == 0 and name == "full, before registration":
                box, size = geometry[name]
                meta = classifier_metadata(ds, data_path, box, size, train_s, test_s,
                                           {**acc, "train_accuracy": run_rows[-1]["train_accuracy"], "seconds": seconds},
                                           epochs, batch_size, seed + r, image_size, name)
                if split_kind != "dataset train/test split":
                    meta["note"] = "the dataset has no test split: trained on a random subject split"
                path = save_classifier(model, out_dir / "classifier.h5", meta)
                register_classifier(ds, path)
                saved = {"path": path, "metadata": meta}
            if r == runs - 1:
                figures[name] = _explain_variant(model, name, x, sel, pool, geometry[name], norm, rng, ds, out_dir,
                                                 gradcam_rows, predict_scanner)
            del model
    runs_df = pd.DataFrame(run_rows)
    table3 = runs_df.pivot(index="run", columns="variant", values="accuracy")[list(variants)].reset_index()
    table3["run"] = table3["run"].astype(str)
    mean_row = {"run": "mean", **{v: float(runs_df.loc[runs_df["variant"] == v, "accuracy"].mean()) for v in variants}}
    table3 = pd.concat([table3, pd.DataFrame([mean_row])], ignore_index=True)
    table3.columns.name = None
    table3_auc = runs_df.pivot(index="run", columns="variant", values="auc")[list(variants)].reset_index()
    table3_auc["run"] = table3_auc["run"].astype(str)
    table3_auc = pd.concat([table3_auc, pd.DataFrame([{"run": "mean", **{
        v: float(runs_df.loc[runs_df["variant"] == v, "auc"].mean()) for v in variants}}])], ignore_index=True)
    table3_auc.columns.name = None
    acc_fig = vp.accuracy_figure(runs_df, out_dir / "figures" / "table3_accuracy.png",
                                 suptitle="Scanner classifier test accuracy per run (line: mean)")
    gradcam_df = pd.DataFrame(gradcam_rows)

    result = {"histograms": hist_df, "histogram_summary": hist_summary, "tissue_means": tissue_df, "table2": table2,
              "table3": table3, "table3_auc": table3_auc, "table3_runs": runs_df, "gradcam": gradcam_df, "classifier": saved,
              "out_dir": out_dir, "notes": notes, "data": data_path}
    crop_geo = [g for name, g in geometry.items() if VARIANTS[name][0]]
    geometry_text = ("not used" if not crop_geo else
                     f"{crop_geo[0][0][0]}-{crop_geo[0][0][1]}, {crop_geo[0][0][2]}-{crop_geo[0][0][3]} of "
                     f"{ds.image_size[0]}x{ds.image_size[1]}, network input {crop_geo[0][1][0]}x{crop_geo[0][1][1]}")
    result["report"] = _write_report(result, ds, data_path, out_dir, fig7, acc_fig, figures, data_range,
                                     value_range, variants, runs, epochs, batch_size, seed, scale, image_size,
                                     time.perf_counter() - t_start, region_kind, geometry_text)
    _say(verbose, f"done in {time.perf_counter() - t_start:.0f} s: {result['report']}")
    return result


def _explain_variant(model, name, x, sel, pool, geometry, norm, rng, ds, out_dir, gradcam_rows, predict_scanner):
    """Grad-CAM and example figures of one variant's classifier (last run)."""
    from scipy import ndimage

    from harmonize import validation_plots as vp
    from harmonize.explain import grad_cam

    crop, reg = VARIANTS[name]
    box, size = geometry
    imgs, heats, titles, p_all, doms, examples = [], [], [], [], [], []
    for d in ("A", "B"):
        test_idx = np.flatnonzero(sel[d][1])
        masks_small = classifier_masks(pool[d].masks[test_idx], box, size)
        brainy = test_idx[_brainy(masks_small, np.arange(len(test_idx)))]
        idx = _pick(rng, brainy, GRADCAM_PER_SCANNER)
        if len(idx):
            xin = x[d][idx]
            heat, p_b = grad_cam(model, xin, return_scores=True)
            m = classifier_masks(pool[d].masks[idx], box, size)
            border = m & ~ndimage.binary_erosion(m, structure=np.ones((1, 3, 3), bool), iterations=3)
            for k in range(len(idx)):
                total = float(heat[k].sum())
                gradcam_rows.append({"variant": name, "scanner": d, "subject": str(pool[d].subjects[idx[k]]),
                                     "slice": int(pool[d].slices[idx[k]]), "p_B": float(p_b[k]),
                                     "share in head": float(heat[k][m[k]].sum() / total) if total else np.nan,
                                     "share in head border (3 px)": float(heat[k][border[k]].sum() / total)
                                     if total else np.nan,
                                     "head border area share": float(border[k].sum() / max(m[k].sum(), 1))})
                titles.append(f"{d} ({ds.source if d == 'A' else ds.target}) {pool[d].subjects[idx[k]]} "
                              f"s{pool[d].slices[idx[k]]}\nP(B)={p_b[k]:.2f}")
            imgs.append(norm.from_network(xin, d))
            heats.append(heat)
        ex = _pick(rng, test_idx, EXAMPLES_PER_SCANNER)
        if len(ex):
            examples.append(norm.from_network(x[d][ex], d))
            p_all.append(predict_scanner(model, x[d][ex]))
            doms += [d] * len(ex)
    out = {}
    if imgs:
        number = FIGURE_NUMBERS[name]
        out["gradcam"] = vp.gradcam_figure(
            np.concatenate(imgs), np.concatenate(heats), titles,
            out_dir / "figures" / f"fig{number}_gradcam_{_slug(name)}.png", ncols=2 * GRADCAM_PER_SCANNER // 2 or 1,
            suptitle=f"Grad-CAM on last_conv, {name} (explained class: the predicted one)")
    if examples and not crop:
        out["examples"] = vp.classifier_examples_figure(
            np.concatenate(examples), np.concatenate(p_all), doms,
            out_dir / "figures" / f"fig8_examples_{_slug(name)}.png", labels=(ds.source, ds.target),
            ncols=EXAMPLES_PER_SCANNER,
            suptitle=f"Random test slices, {name}")
    return out


def _slug(text):
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").replace("__", "_")


# ------------------------------------------------------------------------------------- report

def _write_report(result, ds, data_path, out_dir, fig7, acc_fig, figures, data_range, value_range, variants, runs,
                  epochs, batch_size, seed, scale, image_size, seconds, region_kind, geometry_text):
    from harmonize.report import Report, format_number, write_csv

    rep = Report(f"Scanner variability assessment: {ds.source} (A) vs {ds.target} (B)", out_dir)
    pool_note = (f"Dataset {data_path} ({ds.map_type_a} maps in {ds.units_a}"
                 + (f" / {ds.map_type_b} in {ds.units_b}" if ds.map_type_b != ds.map_type_a else "") + "). "
                 f"All subjects of both splits are used ({', '.join(ds.splits)}).")
    rep.paragraph(pool_note)
    rep.heading("How to read this report")
    rep.guide([
        ("Fig. 7 histograms", "the distribution of map values of each scanner inside the head, averaged over slices. "
         "Alike histograms do NOT mean alike scanners: a few-percent bias or a different noise level barely moves "
         "a 500-bin histogram, and anatomy differs between slices."),
        ("Table 2 SSIM / NRMSE", "corresponding slices (same subject, same slice index) of two separate sessions. "
         "They are confounded by anatomy: the slices differ by repositioning, through-plane offset and "
         "misregistration as well as by the scanner, so they do not measure the scanner effect alone. "
         "Registration removes only in-plane translation."),
        ("Table 3 classifier", "a small CNN trained to tell the scanner of a slice. Accuracy clearly above 0.5 on "
         "unseen subjects shows the scanners leave a learnable signature even where histograms look alike. "
         "It does not say which effect (bias, noise, resolution, field) the network uses; the cropped variant "
         "removes the background as a cue."),
        ("Figs. 9-12 Grad-CAM", "where the classifier's last conv layer found evidence for its decision (red = more). "
         "Coarse (1/16 of the input resolution); read it as a region, not as a voxel map."),
    ])
    for n in result["notes"]:
        rep.note(n)

    rep.heading("Fig. 7: average histograms")
    rep.figure(fig7, f"Average of the per-slice normalised histograms, 500 bins over {value_range[0]:g}-"
                     f"{value_range[1]:.0f} {ds.units_a} (the whole range: vendor clipping of long values shows as a spike at the end), voxels "
                     "inside the head masks with a value above 0 (the background and the vendor's masked voxels at 0 "
                     "left out). After registration: the registered copies with their own head masks.")
    write_csv(result["histograms"], out_dir / "histograms.csv")
    rep.table(result["histogram_summary"], "histogram_summary",
              f"Summary of the values (> 0) inside the head masks ({ds.units_a}); overlap = sum of the bin-wise minimum "
              "of the two average histograms (1 = identical). Full histograms: histograms.csv")
    if result["tissue_means"] is not None:
        rep.table(result["tissue_means"], "tissue_means",
                  f"Mean {ds.map_type_a} per tissue on each scanner ({ds.units_a}), from the dataset's tissue labels "
                  "(different sessions: includes anatomy and partial-volume differences, not only the scanner)")

    rep.heading("Table 2: SSIM and NRMSE of corresponding slices")
    rep.table(result["table2"], "table2_ssim_nrmse",
              f"Mean over {int(result['table2'].iloc[4, 1])} corresponding slice pairs, whole slices (background "
              f"included, as in the thesis). SSIM: skimage structural_similarity, Gaussian 11-tap window sigma 1.5, "
              f"data_range = {data_range:.1f} {ds.units_a} (maximum of both scanners); NRMSE: skimage "
              "normalized_root_mse, euclidean, A as reference. Thesis: SSIM 0.80 / 0.81, NRMSE 0.56 / 0.58."
              + (" After 3-D registration: each A slice against the subject's B volume registered onto A's and "
                 "resampled on that slice (its counterpart; slices B's stack does not cover are left out)."
                 if "after 3-D registration" in result["table2"].columns else ""))

    rep.heading("Table 3: scanner classifier test accuracy")
    size_text = ("native grid" if scale >= 1.0 else
                 f"resampled by {scale:.3g} (longer side {image_size} px; --image-size 0 for the native grid)")
    rep.paragraph(
        f"Thesis 2.3 classifier (conv 16, 32, 128, 256, 512 filters 3x3, 2x2 max pooling between them, global "
        f"average pooling, sigmoid P(B)); horizontal-flip augmentation, {epochs} epochs, batch {batch_size}, Adam; "
        f"{runs} run(s). Inputs: maps in the network range of the dataset normalisation "
        f"({ds.normalization.kind}), {size_text}. Cropped: a box around the region where the "
        f"{region_kind} lies in at least half of all slices (+ a small margin), rounded to a multiple of 16 network "
        "pixels, cut on the original grid and not stretched (same resampling factor as the full slices); "
        f"box (rows, cols) = {geometry_text}. After registration: the dataset's registered copies.")
    rep.note("Split by subject: the test subjects of a run never contribute training slices. The thesis split "
             "the 646 images at random (80/20 by image), so slices of a test subject were also in training; its "
             "accuracies (0.7-0.9) may be optimistic for that reason. Run 1 uses the dataset's own train/test "
             "subjects (the same test subjects as evaluate); later runs draw new 80/20 subject splits.")
    means = result["table3"].set_index("run").loc["mean"]
    near = [k for k, v in means.items() if v < NEAR_CHANCE]
    if near:
        rep.note(f"Mean accuracy below {NEAR_CHANCE} ({', '.join(near)}): the classifier did not learn to tell the "
                 "scanners apart on unseen subjects. Either the scanners are alike for this network, or it failed to "
                 "train (training accuracy in table3_runs.csv near 0.5 too). Table 7 of 'evaluate' is then not "
                 "informative.")
    rep.table(result["table3"], "table3_accuracy", "Test accuracy per run and variant (chance = 0.5)", digits=2)
    rep.figure(acc_fig, "Test accuracy per run (points) and mean (line); dashed: chance.")
    rep.table(result["table3_auc"], "table3_auc", "Beyond the thesis: area under the ROC curve of P(B) on the test "
              "slices (0.5 = chance, 1 = every B slice scored above every A slice). Unlike the accuracy it does not "
              "depend on the 0.5 threshold, so it shows a classifier that separates the scanners but is "
              "miscalibrated on new subjects.", digits=2)
    rep.table(result["table3_runs"], "table3_runs", "Every trained classifier: split, per-scanner accuracy, "
              "slices and time", digits=2)

    rep.heading("Fig. 8: classifier examples (last run)")
    for name in variants:
        if "examples" in figures.get(name, {}):
            rep.figure(figures[name]["examples"], f"{name}: random test slices with the classifier's P(A), P(B).")
    rep.heading("Figs. 9-12: Grad-CAM attention maps (last run)")
    for name in variants:
        if "gradcam" in figures.get(name, {}):
            rep.figure(figures[name]["gradcam"], f"Fig. {FIGURE_NUMBERS[name]}: {name}; random test slices of "
                                                 "each scanner (with at least half the largest head area).")
    if len(result["gradcam"]):
        summary = result["gradcam"].groupby(["variant", "scanner"], sort=False)[
            ["share in head", "share in head border (3 px)", "head border area share"]].mean().reset_index()
        rep.table(summary, "gradcam_summary", "Where the Grad-CAM maps lie: mean share of the map inside the head "
                  "and in its 3-pixel border band, next to the border's share of the head area (a map with a "
                  "border share well above the area share prefers edges, as the thesis observed)")
        write_csv(result["gradcam"], out_dir / "gradcam.csv")

    rep.heading("Classifier saved for evaluate (Table 7)")
    if result["classifier"]:
        meta = result["classifier"]["metadata"]
        acc = meta["test_accuracy"]
        rep.paragraph(
            f"{result['classifier']['path']}: run 1, full slices before registration, trained on subjects "
            f"{', '.join(meta['train_subjects'])}; accuracy on the real slices of test subjects "
            f"{', '.join(meta['test_subjects'])}: {format_number(acc['accuracy'], 2)} (A called A "
            f"{format_number(acc['accuracy_a'], 2)}, B called B {format_number(acc['accuracy_b'], 2)}). "
            "'harmonize evaluate' finds it through the cache index; pass --classifier to use another.")
    rep.paragraph(f"Total time {seconds / 60:.1f} min (seed {seed}).", cls="small")
    return rep.write()


if __name__ == "__main__":
    from harmonize.cli import command_main

    raise SystemExit(command_main("assess"))
