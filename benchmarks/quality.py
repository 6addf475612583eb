"""Quality benchmark: harmonisation against the paired truth, for every method in one table.

On the built-in dataset (or the simulator's alternative scanner pair), test subjects only, fake B
against the true B (the test subject's source session rendered noise-free on the target scanner):

* tissue-mean bias (%) in GM, WM and CSF, MAE (ms) and relative error (%) in the brain mask,
  SSIM to the truth, the share of fake B that the real-image scanner classifier calls B (relative to
  its rate on real B, with its ROC AUC on the real test slices to say how much that means), and the
  training time;
* for no harmonisation, each classical baseline (fitted on the training subjects) and each
  experiment it is pointed at. It trains the experiments itself (``--train``), or evaluates the run
  folders it finds in ``--runs``;
* where the dataset stores each test subject's own B session registered onto A in 3-D (the built-in
  dataset and the alternative pair do), a second table on the test slices that session covers: no
  harmonisation, that registered B session and each experiment, against the same truth. It says how
  close a real scan of the subject on scanner B gets once registered (what the paired training targets
  are made of): a scale for the biases of fake B.

Every number is computed by :func:`harmonize.evaluate.evaluate_run` (the ``harmonize evaluate``
code), at the last checkpoint of each run. The tables are printed and written as Markdown and CSV to
``benchmarks/results/quality-<date>-<scanners>-<experiments>.*``, headed by the machine and the date
(the reference table's CSV as ``...-reference.csv``).

Examples
--------
Recipe study (experiments 7-11, 128 px, about 20 minutes on a 2-core CPU)::

    python benchmarks/quality.py --exp 7 8 9 10 11 --train

The recommended recipe (Experiment 15), on the built-in pair and on the other scanner pair (differences
the default simulator does not make)::

    python benchmarks/quality.py --exp 15 --train
    python benchmarks/quality.py --exp 15 --train --scanners alternative

Several seeds of one setting (one row per seed, then their mean and spread: a single GAN run is one
draw, and on the second pair its WM bias scatters by more than the recipe's target allows)::

    python benchmarks/quality.py --exp 15 --train --scanners alternative --seeds 0 1 2 3

Thesis experiments in their quick profiles::

    python benchmarks/quality.py --exp 1 2 3 4 5 --train --quick
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import harmonize  # noqa: E402  (sets the TensorFlow runtime before anything imports it)
from harmonize.preprocess.rigid import DEFAULT_INTERPOLATOR, INTERPOLATORS, interpolator_suffix  # noqa: E402


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def dataset_for(scanners, image_size, interpolator=DEFAULT_INTERPOLATOR):
    """Prepared dataset of a scanner pair at ``image_size`` (built-in cache for the default pair), its
    3-D registered counterparts resampled with ``interpolator``."""
    from harmonize.builtin import builtin_dataset, cache_dir

    if scanners == "default":
        return Path(builtin_dataset(image_size=image_size, progress=False, interpolator=interpolator))
    from harmonize.prepare import prepare_dataset
    from harmonize.simulate import simulate
    from harmonize.simulate.scanners import SIMULATOR_VERSION, resolve_scanners

    data_dir = cache_dir() / f"{scanners}-data-s{SIMULATOR_VERSION}"
    if not (data_dir / "simulation.json").exists():
        simulate(data_dir, scanners=scanners, progress=False, overwrite=True)
    path = cache_dir() / f"{scanners}-s{SIMULATOR_VERSION}-T1-{image_size}-regvol{interpolator_suffix(interpolator)}.h5"
    if not path.exists():
        a, b = resolve_scanners(scanners)
        prepare_dataset(data_dir, path, source=a.label, target=b.label, image_size=image_size, register=True,
                        register_volumes=True, progress=False, interpolator=interpolator)
    return path


def train_run(exp, run_dir, data, quick, overrides):
    from harmonize.config import load_experiment
    from harmonize.train import train_experiment

    cfg = load_experiment(exp, [f"data.dataset={data}", *overrides], quick=quick)
    start = time.perf_counter()
    train_experiment(cfg, out=run_dir, overwrite=True, verbose=0, progress=False)
    seconds = time.perf_counter() - start
    (Path(run_dir) / "train_seconds.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


def last_step(run_dir):
    import pandas as pd

    rows = pd.read_csv(Path(run_dir) / "checkpoints.csv")
    return int(rows["step"].max())


def evaluate(run_dir, data):
    from harmonize.evaluate import evaluate_run

    return evaluate_run(run_dir, data=data, checkpoint=last_step(run_dir), out_dir=Path(run_dir) / "quality",
                        report=False)


def rows_from(result, label, train_seconds=None, with_baselines=False, key="truth_summary"):
    """Table rows: the run's own row (and the baselines' rows) from an evaluate_run result.

    ``key="truth_reference"``: the rows on the slices B's own session covers, where the other rows
    are no harmonisation and B's 3-D registered session (see harmonize.evaluate).
    """
    summary = result[key]
    t7 = result["table7"].set_index("images")
    real_b = float(t7.loc["real B (test)", "called B"])
    auc = float(t7.loc["real A + B (test)", "ROC AUC vs other real scanner"])
    rows = []
    for _, r in summary.iterrows():
        method = str(r["method"])
        is_run = method.startswith("CycleGAN")
        if not is_run and not with_baselines:
            continue
        called_b = r.get("called B by classifier", float("nan"))
        rows.append({
            "method": label if is_run else method,
            "MAE (ms)": r["mae"], "rel. error (%)": r.get("rel_error_pct", float("nan")),
            "bias WM (%)": r["bias_pct_WM"], "bias GM (%)": r["bias_pct_GM"], "bias CSF (%)": r["bias_pct_CSF"],
            "SSIM": r["ssim"],
            "fake B called B (rel.)": called_b / real_b if real_b > 0 else float("nan"),
            "classifier AUC (real)": auc,
            "train (s)": train_seconds if is_run else float("nan"),
        })
    return rows


def run_seed(run_dir):
    """The ``train.seed`` a run folder was trained with (from its config.yaml), or None."""
    from harmonize.config import load_experiment

    path = Path(run_dir) / "config.yaml"
    return load_experiment(path).train.seed if path.exists() else None


def seed_summary(rows, label):
    """Two rows over the per-seed rows of one setting: their mean and their spread (max - min).

    Every numeric column is summarised (the spread of the training time included); the method
    column reads ``"<label>: mean"`` and ``"<label>: spread (max - min)"``.
    """
    import pandas as pd

    df = pd.DataFrame(rows).drop(columns="method")
    return [{"method": f"{label}: mean", **df.mean().to_dict()},
            {"method": f"{label}: spread (max - min)", **(df.max() - df.min()).to_dict()}]


def markdown(df):
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(v if isinstance(v, str) else ("" if v != v else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", nargs="*", default=[], help="experiments to train/evaluate (numbers or YAML paths)")
    parser.add_argument("--train", action="store_true", help="train the experiments (else evaluate existing runs)")
    parser.add_argument("--quick", action="store_true", help="use the experiments' quick profiles")
    parser.add_argument("--runs", default=str(REPO / "benchmarks" / "results" / "runs"), metavar="DIR",
                        help="folder of the run folders (<runs>/<scanners>/exp<N>)")
    parser.add_argument("--scanners", default="default", choices=("default", "alternative"),
                        help="simulated scanner pair")
    parser.add_argument("--interpolator", choices=tuple(INTERPOLATORS), default=None,
                        help="how the dataset's paired targets (3-D registered counterparts) are resampled "
                             "(harmonize prepare --interpolator); default: the first experiment's "
                             f"data.interpolator, else {DEFAULT_INTERPOLATOR}")
    parser.add_argument("--image-size", type=int, default=None,
                        help="dataset size; default: the first experiment's data.image_size")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for every experiment (e.g. train.epochs=4)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="N",
                        help="train/evaluate each experiment once per seed (run folders exp<N>-seed<S>): one row "
                             "per seed, then the mean and the spread (max - min) of the seeds; default: one run "
                             "with the experiment's train.seed")
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.seeds and any(o.split("=", 1)[0].strip() == "train.seed" for o in args.set):
        parser.error("give the seeds with --seeds or with --set train.seed, not both")

    from harmonize.config import load_experiment

    exps = args.exp
    configs = [load_experiment(exp, list(args.set), quick=args.quick).data for exp in exps]
    size = args.image_size or (configs[0].image_size if configs else 128)
    wanted = {c.interpolator for c in configs if c.interpolator}
    if len(wanted) > 1 or (args.interpolator and wanted - {args.interpolator}):
        parser.error(f"the experiments are defined on counterparts resampled with {', '.join(sorted(wanted))}"
                     + (f" but --interpolator {args.interpolator} was given" if args.interpolator else "")
                     + ": benchmark them in separate runs")
    args.interpolator = args.interpolator or (wanted.pop() if wanted else DEFAULT_INTERPOLATOR)
    data = dataset_for(args.scanners, size, args.interpolator)
    print(f"dataset: {data}")
    rows, reference = [], []
    baselines_done = False
    for exp in exps:
        label = f"exp {exp}" + (" (quick)" if args.quick else "")
        name = f"exp{exp}" + ("-quick" if args.quick else "") + interpolator_suffix(args.interpolator)
        seed_rows, seed_reference = [], []
        for seed in args.seeds or [None]:
            run_dir = Path(args.runs) / args.scanners / (name if seed is None else f"{name}-seed{seed}")
            overrides = list(args.set) + ([] if seed is None else [f"train.seed={seed}"])
            seconds = None
            if args.train or not (run_dir / "checkpoints.csv").exists():
                print(f"training experiment {exp}" + ("" if seed is None else f", seed {seed}") + f" -> {run_dir}",
                      flush=True)
                seconds = train_run(exp, run_dir, data, args.quick, overrides)
            else:
                if seed is not None and run_seed(run_dir) != seed:
                    parser.error(f"{run_dir} was trained with seed {run_seed(run_dir)}, not {seed}: "
                                 "train it again with --train")
                if (run_dir / "train_seconds.json").exists():
                    seconds = json.loads((run_dir / "train_seconds.json").read_text())["seconds"]
            print(f"evaluating {run_dir} at its last checkpoint", flush=True)
            result = evaluate(run_dir, data)
            run_label = label if seed is None else f"{label}, seed {seed}"
            new_rows = rows_from(result, run_label, seconds, with_baselines=not baselines_done)
            rows += new_rows
            seed_rows += [r for r in new_rows if r["method"] == run_label]
            if "truth_reference" in result:
                new_rows = rows_from(result, run_label, seconds, with_baselines=not baselines_done,
                                     key="truth_reference")
                reference += new_rows
                seed_reference += [r for r in new_rows if r["method"] == run_label]
                covered = result["truth_reference"]["slices"].iloc[0]
            baselines_done = True
        if len(seed_rows) > 1:
            summary_label = f"{label}, {len(seed_rows)} seeds"
            rows += seed_summary(seed_rows, summary_label)
            if seed_reference:
                reference += seed_summary(seed_reference, summary_label)
    if not rows:
        parser.error("give at least one experiment with --exp")
    df = pd.DataFrame(rows)
    order = {"none (A unharmonised)": 0, "linear": 1, "histmatch": 2, "nyul": 3}
    df = df.sort_values("method", key=lambda s: s.map(lambda m: order.get(m, 10)), kind="stable")
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (f"Quality benchmark, {now}, {cpu_model()} ({__import__('os').cpu_count()} CPUs), harmonize "
              f"{harmonize.__version__}; dataset {data.name} ({args.scanners} scanners), test subjects, fake B vs "
              f"the paired truth; runs at their last checkpoint.")
    text = header + "\n\n" + markdown(df)
    if reference:
        ref = pd.DataFrame(reference).drop(columns=["classifier AUC (real)"])
        ref = ref.sort_values("method", key=lambda s: s.map(lambda m: 0 if m.startswith("none") else
                                                            1 if m.startswith("B session") else 10), kind="stable")
        text += (f"\n\nReference, on the {covered} test slices that B's own session covers: the subject's B session "
                 "registered onto A in 3-D and resampled on A's slices (what a second scan on scanner B gives, and "
                 "what the paired training targets are made of) against the same truth.\n\n" + markdown(ref))
    print()
    print(text)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = (f"quality-{datetime.date.today()}-{args.scanners}-{'-'.join(map(str, exps))}"
            f"{interpolator_suffix(args.interpolator)}"
            + (f"-seeds{'-'.join(map(str, args.seeds))}" if args.seeds else ""))
    df.to_csv(out / f"{stem}.csv", index=False)
    if reference:
        ref.to_csv(out / f"{stem}-reference.csv", index=False)
    (out / f"{stem}.md").write_text(text + "\n")
    print(f"\nwritten: {out / stem}.csv, .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
