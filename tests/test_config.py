"""Experiment configuration: the thesis Table 1 files, overrides, quick profile, validation."""
import pytest

from harmonize.config import EXPERIMENTS_DIR, describe_differences, load_experiment
from harmonize.errors import ConfigError

# thesis Table 1 / SPEC section 4: batch, epochs, (identity, ssim, scanner), paired, registered, augment, map B
TABLE_1 = {
    1: (20, 50, (5, 0, 0), False, False, False, "T1"),
    2: (20, 50, (1, 0, 0), False, False, False, "T1"),
    3: (1, 20, (0, 0, 1), False, False, True, "T1"),
    4: (5, 20, (0, 1, 0), False, False, True, "T1"),
    5: (5, 20, (0, 5, 0), True, True, True, "T1"),
    6: (5, 20, (0, 5, 0), True, False, True, "T2"),
}


@pytest.mark.parametrize("n", sorted(TABLE_1))
def test_experiment_files_hold_thesis_table_1(n):
    batch, epochs, (identity, ssim, scanner), paired, registered, augment, map_b = TABLE_1[n]
    cfg = load_experiment(n)
    assert cfg.name == str(n) and cfg.source.endswith(f"exp{n}.yaml")
    assert (cfg.train.batch_size, cfg.train.epochs) == (batch, epochs)
    assert (cfg.loss.adversarial, cfg.loss.cycle, cfg.loss.discriminator) == (1, 10, 0.5)
    assert (cfg.loss.identity, cfg.loss.ssim, cfg.loss.scanner) == (identity, ssim, scanner)
    assert (cfg.data.paired, cfg.data.registered, cfg.data.augment) == (paired, registered, augment)
    assert (cfg.data.map_type, cfg.data.map_type_b) == ("T1", map_b)
    assert (cfg.train.learning_rate, cfg.train.beta_1, cfg.train.pool_size) == (2e-4, 0.5, 50)
    assert (cfg.train.rule_d_fake, cfg.train.rule_g_total) == (0.3, 1.0)
    assert cfg.model.generator == "unet" and cfg.data.image_size == 256
    quick = load_experiment(n, quick=True)
    assert quick.quick and quick.data.image_size < cfg.data.image_size
    assert quick.model.base_filters < cfg.model.base_filters and quick.train.epochs < cfg.train.epochs
    assert quick.loss == cfg.loss and quick.train.batch_size == cfg.train.batch_size


def test_overrides_as_strings_and_dicts_win_over_quick():
    cfg = load_experiment(3, ["train.epochs=7", "loss.identity=2.5", "data.dataset=/x/y.h5", "model.depth=null"],
                          quick=True)
    assert (cfg.train.epochs, cfg.loss.identity, cfg.data.dataset, cfg.model.depth) == (7, 2.5, "/x/y.h5", None)
    assert cfg.data.image_size == 64  # from the quick section
    nested = load_experiment(1, {"train": {"batch_size": 4}, "data.augment": True})
    assert nested.train.batch_size == 4 and nested.data.augment is True


@pytest.mark.parametrize("override, match", [
    ("train.epochs=0", r"train.epochs: must be >= 1, got 0"),
    ("train.batch_size=2.5", r"train.batch_size: must be an integer.*2.5"),
    ("loss.cycle=-3", r"loss.cycle.*-3"),
    ("train.precision=fp8", r"train.precision.*'fp8'"),
    ("data.map_type=T3", r"data.map_type.*'T3'"),
    ("data.augment=maybe", r"data.augment: must be true or false, got 'maybe'"),
    ("train.epoch=3", r"train.epoch: unknown key"),
    ("optim.lr=1", r"section"),
    ("epochs=3", r"section.key"),
    ("train.epochs", r"section.key=value"),
    ("data.image_size=40", r"divisible by 2\*\*model.disc_layers"),
    ("model.depth=9", r"model.depth: 9 needs data.image_size divisible by 512"),
    ("model.prior=nyul", r"model.prior.*'nyul'"),
    ("model.prior=histmatch", r"model.prior: 'histmatch' needs a residual generator"),
])
def test_bad_values_are_repeated_in_the_error(override, match):
    with pytest.raises(ConfigError, match=match):
        load_experiment(1, [override])


def test_unknown_experiment_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"available experiments: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10\b"):
        load_experiment(99)
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown top-level key.*trian"):
        load_experiment(bad)
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_experiment(bad)


def test_yaml_round_trip_keeps_settings_and_quick_flag(tmp_path):
    cfg = load_experiment(5, ["train.seed=3"], quick=True)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml(extra={"run": {"dataset": "/d.h5"}}))
    again = load_experiment(path)
    assert again.quick and describe_differences(cfg, again) == []
    # loading a resolved quick config with quick=True again does not re-apply anything
    assert describe_differences(cfg, load_experiment(path, quick=True)) == []
    changed = load_experiment(path, ["train.epochs=9"])
    assert describe_differences(cfg, changed) == [f"train.epochs: {cfg.train.epochs} -> 9"]


def test_experiments_dir_is_in_the_repository():
    assert (EXPERIMENTS_DIR / "exp1.yaml").exists()


def test_override_numbers_without_a_dot():
    from harmonize.config import load_experiment

    cfg = load_experiment(3, ["train.learning_rate=5e-4"])
    assert cfg.train.learning_rate == 5e-4
