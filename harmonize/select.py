"""Choose one checkpoint of a training run: the thesis epoch-selection rules, or a validation metric.

    harmonize select --run DIR [--by loss-rules|metric] [--seed 0]
                     [--metric val_mae_a2b] [--mode auto|min|max] [--balance 0.4]

Writes ``DIR/selected.json``::

    {"step": 1080, "epoch": 18, "g_AtoB": "g_AtoB_001080.h5", "g_BtoA": "g_BtoA_001080.h5",
     "by": "loss-rules", "rule": "all", "reason": "...", "seed": 0,
     "candidates": [{"step": ..., "epoch": ..., "g_AtoB": ..., "g_BtoA": ...}, ...],
     "checked": [{"step": ..., "epoch": ..., "passed": [...], "failed": [...], "losses": {...}}, ...]}

``g_AtoB`` / ``g_BtoA`` are file names inside the run folder; ``candidates`` are the checkpoints
the choice was made among, ``checked`` every checkpoint looked at with the rules it passed.

Loss rules (thesis 2.4), on the epoch means of ``losses_epoch.csv`` at each saved checkpoint:

1. the checkpoint is in the second half of training (epoch > epochs / 2);
2. both generator totals are below 1.5 (``g_max``);
3. ... and balanced: ``|G_AtoB - G_BtoA| <= balance * max(G_AtoB, G_BtoA)`` (default 0.4; the
   thesis does not give a number, and its chosen Experiment 4 epoch had 0.75 vs 1.19);
4. both discriminators' losses on real images lie in 0.01-0.15;
5. where possible, both discriminators' losses on fakes exceed 0.1.

The choice is a seeded random one among the checkpoints that pass (the thesis picked "a random
one that fulfilled the requirements"). When none passes every rule, the rules are relaxed in
this order, and ``reason`` says which were dropped: (a) without rule 5; (b) also without the
balance of rule 3; (c) also without rule 4; (d) no loss rule: the latest checkpoint of the second
half; (e) the latest checkpoint of all.

``--by metric`` picks the checkpoint with the best logged validation value (default
``val_mae_a2b``, the mean absolute error of G(A) against the paired truth, lower is better).
Those values come from the test subjects, so a checkpoint chosen by them has slightly
optimistic test errors.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from harmonize.errors import ConfigError, InputError

#: files of a run folder that selection reads (written by harmonize.callbacks)
LOSSES_CSV = "losses.csv"
EPOCHS_CSV = "losses_epoch.csv"
CHECKPOINTS_CSV = "checkpoints.csv"
CHECKPOINT_FIELDS = ("step", "epoch", "reason", "g_AtoB", "g_BtoA")

G_MAX = 1.5
D_REAL_RANGE = (0.01, 0.15)
D_FAKE_MIN = 0.1
BALANCE = 0.4

#: relaxation levels: (id, rules required, description)
LEVELS = (
    ("all", ("second_half", "g_max", "g_balanced", "d_real", "d_fake"), "every thesis rule holds"),
    ("no-d-fake", ("second_half", "g_max", "g_balanced", "d_real"),
     "relaxed: no checkpoint also had D fake losses > 0.1 (a 'where possible' rule)"),
    ("no-balance", ("second_half", "g_max", "d_real"),
     "relaxed: no checkpoint also had balanced generator losses"),
    ("no-d-real", ("second_half", "g_max"),
     "relaxed: no checkpoint also had D real losses in 0.01-0.15"),
    ("second-half", ("second_half",),
     "relaxed: no checkpoint of the second half had both generator losses < 1.5; took the latest one"),
    ("any", (), "relaxed: no checkpoint in the second half of training; took the latest checkpoint"),
)


def add_arguments(parser):
    parser.add_argument("--run", required=True, metavar="DIR", help="run folder of 'harmonize train'")
    parser.add_argument("--by", choices=("loss-rules", "metric"), default="loss-rules",
                        help="thesis loss rules (default) or the best logged validation metric")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choice among candidates")
    parser.add_argument("--metric", default="val_mae_a2b", help="column of losses_epoch.csv for --by metric")
    parser.add_argument("--mode", choices=("auto", "min", "max"), default="auto",
                        help="whether lower or higher --metric is better (auto: max for ssim/corr/acc, else min)")
    parser.add_argument("--balance", type=float, default=BALANCE,
                        help="largest relative difference of the two generator losses counted as balanced")


def run(args):
    selection = select_checkpoint(args.run, by=args.by, seed=args.seed, metric=args.metric, mode=args.mode,
                                  balance=args.balance)
    path = write_selection(args.run, selection)
    print(f"selected step {selection['step']} (epoch {selection['epoch']}): {selection['g_AtoB']}, "
          f"{selection['g_BtoA']}\n  {selection['reason']}\n  written to {path}")
    return 0


def read_csv_rows(path):
    """Rows of a CSV file as dicts, numbers converted, empty cells None ([] when the file is absent)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(text):
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def rule_checks(losses, epoch, total_epochs, balance=BALANCE):
    """Which thesis rules a checkpoint passes.

    Parameters
    ----------
    losses : dict
        Epoch means (``g_a2b_total``, ``g_b2a_total``, ``d_a_real``, ``d_b_real``, ``d_a_fake``,
        ``d_b_fake``).
    epoch, total_epochs : int
    balance : float

    Returns
    -------
    dict of str -> bool
        Keys ``second_half``, ``g_max``, ``g_balanced``, ``d_real``, ``d_fake``.
    """
    def value(key):
        v = losses.get(key)
        return float("nan") if v is None else float(v)

    g1, g2 = value("g_a2b_total"), value("g_b2a_total")
    reals = [value("d_a_real"), value("d_b_real")]
    fakes = [value("d_a_fake"), value("d_b_fake")]
    return {
        "second_half": epoch > total_epochs / 2,
        "g_max": g1 < G_MAX and g2 < G_MAX,
        "g_balanced": abs(g1 - g2) <= balance * max(g1, g2),
        "d_real": all(D_REAL_RANGE[0] <= r <= D_REAL_RANGE[1] for r in reals),
        "d_fake": all(f > D_FAKE_MIN for f in fakes),
    }


def _load_run(run_dir):
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found; give the --out folder of 'harmonize train'")
    checkpoints = read_csv_rows(run_dir / CHECKPOINTS_CSV)
    if not checkpoints:
        raise InputError(f"{run_dir / CHECKPOINTS_CSV}: no saved checkpoints listed; train longer or check the folder")
    epochs = {int(r["epoch"]): r for r in read_csv_rows(run_dir / EPOCHS_CSV) if r.get("epoch") is not None}
    if not epochs:
        raise InputError(f"{run_dir / EPOCHS_CSV}: no epoch losses logged; is this a 'harmonize train' run folder?")
    total = None
    config = run_dir / "config.yaml"
    if config.exists():
        try:
            total = int((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("train", {}).get("epochs"))
        except (TypeError, ValueError, yaml.YAMLError):
            total = None
    if total is None:
        total = max(epochs)
    return run_dir, checkpoints, epochs, total


def _entry(ckpt):
    return {"step": int(ckpt["step"]), "epoch": int(ckpt["epoch"]), "g_AtoB": ckpt["g_AtoB"], "g_BtoA": ckpt["g_BtoA"]}


def select_checkpoint(run_dir, by="loss-rules", seed=0, metric="val_mae_a2b", mode="auto", balance=BALANCE):
    """Choose a checkpoint of a run (see the module docstring).

    Parameters
    ----------
    run_dir : str or Path
        Run folder of ``harmonize train``.
    by : {'loss-rules', 'metric'}
    seed : int
        Seed of the choice among the candidates.
    metric : str
        Column of ``losses_epoch.csv`` for ``by='metric'``.
    mode : {'auto', 'min', 'max'}
        Whether lower or higher ``metric`` is better.
    balance : float
        Relative difference of the generator totals still counted as balanced.

    Returns
    -------
    dict
        The content of ``selected.json``.

    Raises
    ------
    InputError
        The folder has no checkpoints or no logged losses.
    ConfigError
        ``by='metric'`` and the metric was not logged.
    """
    import numpy as np

    run_dir, checkpoints, epochs, total = _load_run(run_dir)
    if by == "metric":
        return _by_metric(run_dir, checkpoints, epochs, metric, mode, seed)
    if by != "loss-rules":
        raise ConfigError(f"--by {by!r}: use loss-rules or metric")
    checked = []
    for ckpt in checkpoints:
        losses = epochs.get(int(ckpt["epoch"]))
        if losses is None:
            continue
        checks = rule_checks(losses, int(ckpt["epoch"]), total, balance)
        keep = ("g_a2b_total", "g_b2a_total", "d_a_real", "d_a_fake", "d_b_real", "d_b_fake")
        checked.append({**_entry(ckpt), "passed": [k for k, v in checks.items() if v],
                        "failed": [k for k, v in checks.items() if not v],
                        "losses": {k: losses[k] for k in keep if losses.get(k) is not None}})
    if not checked:
        raise InputError(f"{run_dir}: none of the checkpoints has epoch losses in losses_epoch.csv")
    rng = np.random.default_rng(seed)
    for level, required, description in LEVELS:
        pool = [c for c in checked if all(r in c["passed"] for r in required)]
        if not pool:
            continue
        if level in ("second-half", "any"):
            chosen = max(pool, key=lambda c: c["step"])
            how = description
        else:
            chosen = pool[int(rng.integers(len(pool)))]
            how = (f"{description}; seeded random choice (seed {seed}) among {len(pool)} "
                   f"candidate{'s' if len(pool) != 1 else ''}")
        g = chosen["losses"]
        reason = (f"{how}. At epoch {chosen['epoch']}: G_AtoB {g.get('g_a2b_total', float('nan')):.3g}, "
                  f"G_BtoA {g.get('g_b2a_total', float('nan')):.3g}, D real {g.get('d_a_real', float('nan')):.3g}/"
                  f"{g.get('d_b_real', float('nan')):.3g}, D fake {g.get('d_a_fake', float('nan')):.3g}/"
                  f"{g.get('d_b_fake', float('nan')):.3g} (of {total} epochs)")
        return {**_entry(chosen), "by": "loss-rules", "rule": level, "reason": reason, "seed": int(seed),
                "balance": balance, "total_epochs": total,
                "candidates": [_entry(c) for c in pool], "checked": checked}
    raise InputError(f"{run_dir}: no checkpoint to choose from")  # unreachable: level 'any' takes all


def _by_metric(run_dir, checkpoints, epochs, metric, mode, seed):
    import math

    logged = sorted({k for row in epochs.values() for k in row if k.startswith("val_")})
    values = []
    for ckpt in checkpoints:
        row = epochs.get(int(ckpt["epoch"]), {})
        v = row.get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            values.append((float(v), ckpt))
    if not values:
        raise ConfigError(f"{run_dir}: no checkpoint has a logged '{metric}' (logged validation columns: "
                          f"{', '.join(logged) or 'none'}); use --by loss-rules, or --metric with one of those")
    if mode == "auto":
        mode = "max" if any(t in metric.lower() for t in ("ssim", "corr", "acc")) else "min"
    if mode not in ("min", "max"):
        raise ConfigError(f"--mode {mode!r}: use auto, min or max")
    sign = 1.0 if mode == "min" else -1.0
    best = min(sign * v for v, _ in values)
    # ties go to the latest checkpoint (more training at the same quality)
    chosen_value, chosen = max(((v, c) for v, c in values if sign * v == best), key=lambda vc: int(vc[1]["step"]))
    reason = (f"best {metric} ({'lowest' if mode == 'min' else 'highest'}) among {len(values)} checkpoints: "
              f"{chosen_value:.4g} at epoch {int(chosen['epoch'])}; the metric is measured on the test subjects, "
              "so test errors of this checkpoint are slightly optimistic")
    return {**_entry(chosen), "by": "metric", "rule": f"{mode} {metric}", "reason": reason, "seed": int(seed),
            "metric": metric, "value": chosen_value,
            "candidates": [{**_entry(c), metric: v} for v, c in values], "checked": []}


def write_selection(run_dir, selection):
    """Write ``selected.json`` in the run folder atomically; returns its path."""
    from harmonize._fs import atomic_path

    path = Path(run_dir) / "selected.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(selection, indent=2) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    from harmonize.cli import command_main

    raise SystemExit(command_main("select"))
