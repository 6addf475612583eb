"""Train a CycleGAN experiment (thesis Table 1) and record everything in a run folder.

    harmonize train --exp 3 [--data DATASET.h5] [--out DIR] [--quick] [--resume]
                    [--epochs E] [--batch-size B] [--image-size S] [--seed 0]
                    [--precision auto|float32|mixed_float16|mixed_bfloat16]
                    [--strategy default|mirrored|multiworker] [--set section.key=value ...]

Without --data the built-in two-scanner dataset is used (created and cached on first use;
Experiment 6 uses its T1 maps for scanner A and T2 maps for scanner B). --quick applies the
experiment's ``quick`` profile (its ``quick:`` section): for the thesis experiments 1-6 small
images and networks and a few short epochs, for the recipe study (7-16) fewer epochs at full
settings (Experiment 15: 6 instead of 8); minutes on a 2-core CPU, every artifact still written.

The run folder (default ``checkpoints/exp<N>``, ``checkpoints/exp<N>-quick`` with --quick):

    config.yaml           the resolved settings (+ a ``run`` section: data, precision, devices)
    losses.csv            every step: the thesis Table 4 losses (D_A, D_B, D_scanner, G terms)
    losses_epoch.csv      epoch means (+ val_* errors against the paired truth, when available)
    checkpoints.csv       saved generators: step, epoch, why (periodic / thesis rules), files
    g_AtoB_<step>.h5      generators (keras .h5 + normalisation and units metadata; load with
    g_BtoA_<step>.h5      harmonize.load_generator or keras.models.load_model)
    loss_curves.png       losses per step and per epoch
    samples/epoch_<E>.png test slices A, fake B, B, fake A in physical units, fixed colour scale
    state/                the training state for --resume

Checkpoint rules (thesis 2.4: save when a discriminator's loss on fakes exceeds 0.3, and when
both generator losses are below 1) are evaluated on the epoch means of the losses, after each
epoch, besides the periodic checkpoints every ``train.checkpoint_every`` epochs and the last one.

--resume continues an interrupted run after its last completed epoch (networks, optimisers,
image pools and random state restored; the batch order of each epoch depends only on the seed
and the epoch). It may extend the run with a larger --epochs; other settings must match.
Next step: ``harmonize select --run DIR``.
"""
from __future__ import annotations

import dataclasses
import datetime
import shutil
import sys
import tempfile
from pathlib import Path

from harmonize import _runtime
from harmonize.errors import ConfigError

#: What --precision auto picks on a CPU with native bfloat16 (AMX / AVX-512 BF16). On since the quality
#: benchmark showed that mixed_bfloat16 training costs no accuracy of the harmonised maps (Experiment 10,
#: built-in dataset, Intel Xeon with AMX, 2026-12-02: MAE against the truth 27.0 ms in bf16, 27.2 ms in
#: float32; tissue biases within 0.05 points; benchmarks/README.md). Set it to False to make auto pick
#: float32 on every CPU.
BF16_AUTO_ON_CPU = True

#: files that mark a folder as holding a run's results
RUN_MARKERS = ("config.yaml", "losses.csv", "checkpoints.csv", "state")


def add_arguments(parser):
    parser.add_argument("--exp", required=True, metavar="N",
                        help="experiment number (experiments/exp<N>.yaml: 1-6 thesis, 7-16 recipe study, "
                             "15 the recommended recipe) or path to an experiment YAML file")
    parser.add_argument("--data", metavar="DATASET.h5",
                        help="prepared dataset (harmonize prepare); default: the built-in simulated dataset")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: checkpoints/exp<N>[-quick])")
    parser.add_argument("--epochs", type=int, help="number of epochs (train.epochs)")
    parser.add_argument("--batch-size", type=int, help="global batch size (train.batch_size)")
    parser.add_argument("--image-size", type=int, help="network input size in pixels (data.image_size)")
    parser.add_argument("--quick", action="store_true",
                        help="the experiment's quick profile (its quick: section; e.g. fewer epochs): minutes on a CPU")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in the run folder")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run in the run folder first")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
                        help="auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native bf16 (AMX, "
                             "AVX-512 BF16), else float32")
    parser.add_argument("--strategy", choices=("default", "mirrored", "multiworker"),
                        help="tf.distribute strategy (multiworker reads TF_CONFIG)")
    parser.add_argument("--seed", type=int, help="seed of batch order, augmentation and initial weights")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any experiment setting, e.g. --set loss.identity=2 (repeatable)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                        help="keras progress output: 0 silent, 1 progress bar, 2 one line per epoch")


def run(args):
    from harmonize.config import load_experiment

    flags = {"train.epochs": args.epochs, "train.batch_size": args.batch_size, "data.image_size": args.image_size,
             "train.precision": args.precision, "train.strategy": args.strategy, "train.seed": args.seed,
             "data.dataset": args.data}
    cfg = load_experiment(args.exp, list(args.overrides or []), quick=args.quick)
    # the dedicated flags win over --set; their values are used as given (a path is not parsed as YAML)
    cfg = cfg.replace({key: value for key, value in flags.items() if value is not None})
    verbose = args.verbose if args.verbose is not None else ("auto" if sys.stdout.isatty() else 2)
    _runtime.import_tensorflow_quietly()
    result = train_experiment(cfg, out=args.out, resume=args.resume, overwrite=args.overwrite, verbose=verbose)
    print(result.summary())
    return 0


@dataclasses.dataclass
class RunResult:
    """What :func:`train_experiment` did."""

    run_dir: Path
    epochs_done: int
    steps_done: int
    checkpoints: list
    history: dict
    precision: str
    replicas: int

    def summary(self):
        replicas = f"{self.replicas} replica{'s' if self.replicas != 1 else ''}"
        lines = [f"run folder: {self.run_dir}",
                 f"  trained {self.epochs_done} epochs, {self.steps_done} steps ({self.precision}, {replicas})",
                 f"  generators: {len(self.checkpoints)} checkpoints listed in {self.run_dir / 'checkpoints.csv'}",
                 f"  losses:     {self.run_dir / 'losses.csv'}, {self.run_dir / 'losses_epoch.csv'}",
                 f"  plots:      {self.run_dir / 'loss_curves.png'}, {self.run_dir / 'samples'}/",
                 f"  next:       harmonize select --run {self.run_dir}"]
        return "\n".join(lines)


def default_run_dir(cfg):
    """``checkpoints/exp<N>`` (``-quick`` appended for quick runs), relative to the working folder."""
    return Path("checkpoints") / f"exp{cfg.name}{'-quick' if cfg.quick else ''}"


def resolve_precision(name):
    """The keras dtype policy for a --precision choice ('auto' looks at the hardware)."""
    if name != "auto":
        return name
    import tensorflow as tf

    from harmonize._runtime import cpu_has_native_bf16

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if BF16_AUTO_ON_CPU and cpu_has_native_bf16():
        return "mixed_bfloat16"
    return "float32"


def make_strategy(name):
    """The tf.distribute strategy for a --strategy choice.

    'mirrored' uses every GPU, or every logical CPU device when there is no GPU (so tests can
    split a CPU into logical devices); 'multiworker' reads the cluster from TF_CONFIG.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"train.strategy: must be default, mirrored or multiworker, got {name!r}")


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and int(resolver.task_id or 0) == 0 and not has_chief


def learning_rate_schedule(cfg, steps_per_epoch):
    """The learning rate of every Adam optimiser: a number, or :class:`LinearDecay` when ``train.lr_decay_from``
    is set (constant for that fraction of ``train.epochs * steps_per_epoch`` steps, then linearly to zero)."""
    if cfg.train.lr_decay_from is None:
        return cfg.train.learning_rate
    from harmonize.models.cyclegan import LinearDecay

    total = cfg.train.epochs * steps_per_epoch
    return LinearDecay(cfg.train.learning_rate, round(cfg.train.lr_decay_from * total), total)


def build_networks(cfg, image_size, channels=1, priors=None):
    """The networks of an experiment: dict with gen_a2b, gen_b2a, disc_a, disc_b and disc_scanner (or None).

    ``priors``: ``{"gen_a2b": (xp, fp), "gen_b2a": (xp, fp)}`` value-mapping knots in network units
    (:func:`fit_priors`), required when ``cfg.model.prior`` is not 'none'.
    """
    from harmonize.models.discriminators import build_patchgan_discriminator, build_scanner_discriminator
    from harmonize.models.generators import build_generator

    m = cfg.model
    if m.prior != "none" and not priors:
        raise ConfigError(f"model.prior: {m.prior!r} needs the knots fitted on the training data (fit_priors)")
    kwargs = {"base_filters": m.base_filters}
    if m.generator == "unet":
        kwargs.update(depth=m.depth, dropout_blocks=m.dropout_blocks, dropout_rate=m.dropout_rate,
                      residual=m.residual)
    else:
        kwargs.update(n_res_blocks=m.res_blocks)
    if m.prior != "none":
        kwargs_of = {name: {**kwargs, "prior": priors[name]} for name in ("gen_a2b", "gen_b2a")}
    else:
        kwargs_of = {"gen_a2b": kwargs, "gen_b2a": kwargs}
    nets = {
        **{name: build_generator(m.generator, image_size, channels, name=name, **kw) for name, kw in kwargs_of.items()},
        "disc_a": build_patchgan_discriminator(image_size, channels, m.disc_base_filters, m.disc_layers, name="disc_a"),
        "disc_b": build_patchgan_discriminator(image_size, channels, m.disc_base_filters, m.disc_layers, name="disc_b"),
        "disc_scanner": None,
    }
    if cfg.loss.scanner > 0:
        nets["disc_scanner"] = build_scanner_discriminator(image_size, channels, m.disc_base_filters, m.disc_layers,
                                                           name="disc_scanner")
    return nets


def fit_priors(cfg, train, norm):
    """Value-mapping priors of the generators, fitted on the training split (``cfg.model.prior``).

    'histmatch': the histogram-matching baseline (pooled foreground quantiles of the training
    slices, :class:`harmonize.baselines.HistogramMatchingBaseline`) A -> B for ``gen_a2b`` and
    B -> A for ``gen_b2a``, converted to network units. Returns None for prior 'none'.
    """
    if cfg.model.prior == "none":
        return None
    import numpy as np

    from harmonize.baselines import get_baseline

    base = get_baseline(cfg.model.prior).fit(train.a.images, train.a.masks, train.b.images, train.b.masks)
    qa = np.asarray(base.params["source_quantiles"], np.float32)
    qb = np.asarray(base.params["target_quantiles"], np.float32)
    na, nb = norm.to_network(qa, "A"), norm.to_network(qb, "B")
    return {"gen_a2b": (na.tolist(), nb.tolist()), "gen_b2a": (nb.tolist(), na.tolist())}


def open_dataset(cfg, progress=True):
    """The prepared dataset of an experiment: ``(path, PreparedDataset)``, checked against the config."""
    from harmonize.io.dataset import PreparedDataset

    size = cfg.data.image_size
    if cfg.data.dataset:
        path = Path(cfg.data.dataset)
        ds = PreparedDataset(path)
        if ds.image_size != [size, size]:
            rows, cols = ds.image_size
            raise ConfigError(f"{path}: the slices are {rows}x{cols} pixels but the experiment uses {size}x{size}; "
                              f"prepare the data with 'harmonize prepare ... --image-size {size}' "
                              f"or train with --image-size {rows}" + ("" if rows == cols else " (square images)"))
        if (ds.map_type_a, ds.map_type_b) != (cfg.data.map_type, cfg.data.map_type_b):
            raise ConfigError(f"{path}: the dataset holds {ds.map_type_a} (A) and {ds.map_type_b} (B) maps but the "
                              f"experiment expects {cfg.data.map_type} and {cfg.data.map_type_b}; run with "
                              f"--set data.map_type={ds.map_type_a} --set data.target_map_type={ds.map_type_b}")
        from harmonize.preprocess.rigid import DEFAULT_INTERPOLATOR

        wanted, stored = cfg.data.interpolator, ds.attrs.get("counterpart_interpolator", DEFAULT_INTERPOLATOR)
        if cfg.data.align == "volume" and wanted is not None and ds.has_counterparts and stored != wanted:
            raise ConfigError(f"{path}: the paired targets were resampled with {stored} but the experiment is "
                              f"defined on {wanted} ones; prepare a dataset with 'harmonize prepare DATA_DIR --out NEW.h5 "
                              f"--register-volumes --interpolator {wanted}' or train with --set data.interpolator={stored}")
        return path, ds
    from harmonize.builtin import builtin_dataset

    path = builtin_dataset(map_type=cfg.data.map_type, target_map_type=cfg.data.target_map_type,
                           image_size=size, register=True, seed=0, progress=progress,
                           interpolator=cfg.data.interpolator)
    return Path(path), PreparedDataset(path)


def choose_sample_slices(split, n):
    """Indices ``(ia, ib)`` of ``n`` fixed slices of A and B for the sample grids.

    Corresponding slices (``split.pairs``) when there are any, spread over the slices with the
    most foreground; otherwise the same rule per domain.
    """
    import numpy as np

    def spread(candidates, fractions):
        keep = candidates[fractions >= 0.5 * fractions.max()] if len(candidates) else candidates
        if len(keep) <= n:
            return keep
        return keep[np.linspace(0, len(keep) - 1, n).round().astype(int)]

    def foreground(dom, idx):
        return dom.masks[idx].reshape(len(idx), -1).mean(axis=1) if len(idx) else np.zeros(0)

    if len(split.pairs):
        rows = np.arange(len(split.pairs))
        chosen = spread(rows, foreground(split.a, split.pairs[:, 0]))
        return split.pairs[chosen, 0], split.pairs[chosen, 1]
    ia = spread(np.arange(len(split.a)), foreground(split.a, np.arange(len(split.a))))
    ib = spread(np.arange(len(split.b)), foreground(split.b, np.arange(len(split.b))))
    k = min(len(ia), len(ib))
    return ia[:k], ib[:k]


def _prepare_run_dir(run_dir, resume, overwrite, cfg):
    """Check the run folder against --resume / --overwrite; returns the config to use."""
    from harmonize.config import describe_differences, load_experiment

    has_results = run_dir.exists() and any((run_dir / m).exists() for m in RUN_MARKERS)
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"{run_dir}: no run to resume here (no config.yaml); "
                              "start it without --resume, or give its folder with --out")
        saved = load_experiment(run_dir / "config.yaml")
        saved = dataclasses.replace(saved, quick=cfg.quick or saved.quick)
        differences = describe_differences(saved, cfg, ignore=("train.epochs", "data.dataset"))
        if differences:
            raise ConfigError(f"{run_dir}: --resume continues the run with its own settings, but these differ: "
                              f"{'; '.join(differences)}; drop those options (only --epochs may grow), "
                              "or start a new run with --out")
        if cfg.data.dataset is None:
            cfg = dataclasses.replace(cfg, data=saved.data)
        return cfg
    if has_results:
        if not overwrite:
            raise ConfigError(f"{run_dir}: the folder already holds a training run; use --resume to continue it, "
                              "--overwrite to replace it, or --out for another folder")
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"{run_dir}: --overwrite only replaces a harmonize run folder (with config.yaml); "
                              "choose another --out")
        shutil.rmtree(run_dir)
    return cfg


def train_experiment(cfg, out=None, resume=False, overwrite=False, verbose="auto", callbacks=(), progress=True):
    """Train one experiment and write its run folder (see the module docstring).

    Parameters
    ----------
    cfg : ExperimentConfig
    out : str or Path, optional
        Run folder; default :func:`default_run_dir`.
    resume : bool
        Continue the run in ``out`` from its last completed epoch.
    overwrite : bool
        Replace an existing run in ``out``.
    verbose : 'auto', 0, 1 or 2
        Keras progress output.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the built-in ones.
    progress : bool
        Progress output while the built-in dataset is created.

    Returns
    -------
    RunResult

    Raises
    ------
    ConfigError
        Settings that do not fit the data or the run folder.
    """
    import keras
    import tensorflow as tf

    from harmonize import __version__
    from harmonize._fs import atomic_path, check_not_input
    from harmonize.callbacks import (
        LossCurves,
        LossLogger,
        RuleCheckpointer,
        SampleGrid,
        TrainingState,
        ValidationMetrics,
        read_csv_rows,
    )
    from harmonize.data import steps_per_epoch as count_steps
    from harmonize.data import training_stream
    from harmonize.models import register_custom_objects
    from harmonize.models.cyclegan import CycleGAN
    from harmonize.models.generators import dtype_policy
    from harmonize.models.saving import save_generator

    register_custom_objects()
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    cfg = _prepare_run_dir(run_dir, resume, overwrite, cfg)
    data_path, ds = open_dataset(cfg, progress=progress)
    check_not_input(run_dir, [data_path])
    norm = ds.normalization
    train = ds.split("train")
    test = ds.split("test") if "test" in ds.splits else train
    priors = fit_priors(cfg, train, norm)
    if cfg.data.paired and cfg.data.align == "source":
        from harmonize.data import align_to_source

        train = align_to_source(train)
    elif cfg.data.paired and cfg.data.align == "volume":
        from harmonize.data import align_to_counterpart

        train = align_to_counterpart(train)
    batch = cfg.train.batch_size
    paired = cfg.data.paired
    full_steps = count_steps(train, batch, paired=paired)
    steps = min(full_steps, cfg.train.steps_per_epoch or full_steps)

    strategy = make_strategy(cfg.train.strategy)
    replicas = strategy.num_replicas_in_sync
    if batch % replicas:
        raise ConfigError(f"train.batch_size: {batch} cannot be split over {replicas} replicas; "
                          f"use a multiple of {replicas}")
    chief = _is_chief(strategy)
    write_dir = run_dir if chief else Path(tempfile.mkdtemp(prefix="harmonize-worker-"))
    precision = resolve_precision(cfg.train.precision)
    size = cfg.data.image_size

    critic_path = None
    if cfg.loss.critic > 0:
        critic_path = prepare_critic(cfg, train, norm, write_dir / "critic.h5", ds, data_path, verbose=progress)
    keras.utils.set_random_seed(cfg.train.seed)
    with dtype_policy(precision), strategy.scope():
        nets = build_networks(cfg, size, priors=priors)
        critic = None
        if critic_path is not None:
            from harmonize.models.classifier import load_classifier

            with dtype_policy("float32"):
                critic, _ = load_classifier(critic_path)
        model = CycleGAN(nets["gen_a2b"], nets["gen_b2a"], nets["disc_a"], nets["disc_b"], nets["disc_scanner"],
                         loss_weights=cfg.loss, pool_size=cfg.train.pool_size, seed=cfg.train.seed, critic=critic)
        model.compile(learning_rate=learning_rate_schedule(cfg, steps), beta_1=cfg.train.beta_1,
                      beta_2=cfg.train.beta_2, loss_scaling=precision == "mixed_float16",
                      generator_ema=cfg.train.ema)
    # float32 copies for saving: a saved generator computes in float32 whatever the training precision
    with dtype_policy("float32"):
        export = {name: build_networks(cfg, size, priors=priors)[name] for name in ("gen_a2b", "gen_b2a")}

    state = TrainingState(write_dir / "state", {**model.checkpoint_objects(), **_seed_states(model)}, steps)
    start_epoch, start_step = state.restore() if resume else (0, 0)
    if resume and state.latest is None:
        print(f"{run_dir}: the run stopped before its first epoch ended; starting it again")
    if resume and start_step != start_epoch * steps:
        raise ConfigError(f"{run_dir}: the saved state is at step {start_step} of epoch {start_epoch}, which does not "
                          f"fit {steps} steps per epoch; resume with the run's own batch size and data")
    epochs = cfg.train.epochs
    if start_epoch >= epochs:
        print(f"{run_dir}: already trained {start_epoch} of {epochs} epochs; nothing to do "
              "(use --epochs to train longer)")
        return RunResult(run_dir, start_epoch, start_step, read_csv_rows(run_dir / "checkpoints.csv"), {},
                         precision, replicas)

    write_dir.mkdir(parents=True, exist_ok=True)
    run_info = {"run": {
        "dataset": str(Path(data_path).resolve()),
        "source_label": ds.source, "target_label": ds.target,
        "map_type_a": ds.map_type_a, "map_type_b": ds.map_type_b, "units_a": ds.units_a, "units_b": ds.units_b,
        "normalization": norm.to_dict(),
        "steps_per_epoch": steps, "slices_a": len(train.a), "slices_b": len(train.b), "pairs": len(train.pairs),
        "precision": precision, "strategy": cfg.train.strategy, "replicas": replicas,
        "harmonize_version": __version__, "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
        # timezone.utc rather than datetime.UTC: setup.py allows Python 3.10
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        "resumed_from_epoch": start_epoch if resume else None,
    }}
    with atomic_path(write_dir / "config.yaml") as tmp:
        tmp.write_text(cfg.to_yaml(extra=run_info), encoding="utf-8")

    base_meta = {
        "source_label": ds.source, "target_label": ds.target, "image_size": [size, size],
        "pixel_spacing_mm": ds.pixel_spacing_mm, "normalization": norm.to_dict(), "experiment": cfg.name,
        "run": str(run_dir), "training_precision": precision, "generator": cfg.model.generator,
        "dataset": str(data_path),
    }
    directions = {"AtoB": ("gen_a2b", "A", "B", ds.map_type_a, ds.map_type_b, ds.units_a, ds.units_b),
                  "BtoA": ("gen_b2a", "B", "A", ds.map_type_b, ds.map_type_a, ds.units_b, ds.units_a)}

    def save_pair(step, epoch):
        paths = []
        for direction, (net, src, dst, map_in, map_out, units_in, units_out) in directions.items():
            export[net].set_weights(model.generator_weights(net))
            meta = dict(base_meta, direction=direction, input_domain=src, output_domain=dst,
                        input_map_type=map_in, output_map_type=map_out, input_units=units_in,
                        output_units=units_out, epoch=epoch, step=step)
            paths.append(save_generator(export[net], write_dir / f"g_{direction}_{step:06d}.h5", meta))
        return tuple(paths)

    ia, ib = choose_sample_slices(test, cfg.data.sample_slices)
    info = {"label_a": ds.source, "label_b": ds.target, "units_a": ds.units_a or "", "units_b": ds.units_b or "",
            "map_a": ds.map_type_a, "map_b": ds.map_type_b, "title": f"Experiment {cfg.name}"}
    logger = LossLogger(write_dir, steps, start_epoch=start_epoch)
    cbs = []
    if cfg.train.validate and test.a.truth is not None:
        has_b = test.b.truth is not None
        cbs.append(ValidationMetrics(test.a.images, test.a.truth, test.a.masks, norm,
                                     b_images=test.b.images if has_b else None,
                                     b_truth=test.b.truth if has_b else None,
                                     b_masks=test.b.masks if has_b else None))
    cbs += [
        logger,
        LossCurves(logger, write_dir / "loss_curves.png", title=f"Experiment {cfg.name}",
                   rules={"rule_d_fake": cfg.train.rule_d_fake, "rule_g_total": cfg.train.rule_g_total}),
        SampleGrid(write_dir / "samples", test.a.images[ia], test.b.images[ib], norm, info),
        RuleCheckpointer(write_dir, save_pair, epochs, steps, every=cfg.train.checkpoint_every,
                         rule_d_fake=cfg.train.rule_d_fake, rule_g_total=cfg.train.rule_g_total,
                         rules_from=cfg.train.rule_checkpoints_from, start_epoch=start_epoch),
        state,
        *callbacks,
    ]

    stream = training_stream(train, norm, batch, cfg.train.seed, start_epoch, epochs, paired=paired,
                             augment=cfg.data.augment, registered=cfg.data.registered)
    if steps < full_steps:
        # keep the first `steps` batches of each epoch, so epoch e is the same whatever came before
        stream = stream.enumerate().filter(lambda i, _: i % full_steps < steps).map(lambda _, b: b)
    try:
        history = model.fit(stream, epochs=epochs, initial_epoch=start_epoch, steps_per_epoch=steps,
                            callbacks=cbs, verbose=verbose, shuffle=False)
    finally:
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    done_epoch = int(state.epoch.numpy())
    return RunResult(run_dir, done_epoch, int(state.step.numpy()), read_csv_rows(run_dir / "checkpoints.csv"),
                     dict(history.history), precision, replicas)


def prepare_critic(cfg, train, norm, path, ds, data_path, verbose=True):
    """Train (or reuse) the frozen scanner classifier that serves as the critic (``loss.critic``).

    It learns real A (0) vs real B (1) on the training split only, with the thesis classifier
    recipe (:func:`harmonize.models.classifier.train_scanner_classifier`) and a seed distinct from
    the training seed (and from ``assess``/``evaluate``'s classifier), and is saved in the run
    folder so a resumed run uses the same critic. Returns its path.
    """
    from harmonize.models.classifier import (BN_STATISTICS, classifier_accuracy, save_classifier,
                                             train_scanner_classifier)

    path = Path(path)
    if path.exists():
        return path
    if verbose:
        print(f"training the frozen scanner critic on {len(train.a)} + {len(train.b)} real training slices "
              f"({cfg.train.critic_epochs} epochs)")
    xa = norm.to_network(train.a.images, "A")
    xb = norm.to_network(train.b.images, "B")
    critic, history = train_scanner_classifier(xa, xb, epochs=cfg.train.critic_epochs, batch_size=20,
                                               seed=cfg.train.seed + 7919)
    accuracy = classifier_accuracy(critic, xa, xb)
    meta = {"role": "critic", "normalization": norm.to_dict(), "image_size": list(ds.image_size),
            "labels": {"A": ds.source, "B": ds.target}, "dataset": str(data_path),
            "train_accuracy": accuracy["accuracy"],
            "epochs": cfg.train.critic_epochs, "batch_norm_statistics": BN_STATISTICS}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(critic, path, meta)
    if verbose:
        print(f"critic saved to {path} (training accuracy {meta['train_accuracy']:.2f})")
    return path


def _seed_states(model):
    """The random-state variables of the dropout layers, so a resumed run draws the same masks."""
    states = {}
    for net_name, net in model.networks.items():
        for layer in net.layers:
            generator = getattr(layer, "seed_generator", None)
            if generator is not None and getattr(generator, "state", None) is not None:
                states[f"seed_{net_name}_{layer.name}"] = generator.state
    return states


if __name__ == "__main__":
    from harmonize.cli import command_main

    raise SystemExit(command_main("train"))
