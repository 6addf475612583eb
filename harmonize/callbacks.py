"""Keras callbacks that turn a CycleGAN ``fit`` into a run folder.

Each callback gets what it needs through its constructor and writes its files atomically.
In :func:`harmonize.train.train_experiment` they run in this order at the end of an epoch:

1. :class:`ValidationMetrics` adds ``val_*`` errors against the paired truth to the epoch logs;
2. :class:`LossLogger` writes ``losses.csv`` (one row per step) and ``losses_epoch.csv``;
3. :class:`LossCurves` draws ``loss_curves.png``;
4. :class:`SampleGrid` draws ``samples/epoch_<E>.png``;
5. :class:`RuleCheckpointer` saves ``g_AtoB_<step>.h5`` / ``g_BtoA_<step>.h5`` when due and
   lists them in ``checkpoints.csv``;
6. :class:`TrainingState` writes ``state/`` last: it is the commit point of the epoch. A
   resumed run restarts after the last committed epoch and drops any later rows from the CSV
   files, so nothing is repeated or skipped.

Numbering: ``epoch`` in files counts completed epochs (1 = after the first epoch); ``step``
counts completed training steps (batches), so the checkpoint after epoch E of S steps per epoch
is step E * S.

Checkpoint rules (thesis 2.4) are evaluated on epoch means of the logged losses, not on single
steps: a mean over an epoch is what the thesis's noisy per-step rules approximated, and it gives
at most one rule checkpoint per epoch.
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import keras
import numpy as np

from harmonize._fs import atomic_path
from harmonize.select import CHECKPOINT_FIELDS, CHECKPOINTS_CSV, EPOCHS_CSV, LOSSES_CSV, read_csv_rows


# --------------------------------------------------------------------------------- CSV helpers
def write_csv_rows(path, rows, fields=None):
    """Write dict rows to a CSV atomically; columns in first-seen order unless ``fields`` is given."""
    if fields is None:
        fields = []
        for row in rows:
            fields.extend(k for k in row if k not in fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format(v) for k, v in row.items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _format(value):
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(value) else f"{float(value):.7g}"
    return value


def _float(value):
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------------- rules
def checkpoint_reasons(epoch, total_epochs, logs, every=5, rule_d_fake=0.3, rule_g_total=1.0, rules_from=0.0):
    """Why the generators are saved after ``epoch`` (1-based); empty when they are not.

    Parameters
    ----------
    epoch, total_epochs : int
        Completed epochs and the planned total.
    logs : dict
        Epoch means of the log keys (``d_a_fake``, ``g_a2b_total``...).
    every : int
        Periodic checkpoints every this many epochs (0: none); the last epoch is always saved.
    rule_d_fake : float or None
        Thesis rule: a discriminator's loss on fakes (D_A or D_B) above this.
    rule_g_total : float or None
        Thesis rule: both generator totals below this.
    rules_from : float
        Fraction of training before which the two rules do not save.

    Returns
    -------
    list of str
        Some of 'every <k> epochs', 'last epoch', 'D fake loss > <x>', 'both G losses < <y>'.
    """
    reasons = []
    if every and epoch % every == 0:
        reasons.append(f"every {every} epochs")
    if epoch == total_epochs:
        reasons.append("last epoch")
    if epoch >= rules_from * total_epochs:
        fakes = [_float(logs.get(k)) for k in ("d_a_fake", "d_b_fake") if k in logs]
        if rule_d_fake is not None and any(v > rule_d_fake for v in fakes):
            reasons.append(f"D fake loss > {rule_d_fake:g}")
        totals = [_float(logs.get(k)) for k in ("g_a2b_total", "g_b2a_total")]
        if rule_g_total is not None and all(v < rule_g_total for v in totals):
            reasons.append(f"both G losses < {rule_g_total:g}")
    return reasons


# --------------------------------------------------------------------------------- callbacks
class LossLogger(keras.callbacks.Callback):
    """Write ``losses.csv`` (every step) and ``losses_epoch.csv`` (epoch means) in ``run_dir``.

    The per-step value of a loss is recovered from the running epoch means that keras reports
    (``k m_k - (k-1) m_{k-1}`` at the k-th step of an epoch), so the training step returns only
    ``keras.metrics.Mean`` results and the epoch logs stay exact means. Both files are rewritten
    atomically at each epoch end; rows of the epoch in progress are kept in memory.

    Parameters
    ----------
    run_dir : Path
    steps_per_epoch : int
    start_epoch : int
        First epoch of this (possibly resumed) fit; earlier rows of existing files are kept,
        later ones dropped.
    """

    def __init__(self, run_dir, steps_per_epoch, start_epoch=0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.steps_per_epoch = int(steps_per_epoch)
        self.start_epoch = int(start_epoch)
        self.step_rows = [r for r in read_csv_rows(self.run_dir / LOSSES_CSV)
                          if r.get("epoch") is not None and r["epoch"] <= self.start_epoch]
        self.epoch_rows = [r for r in read_csv_rows(self.run_dir / EPOCHS_CSV)
                           if r.get("epoch") is not None and r["epoch"] <= self.start_epoch]
        self._previous = {}
        self._epoch = self.start_epoch
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._previous = {}
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        k = batch + 1
        row = {"step": self._epoch * self.steps_per_epoch + k, "epoch": self._epoch + 1}
        for key, mean in logs.items():
            mean = _float(mean)
            previous = self._previous.get(key, 0.0)
            row[key] = k * mean - (k - 1) * previous
            self._previous[key] = mean
        self.step_rows.append(row)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        seconds = time.perf_counter() - (self._epoch_start or time.perf_counter())
        row = {"epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch}
        row.update({k: _float(logs[k]) for k in self._ordered(logs)})
        row["seconds"] = seconds
        self.epoch_rows.append(row)
        write_csv_rows(self.run_dir / LOSSES_CSV, self.step_rows, fields=self._fields(self.step_rows))
        write_csv_rows(self.run_dir / EPOCHS_CSV, self.epoch_rows, fields=self._fields(self.epoch_rows))

    def _ordered(self, keys):
        """Log keys in the model's order (thesis Table 4: discriminators, then generators), then the rest."""
        preferred = list(getattr(self.model, "log_keys", []) or [])
        return [k for k in preferred if k in keys] + sorted(k for k in keys if k not in preferred)

    def _fields(self, rows):
        keys = set()
        for row in rows:
            keys.update(row)
        head = [k for k in ("step", "epoch") if k in keys]
        tail = [k for k in ("seconds",) if k in keys]
        return head + self._ordered(keys - set(head) - set(tail)) + tail


class LossCurves(keras.callbacks.Callback):
    """Redraw ``loss_curves.png`` from a :class:`LossLogger`'s rows at every epoch end."""

    def __init__(self, logger, path, title=None, rules=None):
        super().__init__()
        self.logger = logger
        self.path = Path(path)
        self.title = title
        self.rules = rules

    def on_epoch_end(self, epoch, logs=None):
        from harmonize.plots import plot_loss_curves

        plot_loss_curves(self.logger.step_rows, self.logger.epoch_rows, self.path, title=self.title,
                         rules=self.rules)


class SampleGrid(keras.callbacks.Callback):
    """Draw ``samples/epoch_<E>.png``: fixed test slices A, fake B, B, fake A in physical units.

    Parameters
    ----------
    out_dir : Path
        Folder of the PNG files.
    real_a, real_b : np.ndarray
        (n, rows, cols) slices in physical units (row i of each is shown side by side; use
        corresponding slices when the data have them).
    norm : Normalization
        Maps physical units to the network range and back; its scales are the colour limits.
    info : dict
        ``label_a``, ``label_b``, ``units_a``, ``units_b``, ``map_a``, ``map_b`` and ``title``.
    """

    def __init__(self, out_dir, real_a, real_b, norm, info=None):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.real_a = np.asarray(real_a, np.float32)
        self.real_b = np.asarray(real_b, np.float32)
        self.norm = norm
        self.info = dict(info or {})

    def translate(self):
        """``(fake_b, fake_a)`` of the fixed slices, physical units, (n, rows, cols)."""
        with _saved_generators(self.model):
            return translate(self.model.gen_a2b, self.real_a, self.norm, "A", "B"), \
                translate(self.model.gen_b2a, self.real_b, self.norm, "B", "A")

    def on_epoch_end(self, epoch, logs=None):
        from harmonize.plots import plot_sample_grid

        fake_b, fake_a = self.translate()
        info = self.info
        title = f"{info.get('title', '')} epoch {epoch + 1}".strip()
        plot_sample_grid(self.real_a, fake_b, self.real_b, fake_a, self.out_dir / f"epoch_{epoch + 1:03d}.png",
                         vmax_a=self.norm.scale("A"), vmax_b=self.norm.scale("B"),
                         label_a=info.get("label_a", "A"), label_b=info.get("label_b", "B"),
                         units_a=info.get("units_a", "ms"), units_b=info.get("units_b", "ms"),
                         map_a=info.get("map_a", "T1"), map_b=info.get("map_b", "T1"), title=title)


def _saved_generators(model):
    """``model.saved_generators()`` for the training model; no change for a model without one."""
    import contextlib

    block = getattr(model, "saved_generators", None)
    return block() if block is not None else contextlib.nullcontext()


def translate(generator, images, norm, source, target, batch_size=8):
    """Run a generator on (n, rows, cols) physical-unit slices; returns (n, rows, cols) physical units.

    Inputs are normalised with the source domain's scale and clipped to the network range; the
    output is returned with the target domain's scale. Calls the model directly (no ``predict``),
    in inference mode.
    """
    images = np.asarray(images, np.float32)
    out = []
    for start in range(0, len(images), batch_size):
        x = np.clip(norm.to_network(images[start:start + batch_size], source), -1.0, 1.0)[..., None]
        y = np.asarray(generator(x, training=False), dtype=np.float32)[..., 0]
        out.append(norm.from_network(y, target))
    return np.concatenate(out) if out else images.copy()


class ValidationMetrics(keras.callbacks.Callback):
    """Add errors against the paired truth (test split) to the epoch logs.

    ``val_mae_a2b``: mean absolute error (units of B: ms or %) of G(A) against the truth of those
    slices on scanner B, inside the A foreground mask; ``val_mae_b2a`` the same for F(B) against
    the truth on scanner A. ``val_mae_a2b_identity`` (constant) is the error of not harmonising
    at all, for reference. The truth is the simulator's noise-free rendering, so these numbers
    measure what harmonisation can fix. The test subjects are used because the thesis data have
    no validation split; choosing a checkpoint by them makes the test errors of that checkpoint
    slightly optimistic (say so when reporting).

    Parameters
    ----------
    a_images, a_truth, a_masks : np.ndarray
        (n, rows, cols) test slices of A in physical units, their truth on B, foreground masks.
    b_images, b_truth, b_masks : np.ndarray or None
        The same for B (None: only the A->B direction is scored).
    norm : Normalization
    """

    def __init__(self, a_images, a_truth, a_masks, norm, b_images=None, b_truth=None, b_masks=None):
        super().__init__()
        self.a = (np.asarray(a_images, np.float32), np.asarray(a_truth, np.float32), np.asarray(a_masks) > 0)
        self.b = None if b_images is None else (np.asarray(b_images, np.float32), np.asarray(b_truth, np.float32),
                                                 np.asarray(b_masks) > 0)
        self.norm = norm
        images, truth, mask = self.a
        self.identity_a2b = float(np.mean(np.abs(images - truth)[mask])) if mask.any() else float("nan")

    def compute(self):
        """Dict of the validation errors of the generators as they would be saved now (the moving
        averages of their weights when training keeps them)."""
        images, truth, mask = self.a
        with _saved_generators(self.model):
            fake_b = translate(self.model.gen_a2b, images, self.norm, "A", "B")
            fake_a = None if self.b is None else translate(self.model.gen_b2a, self.b[0], self.norm, "B", "A")
        out = {"val_mae_a2b": float(np.mean(np.abs(fake_b - truth)[mask])) if mask.any() else float("nan"),
               "val_mae_a2b_identity": self.identity_a2b}
        if self.b is not None:
            _, truth, mask = self.b
            out["val_mae_b2a"] = float(np.mean(np.abs(fake_a - truth)[mask])) if mask.any() else float("nan")
        return out

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.compute())


class RuleCheckpointer(keras.callbacks.Callback):
    """Save both generators when :func:`checkpoint_reasons` says so; keep ``checkpoints.csv``.

    Parameters
    ----------
    run_dir : Path
    save_fn : callable
        ``save_fn(step, epoch) -> (path_a2b, path_b2a)`` writes the two generators.
    total_epochs, steps_per_epoch : int
    every, rule_d_fake, rule_g_total, rules_from
        See :func:`checkpoint_reasons`.
    start_epoch : int
        First epoch of this fit; rows of later epochs in an existing checkpoints.csv are dropped.
    """

    def __init__(self, run_dir, save_fn, total_epochs, steps_per_epoch, every=5, rule_d_fake=0.3,
                 rule_g_total=1.0, rules_from=0.0, start_epoch=0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.save_fn = save_fn
        self.total_epochs = int(total_epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.every, self.rule_d_fake, self.rule_g_total, self.rules_from = every, rule_d_fake, rule_g_total, rules_from
        self.rows = [r for r in read_csv_rows(self.run_dir / CHECKPOINTS_CSV) if r["epoch"] <= int(start_epoch)]

    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1
        reasons = checkpoint_reasons(number, self.total_epochs, logs or {}, self.every, self.rule_d_fake,
                                     self.rule_g_total, self.rules_from)
        if not reasons:
            return
        step = number * self.steps_per_epoch
        path_a2b, path_b2a = self.save_fn(step, number)
        self.rows.append({"step": step, "epoch": number, "reason": "; ".join(reasons),
                          "g_AtoB": Path(path_a2b).name, "g_BtoA": Path(path_b2a).name})
        write_csv_rows(self.run_dir / CHECKPOINTS_CSV, self.rows, fields=CHECKPOINT_FIELDS)


class TrainingState(keras.callbacks.Callback):
    """Resumable training state in ``state_dir``: a ``tf.train.Checkpoint`` written every epoch.

    Holds the networks, their optimisers (Adam moments, iteration counts, loss scales), the
    image pools, the random generator, and the completed epoch and step counts. Only the latest
    state is kept. It is written last at an epoch end (TensorFlow updates its index file
    atomically), so it marks the last fully recorded epoch.

    Parameters
    ----------
    state_dir : Path
    objects : dict
        Trackable objects by name (:meth:`CycleGAN.checkpoint_objects`).
    steps_per_epoch : int
    """

    def __init__(self, state_dir, objects, steps_per_epoch):
        super().__init__()
        import tensorflow as tf

        self.state_dir = Path(state_dir)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(epoch=self.epoch, step=self.step, **objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.state_dir), max_to_keep=1,
                                                  checkpoint_name="state")

    @property
    def latest(self):
        """Path prefix of the latest saved state, or None."""
        return self.manager.latest_checkpoint

    def restore(self):
        """Restore the latest state. Returns ``(epoch, step)`` completed, or ``(0, 0)`` when none."""
        if self.latest is None:
            return 0, 0
        status = self.checkpoint.restore(self.latest)
        # every saved object must find its variables: a partial restore would silently resume a
        # different run
        status.assert_existing_objects_matched()
        return int(self.epoch.numpy()), int(self.step.numpy())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.step.assign((epoch + 1) * self.steps_per_epoch)
        self.manager.save(checkpoint_number=epoch + 1)
