"""Experiment configuration: frozen dataclasses loaded from ``experiments/exp<N>.yaml``.

An experiment file has the sections ``data``, ``model``, ``loss`` and ``train`` (the fields of
:class:`DataConfig`, :class:`ModelConfig`, :class:`LossConfig` and :class:`TrainConfig`), a
``name`` and a ``description``, and a ``quick`` section: overrides in the same layout that make
a short run (smaller images and networks, fewer epochs) which still writes every artifact.

Overrides come as a dict (``{"train.epochs": 5}`` or nested) or as ``"section.key=value"``
strings; values are parsed as YAML (``null``, ``true``, ``2e-4``). Order: the file, then its
``quick`` section (when asked), then the overrides. Every value is checked when the dataclasses
are built; a bad value raises :class:`~harmonize.errors.ConfigError` that repeats it.

Examples
--------
>>> cfg = load_experiment(3, ["train.epochs=2", "data.image_size=64"], quick=True)   # doctest: +SKIP
>>> cfg.loss.scanner, cfg.train.batch_size                                           # doctest: +SKIP
(1.0, 1)
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from harmonize.errors import ConfigError
from harmonize.losses import LossWeights
from harmonize.preprocess.rigid import INTERPOLATORS

#: folder of the experiment files shipped with the repository
EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
MAP_TYPES = ("T1", "T2", "PD")
GENERATORS = ("unet", "resnet")
PRIORS = ("none", "histmatch")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multiworker")

#: the loss weights of an experiment (thesis Table 1); see :class:`harmonize.losses.LossWeights`
LossConfig = LossWeights


def _check_int(section, name, value, minimum=None, optional=False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not math.isfinite(value) or value != int(value))):
        raise ConfigError(f"{section}.{name}: must be an integer{' or null' if optional else ''}, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{section}.{name}: must be >= {minimum}, got {value!r}")
    return value


def _check_float(section, name, value, low=None, high=None, optional=False, low_open=False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{section}.{name}: must be a number{' or null' if optional else ''}, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"{section}.{name}: must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{section}.{name}: must be <= {high}, got {value!r}")
    return value


def _check_bool(section, name, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{section}.{name}: must be true or false, got {value!r}")
    return value


def _check_choice(section, name, value, choices, optional=False):
    if value is None and optional:
        return None
    if value not in choices:
        raise ConfigError(f"{section}.{name}: must be one of {', '.join(choices)}{' or null' if optional else ''}, "
                          f"got {value!r}")
    return value


def _set(obj, **values):
    for key, value in values.items():
        object.__setattr__(obj, key, value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data an experiment trains on and how batches are drawn.

    Attributes
    ----------
    dataset : str or None
        Prepared ``.h5`` dataset (``harmonize prepare``); None: the built-in dataset.
    map_type : str
        Map type of domain A (source scanner): 'T1', 'T2' or 'PD'.
    target_map_type : str or None
        Map type of domain B when it differs (Experiment 6: 'T2'); None: same as ``map_type``.
    image_size : int
        Rows = columns of the network input (pixels).
    paired : bool
        Batches of corresponding slices (Experiment 5) instead of unpaired batches.
    registered : bool
        Train on the registered copies (half-way translation, thesis 2.2).
    augment : bool
        Random flip / scale / shift / rotation (:mod:`harmonize.data`).
    align : str
        How paired registered slices are aligned: 'halfway' (thesis 2.2: both moved half way),
        'source' (A untouched, B moved onto A: the generator trains on the raw A maps it will be
        applied to; :func:`harmonize.data.align_to_source`) or 'volume' (A untouched, B's volume
        registered onto A's in 3-D, undoing head rotation and slice offset; needs a dataset prepared
        with ``--register-volumes``; :func:`harmonize.data.align_to_counterpart`).
    interpolator : str or None
        For 'volume': how the counterparts must have been resampled ('bspline' or 'lanczos',
        ``harmonize prepare --interpolator``); the built-in dataset is prepared so, a given dataset
        prepared otherwise is refused. None: the built-in default (B-spline), any given dataset.
    sample_slices : int
        Test slices shown in the per-epoch sample grids.
    """

    dataset: str | None = None
    map_type: str = "T1"
    target_map_type: str | None = None
    image_size: int = 256
    paired: bool = False
    registered: bool = False
    augment: bool = False
    align: str = "halfway"
    interpolator: str | None = None
    sample_slices: int = 4

    def __post_init__(self):
        s = "data"
        if self.dataset is not None and not isinstance(self.dataset, (str, Path)):
            raise ConfigError(f"data.dataset: must be a path or null, got {self.dataset!r}")
        _set(self, dataset=None if self.dataset is None else str(self.dataset),
             map_type=_check_choice(s, "map_type", self.map_type, MAP_TYPES),
             target_map_type=_check_choice(s, "target_map_type", self.target_map_type, MAP_TYPES, optional=True),
             image_size=_check_int(s, "image_size", self.image_size, minimum=16),
             paired=_check_bool(s, "paired", self.paired),
             registered=_check_bool(s, "registered", self.registered),
             augment=_check_bool(s, "augment", self.augment),
             align=_check_choice(s, "align", self.align, ("halfway", "source", "volume")),
             interpolator=_check_choice(s, "interpolator", self.interpolator, tuple(INTERPOLATORS), optional=True),
             sample_slices=_check_int(s, "sample_slices", self.sample_slices, minimum=1))

    @property
    def map_type_b(self):
        """Map type of domain B."""
        return self.target_map_type or self.map_type


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Network architectures.

    Attributes
    ----------
    generator : str
        'unet' (thesis) or 'resnet' (original CycleGAN).
    base_filters : int
        Filters of the generator's first layer (64 in the thesis).
    depth : int or None
        U-Net stride-2 stages; None: log2(image_size) capped at 8.
    dropout_blocks, dropout_rate
        U-Net decoder blocks with dropout and its rate (pix2pix: 3, 0.5).
    res_blocks : int or None
        ResNet generator residual blocks; None: 9 at >= 256 px, else 6.
    disc_base_filters : int
        Filters of the discriminators' first layer (64).
    disc_layers : int
        Stride-2 layers of the PatchGAN (3: 70x70 receptive field; 4: the thesis code, 142x142);
        used for the scanner discriminator as well.
    residual : bool
        U-Net generators that output ``input + correction`` and start at the identity
        (:func:`harmonize.models.generators.build_unet_generator`); not in the thesis.
    prior : str
        'none', or 'histmatch': residual generators start from the histogram-matching baseline
        fitted on the training slices (:mod:`harmonize.baselines`), ``G(x) = h(x) + c(h(x))``,
        and learn only what a global value mapping cannot; not in the thesis.
    """

    generator: str = "unet"
    base_filters: int = 64
    depth: int | None = None
    dropout_blocks: int = 3
    dropout_rate: float = 0.5
    res_blocks: int | None = None
    disc_base_filters: int = 64
    disc_layers: int = 3
    residual: bool = False
    prior: str = "none"

    def __post_init__(self):
        s = "model"
        _set(self, generator=_check_choice(s, "generator", self.generator, GENERATORS),
             base_filters=_check_int(s, "base_filters", self.base_filters, minimum=1),
             depth=_check_int(s, "depth", self.depth, minimum=1, optional=True),
             dropout_blocks=_check_int(s, "dropout_blocks", self.dropout_blocks, minimum=0),
             dropout_rate=_check_float(s, "dropout_rate", self.dropout_rate, 0.0, 0.95),
             res_blocks=_check_int(s, "res_blocks", self.res_blocks, minimum=0, optional=True),
             disc_base_filters=_check_int(s, "disc_base_filters", self.disc_base_filters, minimum=1),
             disc_layers=_check_int(s, "disc_layers", self.disc_layers, minimum=1),
             residual=_check_bool(s, "residual", self.residual),
             prior=_check_choice(s, "prior", self.prior, PRIORS))
        if self.prior != "none" and not self.residual:
            raise ConfigError(f"model.prior: {self.prior!r} needs a residual generator; set model.residual: true "
                              "or prior: none")
        if self.residual and self.generator != "unet":
            raise ConfigError(f"model.residual: only the U-Net generator has a residual form, got generator "
                              f"{self.generator!r}; use generator: unet or residual: false")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and runtime settings.

    Attributes
    ----------
    batch_size : int
        Global batch (split over the replicas of a distribution strategy).
    epochs : int
        Epochs; one epoch is ``min(N_A, N_B) // batch_size`` steps (pairs when paired).
    steps_per_epoch : int or None
        Cap on the steps of an epoch (the first ones of each epoch's order); None: all.
    learning_rate, beta_1, beta_2 : float
        Adam settings of every network (thesis: 2e-4, 0.5).
    lr_decay_from : float or None
        Fraction of training (0-1) after which the learning rate falls linearly to zero at the
        last step (Zhu et al. 2017 decay over the second half: 0.5); None keeps it constant, as
        the thesis did.
    ema : float or None
        Save each generator as an exponential moving average of its weights over the training steps
        with this momentum (Polyak averaging; 0.99 averages over about the last 100 steps). It smooths
        the step-to-step wander of a GAN's generator; the per-epoch samples and validation errors show
        the averaged weights, the logged losses those being trained. None: save the weights as they are.
    pool_size : int
        Fakes kept per direction for the discriminators (50; 0 = no pool).
    checkpoint_every : int
        Save the generators every this many epochs (and after the last); 0: only the last and
        when a rule fires.
    rule_d_fake : float or None
        Save when an epoch-mean discriminator loss on fakes (D_A or D_B) exceeds this (0.3).
    rule_g_total : float or None
        Save when both epoch-mean generator totals are below this (1.0).
    rule_checkpoints_from : float
        Fraction of training (0-1) before which the rules do not save (0: from the start, as the
        thesis; 0.5 saves disk when only the second half is ever selected).
    seed : int
        Seed of the batch order, augmentation, weights, image pool and dropout.
    precision : str
        'auto', 'float32', 'mixed_float16' or 'mixed_bfloat16'.
    strategy : str
        'default', 'mirrored' or 'multiworker' (tf.distribute).
    validate : bool
        Log validation errors against the paired truth on the test split each epoch (when the
        dataset has truth): ``val_mae_a2b_ms`` etc., usable by ``harmonize select --by metric``.
    critic_epochs : int
        Epochs of the frozen scanner classifier used as a critic when ``loss.critic > 0`` (trained
        on the real training slices of both scanners before the CycleGAN, saved as critic.h5).
    """

    batch_size: int = 1
    epochs: int = 20
    steps_per_epoch: int | None = None
    learning_rate: float = 2e-4
    lr_decay_from: float | None = None
    ema: float | None = None
    beta_1: float = 0.5
    beta_2: float = 0.999
    pool_size: int = 50
    checkpoint_every: int = 5
    rule_d_fake: float | None = 0.3
    rule_g_total: float | None = 1.0
    rule_checkpoints_from: float = 0.0
    seed: int = 0
    precision: str = "auto"
    strategy: str = "default"
    validate: bool = True
    critic_epochs: int = 10

    def __post_init__(self):
        s = "train"
        _set(self, batch_size=_check_int(s, "batch_size", self.batch_size, minimum=1),
             epochs=_check_int(s, "epochs", self.epochs, minimum=1),
             steps_per_epoch=_check_int(s, "steps_per_epoch", self.steps_per_epoch, minimum=1, optional=True),
             learning_rate=_check_float(s, "learning_rate", self.learning_rate, 0.0, low_open=True),
             lr_decay_from=_check_float(s, "lr_decay_from", self.lr_decay_from, 0.0, 1.0, optional=True),
             ema=_check_float(s, "ema", self.ema, 0.0, 0.9999, optional=True, low_open=True),
             beta_1=_check_float(s, "beta_1", self.beta_1, 0.0, 1.0),
             beta_2=_check_float(s, "beta_2", self.beta_2, 0.0, 1.0),
             pool_size=_check_int(s, "pool_size", self.pool_size, minimum=0),
             checkpoint_every=_check_int(s, "checkpoint_every", self.checkpoint_every, minimum=0),
             rule_d_fake=_check_float(s, "rule_d_fake", self.rule_d_fake, 0.0, optional=True),
             rule_g_total=_check_float(s, "rule_g_total", self.rule_g_total, 0.0, optional=True),
             rule_checkpoints_from=_check_float(s, "rule_checkpoints_from", self.rule_checkpoints_from, 0.0, 1.0),
             seed=_check_int(s, "seed", self.seed, minimum=0),
             precision=_check_choice(s, "precision", self.precision, PRECISIONS),
             strategy=_check_choice(s, "strategy", self.strategy, STRATEGIES),
             validate=_check_bool(s, "validate", self.validate),
             critic_epochs=_check_int(s, "critic_epochs", self.critic_epochs, minimum=1))


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "train": TrainConfig}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: its sections plus where it came from.

    Attributes
    ----------
    name : str
        Experiment id ('1' ... '6', or a user's name).
    description : str
        One line on what the experiment tests.
    data, model, loss, train
        The sections.
    quick : bool
        True when the file's ``quick`` overrides were applied.
    quick_overrides : dict
        The file's ``quick`` section (nested dict), kept so a saved config can be re-run quickly.
    source : str
        The file the experiment was read from ('' when built in code).
    """

    name: str
    description: str = ""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossWeights = dataclasses.field(default_factory=LossWeights)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    quick: bool = False
    quick_overrides: dict = dataclasses.field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        _set(self, name=str(self.name), description=str(self.description or ""))
        size = self.data.image_size
        if self.model.generator == "unet" and self.model.depth is not None and size % 2**self.model.depth:
            raise ConfigError(f"model.depth: {self.model.depth} needs data.image_size divisible by "
                              f"{2**self.model.depth}, got {size}; use a smaller depth or null")
        for term in ("paired", "quantile"):
            if getattr(self.loss, term) > 0 and not self.data.paired:
                raise ConfigError(f"loss.{term}: {getattr(self.loss, term)} needs batches of corresponding slices; "
                                  f"set data.paired: true (and data.registered: true) or loss.{term}: 0")
        if self.loss.quantile > 0 and self.data.image_size % int(self.loss.quantile_patch):
            raise ConfigError(f"loss.quantile_patch: {int(self.loss.quantile_patch)} px does not divide "
                              f"data.image_size {self.data.image_size}; choose a divisor such as 8 or 16")
        if self.data.image_size % 2**self.model.disc_layers:
            raise ConfigError(f"data.image_size: {self.data.image_size} is not divisible by 2**model.disc_layers "
                              f"= {2**self.model.disc_layers}; use a power of two such as 64 or 256")

    def to_dict(self):
        """Plain nested dict (the layout of an experiment file)."""
        out = {"name": self.name, "description": self.description}
        for section in SECTIONS:
            out[section] = dataclasses.asdict(getattr(self, section))
        out["quick_applied"] = self.quick
        if self.quick_overrides:
            out["quick"] = self.quick_overrides
        return out

    def to_yaml(self, extra=None):
        """YAML text of :meth:`to_dict`, plus an ``extra`` mapping (e.g. ``run:`` information)."""
        import yaml

        data = self.to_dict()
        if extra:
            data.update(extra)
        header = f"# harmonize experiment {self.name}" + (f" (from {self.source})" if self.source else "") + "\n"
        return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    def replace(self, overrides):
        """A new config with ``overrides`` (dict or list of 'section.key=value') applied."""
        return _build(self.to_dict() | {"source": self.source}, overrides, quick=False)


def experiment_path(n_or_path):
    """Path of an experiment: a number (``experiments/exp<N>.yaml``) or a YAML file path."""
    text = str(n_or_path)
    if text.isdigit():
        path = EXPERIMENTS_DIR / f"exp{int(text)}.yaml"
        if not path.exists():
            available = sorted((p.stem[3:] for p in EXPERIMENTS_DIR.glob("exp*.yaml")),
                               key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
            raise ConfigError(f"experiment {text}: no file {path}; available experiments: "
                              f"{', '.join(available) or 'none'} (or give a path to a YAML file)")
        return path
    path = Path(text)
    if not path.exists():
        raise ConfigError(f"{path}: experiment file not found; give an experiment number or a YAML file path")
    return path


def load_experiment(n_or_path, overrides=None, quick=False):
    """Load an experiment and apply its quick profile and overrides.

    Parameters
    ----------
    n_or_path : int, str or Path
        Experiment number (``experiments/exp<N>.yaml``), or a YAML file (an experiment file or
        the ``config.yaml`` of a run folder).
    overrides : dict, list of str, or None
        ``{"train.epochs": 5}`` / ``{"train": {"epochs": 5}}`` / ``["train.epochs=5"]``.
    quick : bool
        Apply the file's ``quick`` section (before the overrides).

    Returns
    -------
    ExperimentConfig

    Raises
    ------
    ConfigError
        Missing or unreadable file, unknown section or key, invalid value.
    """
    import yaml

    path = experiment_path(n_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the experiment file ({err}); fix its YAML syntax") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment file must be a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", path.stem.removeprefix("exp"))
    raw["source"] = str(path)
    return _build(raw, overrides, quick, where=str(path))


_TOP_KEYS = {"name", "description", "quick", "quick_applied", "source", "run", *SECTIONS}


def _build(raw, overrides, quick, where="experiment"):
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(_TOP_KEYS))}")
    sections = {}
    for name in SECTIONS:
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: section '{name}' must be a mapping, got {value!r}")
        sections[name] = dict(value)
    quick_section = raw.get("quick") or {}
    if not isinstance(quick_section, dict):
        raise ConfigError(f"{where}: section 'quick' must be a mapping of overrides, got {quick_section!r}")
    already_quick = bool(raw.get("quick_applied", False))
    if quick and not already_quick:
        _apply(sections, _normalise_overrides(quick_section, f"{where} (quick)"), f"{where} (quick)")
    _apply(sections, _normalise_overrides(overrides, "override"), "override")
    built = {}
    for name, cls in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = set(sections[name]) - fields
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{name}.{k}' for k in sorted(extra))}; "
                              f"'{name}' has: {', '.join(sorted(fields))}")
        try:
            built[name] = cls(**sections[name])
        except TypeError as err:
            raise ConfigError(f"{where}: section '{name}': {err}") from err
    return ExperimentConfig(name=raw.get("name", "custom"), description=raw.get("description", ""),
                            quick=bool(quick or already_quick), quick_overrides=quick_section,
                            source=str(raw.get("source", "")), **built)


def _normalise_overrides(overrides, what):
    """-> list of ((section, key), value)."""
    import yaml

    if not overrides:
        return []
    items = []
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            if isinstance(value, dict) and "." not in str(key):
                items.extend(((str(key), str(k)), v) for k, v in value.items())
            else:
                items.append((_split_key(key, what), value))
        return items
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        if not isinstance(text, str) or "=" not in text:
            raise ConfigError(f"{what} {text!r}: expected 'section.key=value', e.g. 'train.epochs=5'")
        key, _, value_text = text.partition("=")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
            if isinstance(value, str):
                # YAML 1.1 reads "5e-4" (no dot) as text; a user typing it means the number
                try:
                    value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
                except ValueError:
                    pass
        except yaml.YAMLError as err:
            raise ConfigError(f"{what} {text!r}: the value is not valid YAML ({err})") from err
        items.append((_split_key(key.strip(), what), value))
    return items


def _split_key(key, what):
    parts = str(key).split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS or not parts[1]:
        raise ConfigError(f"{what} {key!r}: keys are 'section.key' with section one of {', '.join(SECTIONS)}")
    return parts[0], parts[1]


def _apply(sections, items, what):
    for (section, key), value in items:
        if section not in SECTIONS:
            raise ConfigError(f"{what} {section}.{key}: unknown section; use one of {', '.join(SECTIONS)}")
        fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
        if key not in fields:
            raise ConfigError(f"{what} {section}.{key}: unknown key; '{section}' has: {', '.join(sorted(fields))}")
        sections[section][key] = value


def field_names(section):
    """Names of the keys of a section ('data', 'model', 'loss', 'train')."""
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def describe_differences(a, b, ignore=()):
    """List of 'section.key: a -> b' for the settings where two configs differ."""
    out = []
    for section in SECTIONS:
        da, db = dataclasses.asdict(getattr(a, section)), dataclasses.asdict(getattr(b, section))
        for key in da:
            if f"{section}.{key}" in ignore:
                continue
            if da[key] != db[key]:
                out.append(f"{section}.{key}: {da[key]!r} -> {db[key]!r}")
    return out

