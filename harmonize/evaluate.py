"""Validate a trained run on the test subjects (thesis 3.2: Tables 4-7, Fig. 16; errors against truth).

    harmonize evaluate --run DIR [--checkpoint STEP|PATH] [--data DATASET.h5] [--classifier PATH]
                       [--out DIR] [--baselines none,linear,histmatch,nyul] [--batch-size 8]

Checkpoint: --checkpoint STEP (a row of DIR/checkpoints.csv) or the path of a saved generator
(g_AtoB_<step>.h5 or g_BtoA_<step>.h5; its partner of the same step is found beside it); else
the one in DIR/selected.json (harmonize select); else the last checkpoint, with a warning.
Dataset: --data, else the dataset recorded in DIR/config.yaml (or the generator's metadata),
else the built-in dataset. Output: --out, default DIR/evaluation.

On the dataset's TEST subjects: fake B = G_AtoB(A) and fake A = G_BtoA(B) in physical units,
computed exactly as `harmonize apply` computes them (harmonize.apply.load_generator, the
dataset's head masks), then (every table also as CSV, all gathered in report.html):

  table4_losses.csv     Table 4: the logged losses at the checkpoint's step and their epoch mean
  table5_correlation.csv Table 5: Pearson correlation of the six pairs A-B, A-fakeA, A-fakeB,
                        B-fakeA, B-fakeB, fakeA-fakeB over corresponding slices (same subject and
                        slice index; fake B rows follow their A slice, fake A rows their B slice),
                        whole slices; with the mutual information (nats, 100 bins, inside the
                        union of the two head masks)
  table6_ssim_nrmse.csv Table 6: mean SSIM and NRMSE of the same pairs (skimage, data range stated)
  table7_classifier.csv Table 7: the real-image scanner classifier on real A, real B, fake B, fake A
                        (and on each method's output in the truth summary): share called B,
                        accuracy, fooling rate = (share of fake B called B) / (share of real B
                        called B)
  histograms.csv, figures/fig16_histograms.png  average histograms of A, B, fake A, fake B
  figures/grid_*.png    test slices with one colour scale in physical units, difference maps
  truth_errors.csv, truth_summary.csv (datasets with paired truth) fake B against the true B
                        (A's anatomy on scanner B): MAE (map units), relative error %, bias %,
                        per tissue (CSF/GM/WM) and SSIM in the brain mask, per test subject and
                        pooled; next to no harmonisation and the classical baselines (fitted on the
                        TRAIN split, applied to test A). Figures: error maps and tissue bias bars.
  truth_reference.csv   (datasets with 3-D registered counterparts, prepare --register-volumes) the
                        same errors of no harmonisation, the CycleGAN and the subject's own B session
                        registered onto A, on the test slices B's session covers: how closely a
                        second scan on scanner B agrees with the truth

The classifier for Table 7: --classifier PATH; else the one `harmonize assess` saved for this
dataset (found through <cache>/classifiers.json); else one is trained here on the dataset's TRAIN
split with the assess recipe (saved as OUT/classifier.h5 and recorded for the next evaluation).
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from harmonize import _runtime
from harmonize.errors import ConfigError, InputError, ModelError

DEFAULT_BASELINES = ("none", "linear", "histmatch", "nyul")
GRID_SLICES = 4
#: a classifier below this accuracy on real test slices is reported as near chance
NEAR_CHANCE = 0.6
MI_BINS = 100

#: (thesis quantity, log key) rows of Table 4, in the thesis's column order
LOSS_ROWS = (
    ("D_A real (A)", "d_a_real"), ("D_A fake (fake A)", "d_a_fake"),
    ("D_B real (B)", "d_b_real"), ("D_B fake (fake B)", "d_b_fake"),
    ("D scanner: A", "d_scanner_a"), ("D scanner: fake A", "d_scanner_fake_a"),
    ("D scanner: B", "d_scanner_b"), ("D scanner: fake B", "d_scanner_fake_b"),
    ("G AtoB total", "g_a2b_total"), ("G BtoA total", "g_b2a_total"),
    ("G AtoB adversarial", "g_a2b_adv"), ("G BtoA adversarial", "g_b2a_adv"),
    ("G AtoB DSSIM", "g_a2b_ssim"), ("G BtoA DSSIM", "g_b2a_ssim"),
    ("G AtoB cycle (L1)", "g_a2b_cycle"), ("G BtoA cycle (L1)", "g_b2a_cycle"),
    ("G AtoB identity (L1)", "g_a2b_identity"), ("G BtoA identity (L1)", "g_b2a_identity"),
    ("G AtoB scanner", "g_a2b_scanner"), ("G BtoA scanner", "g_b2a_scanner"),
)


# ------------------------------------------------------------------------------------- CLI

def add_arguments(parser):
    parser.add_argument("--run", required=True, metavar="DIR", help="run folder of 'harmonize train'")
    parser.add_argument("--checkpoint", metavar="STEP|PATH",
                        help="step of a saved checkpoint (checkpoints.csv) or a g_AtoB_/g_BtoA_ file; "
                             "default: selected.json, else the last checkpoint")
    parser.add_argument("--data", metavar="DATASET.h5",
                        help="prepared dataset; default: the one in the run's config.yaml, else the built-in dataset")
    parser.add_argument("--classifier", metavar="PATH",
                        help="scanner classifier (.h5) for Table 7; default: the one 'harmonize assess' saved for "
                             "the dataset, else one is trained on the train split")
    parser.add_argument("--out", metavar="DIR", help="output folder; default <run>/evaluation")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES), metavar="LIST",
                        help="classical baselines in the truth table, comma-separated from none (A unharmonised), "
                             "linear, histmatch, nyul; '' for no baselines; default all")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per generator call; default 8")
    parser.add_argument("--seed", type=int, default=0, help="seed of the slices shown in the figures; default 0")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def run(args):
    baselines = [b.strip() for b in (args.baselines or "").split(",") if b.strip()]
    _runtime.import_tensorflow_quietly()
    res = evaluate_run(args.run, data=args.data, checkpoint=args.checkpoint, out_dir=args.out,
                       classifier=args.classifier, baselines=baselines, batch_size=args.batch_size, seed=args.seed,
                       verbose=not args.quiet)
    info = dict(zip(res["info"]["key"], res["info"]["value"]))
    t7 = res["table7"].set_index("images")
    fake_b = t7.loc[[i for i in t7.index if i.startswith("fake B")][0]]
    print(f"checkpoint: step {info['step']} (epoch {info['epoch']}, {info['checkpoint_source']})")
    print(f"Table 7: fake B called B {fake_b['called B']:.2f} (fooling rate {fake_b['relative to real']:.2f})")
    if "truth_summary" in res:
        _print_truth_rows(res["truth_summary"], info["units"])
    if "truth_reference" in res:
        r = res["truth_reference"]
        print(f"on the {r['slices'].iloc[0]} test slices that B's own session covers (3-D registered, the reference):")
        _print_truth_rows(r, info["units"])
    print(f"report: {info['report']}")
    return 0


def _print_truth_rows(table, units):
    """One line per method of a truth table: MAE, bias in the brain and per tissue (%), SSIM."""
    tissues = [c for c in ("WM", "GM", "CSF") if f"bias_pct_{c}" in table.columns]
    for _, row in table.iterrows():
        per_tissue = "".join(f" {t} {row[f'bias_pct_{t}']:+6.2f}" for t in tissues)
        print(f"  {row['method']:<28} MAE {row['mae']:8.1f} {units}  bias {row['bias_pct']:+6.2f} %"
              f"{per_tissue}  SSIM {row['ssim']:.3f}")


def _say(verbose, text):
    if verbose:
        print(f"evaluate: {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- run folder

def _read_rows(path):
    import pandas as pd

    if not Path(path).exists():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable CSV file ({err})") from err


def _checkpoint_rows(run_dir):
    rows = _read_rows(run_dir / "checkpoints.csv")
    if rows is None or not len(rows):
        files = sorted(run_dir.glob("g_AtoB_*.h5"))
        if not files:
            raise InputError(f"{run_dir}: no saved generators (checkpoints.csv, g_AtoB_<step>.h5); "
                             "is this a run folder of 'harmonize train'?")
        import pandas as pd

        rows = pd.DataFrame([{"step": int(f.stem.split("_")[-1]), "epoch": np.nan, "reason": "",
                              "g_AtoB": f.name, "g_BtoA": f.name.replace("g_AtoB_", "g_BtoA_")} for f in files])
    return rows.sort_values("step").reset_index(drop=True)


def resolve_checkpoint(run_dir, checkpoint=None):
    """Which generators to evaluate.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    checkpoint : int, str or Path, optional
        A step (row of checkpoints.csv) or the path of a g_AtoB_/g_BtoA_ file; None: selected.json,
        else the last checkpoint.

    Returns
    -------
    dict
        ``step``, ``epoch``, ``g_AtoB``, ``g_BtoA`` (Paths), ``source`` (how it was chosen),
        ``rule``, ``reason``.
    """
    import json

    run_dir = Path(run_dir)

    def files(row, source, rule="", reason=""):
        ab, ba = run_dir / str(row["g_AtoB"]), run_dir / str(row["g_BtoA"])
        for f in (ab, ba):
            if not f.exists():
                raise InputError(f"{f}: generator file listed for step {int(row['step'])} is missing; "
                                 "choose another --checkpoint")
        epoch = row.get("epoch")
        return {"step": int(row["step"]), "epoch": None if epoch is None or epoch != epoch else int(epoch),
                "g_AtoB": ab, "g_BtoA": ba, "source": source, "rule": rule, "reason": reason}

    if checkpoint is not None and str(checkpoint).strip() != "":
        text = str(checkpoint).strip()
        if text.isdigit():
            rows = _checkpoint_rows(run_dir)
            match = rows[rows["step"] == int(text)]
            if not len(match):
                raise InputError(f"{run_dir}: no checkpoint at step {text}; saved steps: "
                                 f"{', '.join(str(int(s)) for s in rows['step'])}")
            return files(match.iloc[0], f"--checkpoint {text}")
        path = Path(text)
        if not path.exists():
            raise InputError(f"{path}: --checkpoint is neither a saved step nor an existing generator file")
        from harmonize.models.saving import read_generator_metadata

        meta = read_generator_metadata(path)
        direction = meta.get("direction")
        other = "BtoA" if direction == "AtoB" else "AtoB"
        partner = path.with_name(path.name.replace(f"g_{direction}_", f"g_{other}_"))
        if partner == path or not partner.exists():
            raise InputError(f"{path}: the {other} generator of the same step ({partner.name}) is not beside it; "
                             "evaluate needs both generators of one checkpoint")
        ab, ba = (path, partner) if direction == "AtoB" else (partner, path)
        step = meta.get("step")
        return {"step": int(step) if step is not None else None, "epoch": meta.get("epoch"), "g_AtoB": ab,
                "g_BtoA": ba, "source": f"--checkpoint {path.name}", "rule": "", "reason": ""}
    selected = run_dir / "selected.json"
    if selected.exists():
        try:
            sel = json.loads(selected.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"{selected}: not readable JSON ({err}); re-run 'harmonize select --run {run_dir}'") from err
        for key in ("step", "g_AtoB", "g_BtoA"):
            if key not in sel:
                raise InputError(f"{selected}: lacks {key!r}; re-run 'harmonize select --run {run_dir}'")
        row = {"step": sel["step"], "epoch": sel.get("epoch"), "g_AtoB": Path(sel["g_AtoB"]).name
               if not (run_dir / str(sel["g_AtoB"])).exists() else sel["g_AtoB"],
               "g_BtoA": Path(sel["g_BtoA"]).name if not (run_dir / str(sel["g_BtoA"])).exists() else sel["g_BtoA"]}
        return files(row, "selected.json", rule=str(sel.get("rule", "")), reason=str(sel.get("reason", "")))
    rows = _checkpoint_rows(run_dir)
    warnings.warn(f"{run_dir}: no selected.json (run 'harmonize select --run {run_dir}'); evaluating the last "
                  f"checkpoint, step {int(rows.iloc[-1]['step'])}", stacklevel=2)
    return files(rows.iloc[-1], "last checkpoint (no selected.json)")


def resolve_run_dataset(run_dir, data=None, generator_metadata=None, progress=True):
    """Dataset of an evaluation: ``data``, else the run's config.yaml / generator metadata, else built-in.

    Returns ``(path, how)``.
    """
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise InputError(f"{path}: dataset not found; pass the prepared .h5 the run was trained on")
        return path, "--data"
    recorded = None
    config = Path(run_dir) / "config.yaml"
    if config.exists():
        import yaml

        try:
            cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InputError(f"{config}: not readable YAML ({err}); pass --data") from err
        recorded = (cfg.get("run") or {}).get("dataset") or (cfg.get("data") or {}).get("dataset")
        where = str(config)
    if not recorded and generator_metadata:
        recorded = generator_metadata.get("dataset")
        where = "the generator metadata"
    if recorded:
        path = Path(recorded)
        if not path.exists():
            raise InputError(f"{path}: the dataset recorded in {where} no longer exists; pass --data DATASET.h5")
        return path, where
    from harmonize.builtin import builtin_dataset

    return Path(builtin_dataset(progress=progress)), "built-in dataset"


def losses_table(run_dir, step, epoch):
    """Thesis Table 4: every logged loss at ``step`` (losses.csv) and its mean over ``epoch``."""
    import pandas as pd

    steps = _read_rows(Path(run_dir) / "losses.csv")
    epochs = _read_rows(Path(run_dir) / "losses_epoch.csv")
    at_step, at_epoch = {}, {}
    if steps is not None and step is not None and "step" in steps:
        match = steps[steps["step"] == step]
        if not len(match):
            match = steps[steps["step"] <= step].tail(1)
        if len(match):
            at_step = match.iloc[-1].to_dict()
    if epochs is not None and epoch is not None and "epoch" in epochs:
        match = epochs[epochs["epoch"] == epoch]
        if len(match):
            at_epoch = match.iloc[-1].to_dict()
    rows = []
    for name, key in LOSS_ROWS:
        if key in at_step or key in at_epoch:
            rows.append({"quantity": name, "log key": key, "at checkpoint step": at_step.get(key, np.nan),
                         "epoch mean": at_epoch.get(key, np.nan)})
    return pd.DataFrame(rows, columns=["quantity", "log key", "at checkpoint step", "epoch mean"])


# ------------------------------------------------------------------------------------- tables

def intensity_tissue_labels(truth, mask, iterations=100):
    """Three-class intensity segmentation of the truth maps inside ``mask``: 1 CSF, 2 GM, 3 WM.

    One-dimensional k-means (Lloyd) on the values in the mask, started at their 20th, 60th and
    95th percentiles (roughly the WM, GM and CSF shares of a brain slice); each voxel goes to the
    nearest class mean. For T1, T2 and PD maps CSF has the highest values and WM the lowest, so
    the highest class is labelled CSF and the lowest WM. Used only when the dataset has no tissue
    labels; partial-volume voxels go to the nearest class.
    """
    labels = np.zeros(np.shape(truth), np.uint8)
    vals = np.asarray(truth, np.float64)[mask]
    if vals.size < 10 or np.ptp(vals) == 0:
        return labels
    centres = np.percentile(vals, [20.0, 60.0, 95.0])
    for _ in range(int(iterations)):
        nearest = np.argmin(np.abs(vals[:, None] - centres[None, :]), axis=1)
        new = np.array([vals[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(3)])
        if np.allclose(new, centres):
            break
        centres = new
    order = np.argsort(centres)                      # low, middle, high
    nearest = np.argmin(np.abs(vals[:, None] - centres[None, :]), axis=1)
    rank = np.empty(3, int)
    rank[order] = np.arange(3)
    labels[mask] = np.array([3, 2, 1], np.uint8)[rank[nearest]]
    return labels


def classifier_table(p_b):
    """Table 7 from P(B) per image set: share called B, accuracy, fooling rate.

    ``p_b`` maps 'real A', 'real B', 'fake B', 'fake A' (any subset) to arrays of P(B).
    """
    import pandas as pd

    from harmonize.assess import roc_auc

    called_b = {k: float(np.mean(v > 0.5)) if len(v) else np.nan for k, v in p_b.items()}
    should = {"real A": "A", "real B": "B", "fake B": "B", "fake A": "A"}
    names = {"real A": "real A (test)", "real B": "real B (test)", "fake B": "fake B = G_AtoB(A)",
             "fake A": "fake A = G_BtoA(B)"}
    rows = []
    for key in ("real A", "real B", "fake B", "fake A"):
        if key not in p_b:
            continue
        acc = called_b[key] if should[key] == "B" else 1.0 - called_b[key]
        rel = np.nan
        if key == "fake B" and "real B" in called_b and called_b["real B"] > 0:
            rel = called_b["fake B"] / called_b["real B"]
        elif key == "fake A" and "real A" in called_b and called_b["real A"] < 1:
            rel = (1.0 - called_b["fake A"]) / (1.0 - called_b["real A"])
        elif key.startswith("real"):
            rel = 1.0
        auc = np.nan
        if should[key] == "B" and "real A" in p_b:
            auc = roc_auc(p_b["real A"], p_b[key])
        elif should[key] == "A" and "real B" in p_b:
            auc = roc_auc(p_b[key], p_b["real B"])
        rows.append({"images": names[key], "should be called": should[key], "n": len(p_b[key]),
                     "called B": called_b[key], "accuracy": acc, "relative to real": rel,
                     "ROC AUC vs other real scanner": auc,
                     "mean P(B)": float(np.mean(p_b[key])) if len(p_b[key]) else np.nan})
    if "real A" in p_b and "real B" in p_b:
        hits = np.concatenate([p_b["real A"] <= 0.5, p_b["real B"] > 0.5])
        rows.insert(2, {"images": "real A + B (test)", "should be called": "A / B",
                        "n": len(hits), "called B": np.nan, "accuracy": float(hits.mean()),
                        "relative to real": np.nan,
                        "ROC AUC vs other real scanner": roc_auc(p_b["real A"], p_b["real B"]),
                        "mean P(B)": np.nan})
    return pd.DataFrame(rows)


def _pick_pairs(pairs, masks_a, k, seed):
    """``k`` test pairs for figures: seeded, among slices with at least half the largest head area."""
    if not len(pairs):
        return pairs
    area = masks_a[pairs[:, 0]].reshape(len(pairs), -1).sum(axis=1)
    good = np.flatnonzero(area >= 0.5 * area.max())
    rng = np.random.default_rng(seed)
    chosen = good if len(good) <= k else np.sort(rng.choice(good, size=k, replace=False))
    return pairs[chosen]


# ------------------------------------------------------------------------------------- main entry

def evaluate_run(run_dir, data=None, checkpoint=None, out_dir=None, classifier=None, baselines=DEFAULT_BASELINES,
                 batch_size=8, seed=0, verbose=False, report=True):
    """Evaluate a run's generators on the test subjects (thesis Tables 4-7, errors against truth).

    Parameters
    ----------
    run_dir : str or Path
        Run folder of ``harmonize train``.
    data : str or Path, optional
        Prepared dataset; default the one recorded in the run, else the built-in dataset.
    checkpoint : int, str or Path, optional
        Step or generator file; default selected.json, else the last checkpoint.
    out_dir : str or Path, optional
        Output folder; default ``<run_dir>/evaluation``.
    classifier : str or Path, optional
        Scanner classifier for Table 7; default the one assess saved, else trained here.
    baselines : sequence of str
        Classical methods next to the CycleGAN in the truth table (fitted on the train split).
    batch_size : int
        Slices per generator call.
    seed : int
        Seed of the slices shown in figures.
    verbose : bool
        Progress messages on stderr.
    report : bool
        Write figures and report.html (tables are always written as CSV).

    Returns
    -------
    dict of str -> pandas.DataFrame
        ``table4`` (losses), ``table5`` (correlation and mutual information), ``table6`` (SSIM,
        NRMSE), ``pairwise`` (all pair metrics), ``table7`` (classifier), ``histograms``,
        ``info`` (key/value: run, checkpoint, dataset, classifier, report path...), and with
        paired truth ``truth`` (per method and subject) and ``truth_summary`` (pooled per method:
        MAE, relative error, bias per tissue, SSIM, share called B); with counterparts also
        ``truth_reference`` (the same errors next to B's own 3-D registered session, on the slices
        it covers).
    """
    import pandas as pd

    from harmonize._fs import check_not_input
    from harmonize.apply import load_generator
    from harmonize.io.dataset import PreparedDataset
    from harmonize.metrics import average_histogram, mutual_information, pairwise_table

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found; pass the --out folder of 'harmonize train'")
    baselines = list(baselines or [])
    from harmonize.baselines import BASELINES

    for b in baselines:
        if b not in BASELINES:
            raise ConfigError(f"--baselines: unknown baseline {b!r}; choose from {', '.join(BASELINES)}")
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    gen_ab = load_generator(ckpt["g_AtoB"])
    gen_ba = load_generator(ckpt["g_BtoA"])
    data_path, data_how = resolve_run_dataset(run_dir, data, gen_ab.metadata, progress=verbose)
    ds = PreparedDataset(data_path)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "evaluation"
    check_not_input(out_dir, [data_path, ckpt["g_AtoB"], ckpt["g_BtoA"]])
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose an output folder")
    notes = []
    if "last checkpoint" in ckpt["source"]:
        notes.append(f"No selected.json in the run: the last checkpoint (step {ckpt['step']}) was evaluated. Run "
                     "'harmonize select' to choose one by the thesis rules, or pass --checkpoint.")
    _check_compatible(gen_ab, gen_ba, ds, data_path, notes)
    test = ds.split("test")
    if not len(test.a) or not len(test.b):
        raise InputError(f"{data_path}: the test split has no slices of one scanner; re-run 'harmonize prepare' "
                         "with --test-subjects >= 1")
    units, map_b = ds.units_b, ds.map_type_b
    _say(verbose, f"step {ckpt['step']} ({ckpt['source']}); {len(test.a)} A + {len(test.b)} B test slices of "
                  f"{', '.join(test.subjects)}")

    # ---- fake images, exactly as `harmonize apply` makes them
    fake_b = gen_ab.harmonize(test.a.images, batch_size=batch_size, mask=test.a.masks.astype(bool))
    fake_a = gen_ba.harmonize(test.b.images, batch_size=batch_size, mask=test.b.masks.astype(bool))

    # ---- Table 4
    table4 = losses_table(run_dir, ckpt["step"], ckpt["epoch"])
    if not len(table4):
        notes.append(f"{run_dir}: no losses.csv / losses_epoch.csv rows for step {ckpt['step']}: Table 4 is empty.")

    # ---- Tables 5 and 6 on corresponding slices
    pairs = test.pairs
    if not len(pairs):
        raise InputError(f"{data_path}: the test split has no corresponding slices (same subject and slice on both "
                         "scanners); Tables 5 and 6 need them")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)  # the inputs are checked: now the outputs
    ia, ib = pairs[:, 0], pairs[:, 1]
    stacks = {"A": test.a.images[ia], "B": test.b.images[ib], "fakeA": fake_a[ib], "fakeB": fake_b[ia]}
    masks = {"A": test.a.masks[ia].astype(bool), "B": test.b.masks[ib].astype(bool),
             "fakeA": test.b.masks[ib].astype(bool), "fakeB": test.a.masks[ia].astype(bool)}
    data_range = float(max(test.a.images.max(), test.b.images.max()))
    pairwise = pairwise_table(stacks, data_range)
    pairwise["mutual_information"] = [
        mutual_information(stacks[x], stacks[y], bins=MI_BINS, value_range=(0.0, data_range),
                           mask=masks[x] | masks[y]) for x, y in zip(pairwise["x"], pairwise["y"])]
    table5 = pairwise[["pair", "correlation", "mutual_information", "n_slices"]].copy()
    table6 = pairwise[["pair", "ssim", "nrmse", "n_slices"]].copy()

    # ---- Table 7
    clf_model, clf_meta, clf_how = _classifier(classifier, ds, data_path, out_dir, verbose)
    from harmonize.assess import inputs_for_metadata
    from harmonize.models.classifier import predict_scanner

    def p_b(images, domain):
        return predict_scanner(clf_model, inputs_for_metadata(images, domain, clf_meta, ds.normalization))

    probs = {"real A": p_b(test.a.images, "A"), "real B": p_b(test.b.images, "B"),
             "fake B": p_b(fake_b, "B"), "fake A": p_b(fake_a, "A")}
    table7 = classifier_table(probs)
    if clf_meta.get("dataset") and str(Path(clf_meta["dataset"])) != str(Path(data_path).resolve()):
        notes.append(f"The classifier was trained on another dataset ({clf_meta['dataset']}).")
    real_acc = float(table7.loc[table7["images"] == "real A + B (test)", "accuracy"].iloc[0])
    if real_acc < NEAR_CHANCE:
        notes.append(f"The scanner classifier is near chance on the real test slices (accuracy {real_acc:.2f}): it "
                     "cannot tell the scanners apart, so Table 7 (and 'called B') says nothing about harmonisation.")
    leak = set(clf_meta.get("train_subjects") or []) & set(test.subjects)
    if leak:
        notes.append(f"The classifier was trained on slices of test subjects {', '.join(sorted(leak))}: its accuracy "
                     "on real test slices is optimistic.")

    # ---- histograms (all test slices)
    hist_sets = {"A": (test.a.images, test.a.masks), "B": (test.b.images, test.b.masks),
                 "fake A": (fake_a, test.b.masks), "fake B": (fake_b, test.a.masks)}
    if test.a.truth is not None:
        hist_sets["true B"] = (test.a.truth, test.a.masks)
    hmax = max(float(v[0].max()) for v in hist_sets.values())
    # head voxels with a value (0 = background / vendor mask), as in assess
    hist_curves = {k: average_histogram(v[0], bins=500, value_range=(0.0, hmax), mask=v[1].astype(bool) & (v[0] > 0))
                   for k, v in hist_sets.items()}
    histograms = pd.DataFrame({"bin_low": hist_curves["A"][0][:-1], "bin_high": hist_curves["A"][0][1:],
                               **{k: h for k, (_, h) in hist_curves.items()}})

    result = {"table4": table4, "table5": table5, "table6": table6, "pairwise": pairwise, "table7": table7,
              "histograms": histograms}

    # ---- errors against the paired truth
    truth_bits = None
    if test.a.truth is not None:
        truth_bits = _truth_tables(ds, data_path, test, fake_b, baselines, ckpt, p_b, notes, verbose)
        result["truth"], result["truth_summary"] = truth_bits["table"], truth_bits["summary"]
        if truth_bits["reference"] is not None:
            result["truth_reference"] = truth_bits["reference"]
    else:
        notes.append("The dataset has no paired truth: the errors against a known truth (beyond the thesis) are "
                     "not available. The simulated built-in dataset has it.")

    # ---- write tables, figures, report
    from harmonize.report import write_csv

    csv_names = {"table4": "table4_losses", "table5": "table5_correlation", "table6": "table6_ssim_nrmse",
                 "pairwise": "pairwise_metrics", "table7": "table7_classifier", "histograms": "histograms",
                 "truth": "truth_errors", "truth_summary": "truth_summary", "truth_reference": "truth_reference"}
    for key, name in csv_names.items():
        if key in result:
            write_csv(result[key], out_dir / f"{name}.csv")
    info = {
        "run": str(run_dir), "step": ckpt["step"], "epoch": ckpt["epoch"], "checkpoint_source": ckpt["source"],
        "selection_rule": ckpt["rule"], "selection_reason": ckpt["reason"],
        "g_AtoB": str(ckpt["g_AtoB"]), "g_BtoA": str(ckpt["g_BtoA"]),
        "dataset": str(data_path), "dataset_from": data_how, "source": ds.source, "target": ds.target,
        "map_type": map_b, "units": units, "test_subjects": " ".join(test.subjects),
        "ssim_data_range": data_range, "classifier": str(clf_meta.get("path", "")), "classifier_from": clf_how,
        "classifier_test_accuracy": (clf_meta.get("test_accuracy") or {}).get("accuracy", np.nan),
        "experiment": gen_ab.metadata.get("experiment", ""), "out_dir": str(out_dir),
        "report": str(out_dir / "report.html") if report else "", "notes": " | ".join(notes),
    }
    if report:
        _write_report(result, info, notes, ds, test, stacks, pairs, fake_a, fake_b, hist_curves, truth_bits,
                      out_dir, seed)
    info["seconds"] = time.perf_counter() - t_start
    result["info"] = pd.DataFrame({"key": list(info), "value": [str(v) if v is not None else "" for v in info.values()]})
    write_csv(result["info"], out_dir / "evaluation_info.csv")
    _say(verbose, f"done in {info['seconds']:.0f} s: {out_dir}")
    return result


def _check_compatible(gen_ab, gen_ba, ds, data_path, notes):
    for gen, dom_in, dom_out in ((gen_ab, "A", "B"), (gen_ba, "B", "A")):
        want_in = ds.map_type_a if dom_in == "A" else ds.map_type_b
        want_out = ds.map_type_b if dom_out == "B" else ds.map_type_a
        if gen.input_domain != dom_in or gen.output_domain != dom_out:
            raise ModelError(f"{gen.path}: generator direction {gen.input_domain}->{gen.output_domain}, expected "
                             f"{dom_in}->{dom_out}; pass the run's g_AtoB_/g_BtoA_ files")
        if gen.input_map_type != want_in or gen.output_map_type != want_out:
            raise ModelError(f"{gen.path}: maps {gen.input_map_type}->{gen.output_map_type}, but {data_path} holds "
                             f"{want_in} ({dom_in}) and {want_out} ({dom_out}); pass the dataset the run was trained on")
    src, tgt = gen_ab.metadata.get("source_label"), gen_ab.metadata.get("target_label")
    if src and tgt and (src, tgt) == (ds.target, ds.source) and src != tgt:
        raise ModelError(f"{gen_ab.path}: trained from {src} to {tgt}, but {data_path} has A = {ds.source}, "
                         f"B = {ds.target} (swapped); prepare the dataset with --source {src} --target {tgt}")
    if src and tgt and (src, tgt) != (ds.source, ds.target):
        notes.append(f"The generators were trained from {src} to {tgt}; this dataset's scanners are {ds.source} -> "
                     f"{ds.target}.")
    if tuple(gen_ab.image_size) != tuple(ds.image_size):
        notes.append(f"The generators take {gen_ab.image_size[0]}x{gen_ab.image_size[1]} slices and the dataset has "
                     f"{ds.image_size[0]}x{ds.image_size[1]}: slices were resampled to the network grid and back "
                     "(as 'harmonize apply' does).")


def _classifier(classifier, ds, data_path, out_dir, verbose):
    """(model, metadata with 'path', how it was found) of the Table-7 classifier."""
    from harmonize.assess import find_classifier, train_dataset_classifier
    from harmonize.models.classifier import load_classifier

    if classifier is not None:
        path, how = Path(classifier), "--classifier"
    else:
        path, how = find_classifier(ds), "saved by 'harmonize assess' for this dataset"
        if path is not None:
            path = Path(path)
            if path == (out_dir / "classifier.h5").resolve():
                how = "trained by an earlier 'harmonize evaluate' on this dataset's train split"
    if path is None:
        path = out_dir / "classifier.h5"
        model, meta = train_dataset_classifier(ds, data_path, path, verbose=verbose)
        how = "trained now on the dataset's train split (no classifier from 'harmonize assess' was found)"
    else:
        model, meta = load_classifier(path)
    meta = dict(meta, path=str(path))
    size = tuple(int(v) for v in np.ravel(meta["image_size"]))
    if meta.get("crop_box") is None and tuple(ds.image_size) != tuple(meta.get("source_image_size") or ds.image_size):
        meta["note"] = "the classifier was trained on slices of another size; slices are resampled to its input"
    if len(size) != 2:
        raise ModelError(f"{path}: classifier metadata has image_size {meta['image_size']!r}; re-save it")
    return model, meta, how


def _truth_tables(ds, data_path, test, fake_b, baselines, ckpt, p_b, notes, verbose):
    """The before/after table against the paired truth, with the classical baselines."""

    from harmonize.baselines import fit_baseline_from_dataset
    from harmonize.metrics import TISSUE_LABELS, truth_error_table

    truth = test.a.truth
    head = test.a.masks.astype(bool)
    if test.a.tissue is not None:
        tissue = test.a.tissue
        brain = np.isin(tissue, list(TISSUE_LABELS)) & head
        seg = "the dataset's tissue labels (simulator tissue maps); brain = CSF + GM + WM"
    else:
        brain = head & (truth > 0)
        tissue = intensity_tissue_labels(truth, brain)
        seg = ("a 3-class multi-Otsu segmentation of the true B maps inside the head mask (highest = CSF, "
               "lowest = WM); brain = the head mask")
        notes.append("No tissue labels in the dataset: tissues come from an intensity segmentation of the truth.")
    methods, outputs = {}, {}
    for name in baselines:
        _say(verbose, f"fitting baseline {name} on the train split")
        base = fit_baseline_from_dataset(name, data_path, direction="AtoB")
        label = "none (A unharmonised)" if name == "none" else name
        methods[label] = base.apply(test.a.images, test.a.masks.astype(bool), groups=test.a.subjects)
    cyc = f"CycleGAN {ckpt['g_AtoB'].parent.name} step {ckpt['step']}"
    methods[cyc] = fake_b
    table = truth_error_table(methods, truth, brain, subjects=test.a.subjects, tissue=tissue)
    summary = table[table["subject"] == "all"].drop(columns=["subject"]).reset_index(drop=True)
    called = {m: float(np.mean(p_b(img, "B") > 0.5)) for m, img in methods.items()}
    summary["called B by classifier"] = summary["method"].map(called)
    cols = ["method", "mae", "rel_error_pct", "bias_pct"]
    for t in TISSUE_LABELS.values():
        cols += [f"bias_pct_{t}", f"mae_{t}"]
    cols += ["ssim", "called B by classifier", "n_voxels"]
    summary = summary[[c for c in cols if c in summary.columns]]
    outputs.update(methods)
    reference = _counterpart_reference(test, truth, brain, tissue, fake_b, cyc, p_b, cols)
    return {"table": table, "summary": summary, "methods": outputs, "truth": truth, "brain": brain,
            "tissue": tissue, "segmentation": seg, "cyclegan": cyc, "reference": reference}


#: the reference row of :func:`_counterpart_reference`
COUNTERPART_LABEL = "B session, 3-D registered"


def _counterpart_reference(test, truth, brain, tissue, fake_b, cyc, p_b, cols):
    """No harmonisation, the CycleGAN and B's own session registered in 3-D, on the slices it covers.

    The subject's B session registered onto its A volume and resampled on A's slices (stored by
    ``harmonize prepare --register-volumes``) is what a second scan on the target scanner gives. Its
    error against the truth (B's noise, the interpolation between B's slices) is how closely such a
    scan agrees with the truth: the accuracy of the paired training targets made from it, a scale
    for the errors of fake B. One row per method, pooled over the test slices that have a counterpart (``slices``);
    None when the dataset stores no counterparts.
    """
    from harmonize.metrics import truth_error_table

    cp = test.a.counterpart
    if cp is None:
        return None
    has = ~np.isnan(cp).any(axis=(1, 2))
    if not has.any():
        return None
    methods = {"none (A unharmonised)": test.a.images[has], cyc: fake_b[has], COUNTERPART_LABEL: cp[has]}
    table = truth_error_table(methods, truth[has], brain[has], tissue=tissue[has],
                              data_range=float(truth[brain].max()))
    table["called B by classifier"] = [float(np.mean(p_b(img, "B") > 0.5)) for img in methods.values()]
    table = table[[c for c in cols if c in table.columns]].copy()
    table.insert(1, "slices", f"{int(has.sum())} of {len(has)}")
    return table


# ------------------------------------------------------------------------------------- report

def _write_report(result, info, notes, ds, test, stacks, pairs, fake_a, fake_b, hist_curves, truth_bits, out_dir,
                  seed):
    from harmonize import validation_plots as vp
    from harmonize.report import Report, format_number

    units, map_type = ds.units_b, ds.map_type_b
    fig_dir = out_dir / "figures"
    rep = Report(f"Evaluation of {Path(info['run']).name}: {ds.source} (A) -> {ds.target} (B)", out_dir)
    rep.paragraph(f"Run {info['run']}, checkpoint step {info['step']} (epoch {info['epoch']}), chosen by "
                  f"{info['checkpoint_source']}" + (f" ({info['selection_rule']}: {info['selection_reason']})"
                                                    if info["selection_rule"] else "") + ". "
                  f"Dataset {info['dataset']} ({info['dataset_from']}), test subjects {info['test_subjects']}: "
                  f"{len(test.a)} A and {len(test.b)} B slices, {len(pairs)} corresponding pairs. Maps: {map_type} "
                  f"in {units}. Fake B = G_AtoB(A) and fake A = G_BtoA(B) computed as 'harmonize apply' does.")
    rep.heading("How to read this report")
    guide = [
        ("Table 4", "training losses at the chosen step and their mean over that epoch; they say whether the "
         "adversarial game was balanced, not whether the maps are right."),
        ("Tables 5-6", "correlation, SSIM and NRMSE between corresponding slices of two different sessions. They "
         "are confounded by anatomy and misregistration: A and B differ in position, through-plane offset and "
         "noise, so 'A vs fakeB' scoring higher than 'B vs fakeB' (as in the thesis) means fake B kept A's "
         "anatomy, which is what a generator should do, not that it failed. They cannot show a residual bias "
         "of a few percent."),
        ("Table 7", "a classifier trained on real slices to tell the scanners apart. A good fake B is called B "
         "about as often as real B (fooling rate near 1). It measures whether the scanner signature changed, "
         "not whether the values are right."),
        ("Histograms", "fake B should follow B's histogram; identical histograms can still hide wrong values per "
         "voxel."),
    ]
    if truth_bits is not None:
        guide.append(("Errors against the truth", "the measure that matters where it exists: fake B against the "
                      "same anatomy rendered on scanner B (same slice, no repositioning). MAE in "
                      f"{units}, relative error and tissue-mean bias in % inside the brain. 'none' is the error "
                      "before harmonisation: a method helps where it lowers it."))
    rep.guide(guide)
    for n in notes:
        rep.note(n)

    rep.heading("Table 4: losses at the chosen checkpoint")
    rep.table(result["table4"], "table4_losses", "Logged losses (losses.csv at the step, losses_epoch.csv epoch "
              "mean); D = LSGAN MSE, G terms unweighted, totals weighted as trained", csv=False)
    rep.heading("Table 5: cross-correlation and mutual information")
    rep.table(result["table5"], "table5_correlation", "Pearson correlation over all voxels of corresponding "
              "whole slices (as the thesis); mutual information in nats (100 bins over 0-"
              f"{info['ssim_data_range']:.0f} {units}, voxels in either head mask)", csv=False)
    rep.heading("Table 6: SSIM and NRMSE")
    rep.table(result["table6"], "table6_ssim_nrmse", "Mean over corresponding whole slices; SSIM: skimage, "
              f"Gaussian window sigma 1.5, data_range {info['ssim_data_range']:.1f} {units}; NRMSE euclidean, first "
              "image of the pair as reference", csv=False)
    rep.heading("Table 7: scanner classifier on real and fake slices")
    acc = info["classifier_test_accuracy"]
    rep.paragraph(f"Classifier {info['classifier']} ({info['classifier_from']}); its accuracy on the real test "
                  f"slices: {format_number(float(acc), 2) if acc == acc else 'not recorded'}. 'called B' = share "
                  "with P(B) > 0.5; for fake B the accuracy is that share (thesis Table 7); 'relative to real' "
                  "divides it by the share of real B called B (the fooling rate; 1 = as convincing as real B).")
    rep.table(result["table7"], "table7_classifier", "Scanner classifier on the test slices", digits=2, csv=False)

    rep.heading("Histograms (thesis Fig. 16)")
    panels = [("A and B", {k: hist_curves[k] for k in ("A", "B")}),
              ("fake A and fake B", {k: hist_curves[k] for k in ("fake A", "fake B")}),
              ("A, B and fake A", {k: hist_curves[k] for k in ("A", "B", "fake A")}),
              ("A, B and fake B", {k: hist_curves[k] for k in ("A", "B", "fake B")})]
    if "true B" in hist_curves:
        panels.append(("fake B and true B (same anatomy)", {k: hist_curves[k] for k in ("fake B", "true B")}))
    xmax = float(hist_curves["A"][0][-1])
    fig16 = vp.histogram_panels_figure(panels, fig_dir / "fig16_histograms.png", map_type=map_type, units=units,
                                       xlim=(0, xmax), ncols=2)
    rep.figure(fig16, "Average 500-bin histograms of the test slices, voxels > 0 inside the head masks (fake B: "
                      "A's mask, fake A: B's mask). Data: histograms.csv.")

    rep.heading("Image grids")
    chosen = _pick_pairs(pairs, test.a.masks.astype(bool), GRID_SLICES, seed)
    ia, ib = chosen[:, 0], chosen[:, 1]
    titles = [f"{test.a.subjects[i]} slice {test.a.slices[i]}" for i in ia]
    vmax = vp.robust_max(test.a.images[ia], test.b.images[ib])
    rows = [("A (input)", test.a.images[ia], "map"), ("fake B", fake_b[ia], "map"),
            ("B (other session)", test.b.images[ib], "map")]
    if test.a.truth is not None:
        rows.append(("true B (A's anatomy)", test.a.truth[ia], "map"))
    rows.append(("fake B - A (change)", fake_b[ia] - test.a.images[ia], "diff"))
    if test.a.truth is not None:
        rows.append(("fake B - true B (error)", fake_b[ia] - test.a.truth[ia], "diff"))
    grid_ab = vp.image_grid_figure(rows, fig_dir / "grid_AtoB.png", map_type=map_type, units=units, vmax=vmax,
                                   col_titles=titles, suptitle="A -> B on test slices (one colour scale)")
    rep.figure(grid_ab, f"Test slices A, fake B, B and (where known) the true B on one {map_type} scale "
                        f"(0-{vmax:.0f} {units}); differences on one symmetric scale.")
    rows = [("B (input)", test.b.images[ib], "map"), ("fake A", fake_a[ib], "map"),
            ("A (other session)", test.a.images[ia], "map"), ("fake A - B (change)", fake_a[ib] - test.b.images[ib], "diff")]
    grid_ba = vp.image_grid_figure(rows, fig_dir / "grid_BtoA.png", map_type=map_type, units=units, vmax=vmax,
                                   col_titles=[f"{test.b.subjects[j]} slice {test.b.slices[j]}" for j in ib],
                                   suptitle="B -> A on test slices (one colour scale)")
    rep.figure(grid_ba, "Test slices B, fake A and A on the same scale.")

    if truth_bits is not None:
        rep.heading("Errors against the paired truth (beyond the thesis)")
        rep.paragraph(f"Each method maps test A to scanner B; the truth is A's own anatomy rendered on scanner B "
                      f"without noise (same grid). Tissues: {truth_bits['segmentation']}. MAE in {units}; "
                      "rel_error_pct = mean |pred - truth| / truth x 100; bias_pct = (mean pred - mean truth) / mean "
                      "truth x 100 in the brain or tissue; SSIM inside the brain (data range = max of the truth). "
                      "Baselines are fitted on the TRAIN split only. 'called B by classifier' = share of the "
                      "method's output that the real-image classifier calls B.")
        rep.table(result["truth_summary"], "truth_summary", "All test subjects pooled, one row per method "
                  "(the first row is the error before harmonisation)", csv=False)
        rep.table(result["truth"], "truth_errors", "Per test subject and method (subject 'all' = pooled)",
                  csv=False)
        if "truth_reference" in result:
            rep.table(result["truth_reference"], "truth_reference",
                      f"Reference: '{COUNTERPART_LABEL}' is the subject's own B session registered onto A in 3-D and "
                      "resampled on A's slices (harmonize prepare --register-volumes), i.e. what a second scan on "
                      "scanner B gives; its error (B's noise, interpolation between B's slices) shows how closely "
                      "such a scan, and so training targets made from it, agree with the truth. Pooled over the "
                      "test slices B's session covers", csv=False)
        sel = chosen[:min(3, len(chosen)), 0]
        err_rows = [("true B", truth_bits["truth"][sel], "map")]
        for m, img in truth_bits["methods"].items():
            err_rows.append((f"{m} - truth", np.where(truth_bits["brain"][sel], img[sel] - truth_bits["truth"][sel], 0.0),
                             "diff"))
        err_fig = vp.image_grid_figure(err_rows, fig_dir / "truth_error_maps.png", map_type=map_type, units=units,
                                       col_titles=[titles[k] for k in range(len(sel))],
                                       suptitle="Errors against the true B inside the brain (one symmetric scale)")
        rep.figure(err_fig, "Error maps (method - truth) inside the brain mask, one scale for every method.")
        bias_fig = vp.bias_figure(result["truth_summary"], fig_dir / "truth_bias.png",
                                  suptitle="Tissue-mean bias against the true B (%)")
        rep.figure(bias_fig, "Tissue-mean bias per method: 0 % is perfect; 'none' shows the scanner difference.")
    rep.paragraph(f"Tables as CSV in {out_dir}.", cls="small")
    return rep.write()


if __name__ == "__main__":
    from harmonize.cli import command_main

    raise SystemExit(command_main("evaluate"))
