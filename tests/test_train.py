"""`harmonize train` end to end on a tiny prepared dataset: artifacts, resume, refusals, then select."""
import json

import numpy as np
import pytest

from harmonize.errors import ConfigError

SIZE = 32
TINY = ["--image-size", str(SIZE), "--set", "model.base_filters=4", "--set", "model.disc_base_filters=4",
        "--set", "model.disc_layers=2", "--set", "model.depth=3", "--set", "train.checkpoint_every=1",
        "--set", "train.pool_size=3", "--set", "data.sample_slices=2", "--verbose", "0"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A prepared .h5: 3 train / 1 test subjects x 4 slices of 32x32 T1 (ms) per scanner, B 5 % longer,
    with registered copies, pairs, a paired truth and 3-D counterparts (none for each subject's first slice)."""
    from harmonize.io.dataset import DomainData, SplitData, write_dataset
    from harmonize.preprocess.intensity import Normalization
    from tests.conftest import tissue_slice

    rng = np.random.default_rng(0)
    splits = {}
    for name, subjects in (("train", 3), ("test", 1)):
        subj = [f"{name}{s}" for s in range(subjects) for _ in range(4)]
        slices = [k for _ in range(subjects) for k in range(4)]
        base = np.stack([tissue_slice(rng, SIZE, shift=(k - 2, s - 1), noise=10.0)
                         for s in range(subjects) for k in range(4)])
        a, b = base, np.stack([tissue_slice(rng, SIZE, shift=(k - 2, s - 1), noise=10.0) * 1.05
                               for s in range(subjects) for k in range(4)])
        spacing = np.tile([0.9, 0.9, 4.0], (len(subj), 1))
        counterpart = np.where(np.asarray(slices)[:, None, None] == 0, np.nan, a * 1.05)
        dom_a = DomainData(a, a > 0, subj, slices, spacing, registered=a, truth=a * 1.05, counterpart=counterpart)
        dom_b = DomainData(b, b > 0, subj, slices, spacing, registered=b, truth=b / 1.05)
        splits[name] = SplitData(dom_a, dom_b, np.stack([np.arange(len(subj))] * 2, axis=1), name=name)
    norm = Normalization.fit(splits["train"].a.images, splits["train"].b.images)
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    write_dataset(path, splits, {"source": "SCAN_A", "target": "SCAN_B", "map_type_a": "T1", "map_type_b": "T1",
                                 "units_a": "ms", "units_b": "ms", "normalization": norm,
                                 "image_size": [SIZE, SIZE], "seed": 0})
    return path


def _train(args):
    from harmonize.cli import main

    return main(["train", *args])


def test_train_then_select_writes_every_artifact(tiny_dataset, tmp_path):
    import pandas as pd

    from harmonize.models.saving import load_generator_model

    run = tmp_path / "run"
    assert _train(["--exp", "5", "--data", str(tiny_dataset), "--out", str(run), "--epochs", "2",
                   "--batch-size", "2", *TINY]) == 0
    steps = 12 // 2  # 12 corresponding training pairs, batch 2
    losses = pd.read_csv(run / "losses.csv")
    assert list(losses["step"]) == list(range(1, 2 * steps + 1))
    keys = ["d_a_real", "d_a_fake", "d_b_real", "d_b_fake", "g_a2b_total", "g_b2a_total", "g_a2b_adv",
            "g_a2b_ssim", "g_a2b_cycle", "g_b2a_adv", "g_b2a_ssim", "g_b2a_cycle"]
    assert list(losses.columns) == ["step", "epoch", *keys]  # exp 5: no identity, no scanner discriminator
    epochs = pd.read_csv(run / "losses_epoch.csv")
    assert list(epochs["epoch"]) == [1, 2] and {"val_mae_a2b", "val_mae_b2a", "seconds"} <= set(epochs.columns)
    # the epoch means are the means of the logged steps
    np.testing.assert_allclose(epochs[keys].to_numpy(), losses.groupby("epoch")[keys].mean().to_numpy(),
                               rtol=1e-4, atol=1e-6)
    # g_a2b_total = adv + 10 (cycle_a2b + cycle_b2a) + 5 (ssim_a2b + ssim_b2a): the thesis composite loss
    expected = (losses["g_a2b_adv"] + 10 * (losses["g_a2b_cycle"] + losses["g_b2a_cycle"])
                + 5 * (losses["g_a2b_ssim"] + losses["g_b2a_ssim"]))
    np.testing.assert_allclose(losses["g_a2b_total"], expected, rtol=1e-4)
    ckpts = pd.read_csv(run / "checkpoints.csv")
    assert list(ckpts["step"]) == [steps, 2 * steps] and "last epoch" in ckpts["reason"].iloc[-1]
    for name in (*ckpts["g_AtoB"], *ckpts["g_BtoA"]):
        assert (run / name).exists()
    model, meta = load_generator_model(run / ckpts["g_AtoB"].iloc[-1])
    assert meta["direction"] == "AtoB" and meta["step"] == 2 * steps and meta["epoch"] == 2
    assert meta["input_units"] == meta["output_units"] == "ms" and meta["normalization"]["kind"] == "shared"
    assert meta["source_label"] == "SCAN_A" and meta["experiment"] == "5" and meta["image_size"] == [SIZE, SIZE]
    assert model.output_shape == (None, SIZE, SIZE, 1) and model.get_layer("enc2_conv").compute_dtype == "float32"
    for png in ("loss_curves.png", "samples/epoch_001.png", "samples/epoch_002.png"):
        assert (run / png).stat().st_size > 1000
    assert (run / "state" / "checkpoint").exists()
    config = (run / "config.yaml").read_text()
    assert "paired: true" in config and "run:" in config and "steps_per_epoch: 6" in config

    from harmonize.cli import main

    assert main(["select", "--run", str(run)]) == 0
    selected = json.loads((run / "selected.json").read_text())
    assert (run / selected["g_AtoB"]).exists() and selected["step"] in list(ckpts["step"])
    # a second train into the same folder is refused, not overwritten
    with pytest.raises(ConfigError, match="already holds a training run"):
        from harmonize.config import load_experiment
        from harmonize.train import train_experiment

        train_experiment(load_experiment(5, [f"data.dataset={tiny_dataset}"]), out=run)


@pytest.mark.slow
def test_resume_continues_exactly(tiny_dataset, tmp_path):
    """1 epoch + --resume to 2 epochs == 2 epochs straight: same steps, same losses, same generators (saved
    as moving averages of their weights, so the average must resume too)."""
    import pandas as pd

    from harmonize.models.saving import load_generator_model

    common = ["--exp", "3", "--data", str(tiny_dataset), "--batch-size", "2", "--set", "train.steps_per_epoch=3",
              "--set", "train.validate=false", "--set", "train.ema=0.5", *TINY]
    assert _train([*common, "--out", str(tmp_path / "straight"), "--epochs", "2"]) == 0
    assert _train([*common, "--out", str(tmp_path / "resumed"), "--epochs", "1"]) == 0
    assert _train([*common, "--out", str(tmp_path / "resumed"), "--epochs", "2", "--resume"]) == 0
    straight = pd.read_csv(tmp_path / "straight" / "losses.csv")
    resumed = pd.read_csv(tmp_path / "resumed" / "losses.csv")
    assert list(resumed["step"]) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(resumed.to_numpy(), straight.to_numpy(), rtol=1e-6)
    x = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 1)).astype(np.float32)
    for name in ("g_AtoB_000006.h5", "g_BtoA_000006.h5"):
        a = load_generator_model(tmp_path / "straight" / name)[0]
        b = load_generator_model(tmp_path / "resumed" / name)[0]
        np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), atol=1e-6)
    # resuming with other settings is refused
    assert _train([*common, "--out", str(tmp_path / "resumed"), "--epochs", "3", "--resume",
                   "--set", "loss.cycle=5"]) == 3


@pytest.mark.slow
def test_learning_rate_decay_resumes_on_its_schedule(tiny_dataset, tmp_path):
    """train.lr_decay_from: an interrupted run resumed to the end equals the straight run, and both differ from
    the constant learning rate once the decay has started (not before)."""
    import keras
    import pandas as pd

    from harmonize.config import load_experiment
    from harmonize.train import train_experiment

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    def config(decay):
        overrides = [f"data.dataset={tiny_dataset}", f"data.image_size={SIZE}", "model.base_filters=4",
                     "model.disc_base_filters=4", "model.disc_layers=2", "model.depth=3", "train.pool_size=3",
                     "data.sample_slices=2", "train.batch_size=2", "train.steps_per_epoch=3", "train.epochs=2",
                     "train.validate=false", f"train.lr_decay_from={decay}"]
        return load_experiment(3, overrides)

    train_experiment(config(0.5), out=tmp_path / "straight", verbose=0)
    train_experiment(config(0.5), out=tmp_path / "resumed", verbose=0, callbacks=[StopAfterFirstEpoch()])
    assert len(pd.read_csv(tmp_path / "resumed" / "losses.csv")) == 3
    train_experiment(config(0.5), out=tmp_path / "resumed", verbose=0, resume=True)
    train_experiment(config("null"), out=tmp_path / "constant", verbose=0)
    straight, resumed, constant = (pd.read_csv(tmp_path / run / "losses.csv").to_numpy()
                                   for run in ("straight", "resumed", "constant"))
    np.testing.assert_allclose(resumed, straight, rtol=1e-6)
    # updates 1-4 run at the full rate (the rate at iteration 3 = decay start is still full), update 5 at 2/3 of
    # it: the losses of steps 1-5 (each logged before its own update) agree, step 6's do not
    np.testing.assert_allclose(straight[:5], constant[:5], rtol=1e-6)
    assert not np.allclose(straight[5:], constant[5:], rtol=1e-4)


def test_linear_decay_schedule():
    from harmonize.config import load_experiment
    from harmonize.models.cyclegan import LinearDecay
    from harmonize.train import learning_rate_schedule

    assert learning_rate_schedule(load_experiment(13), 10) == pytest.approx(2e-4)
    schedule = learning_rate_schedule(load_experiment(13, ["train.lr_decay_from=0.25", "train.epochs=4"]), 10)
    assert isinstance(schedule, LinearDecay) and (schedule.decay_start, schedule.total_steps) == (10, 40)
    values = [float(schedule(step)) for step in (0, 10, 25, 40, 50)]
    np.testing.assert_allclose(values, [2e-4, 2e-4, 1e-4, 0.0, 0.0], rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="decay_start"):
        LinearDecay(1e-3, 5, 4)


def test_refusals_before_training(tiny_dataset, tmp_path):
    from harmonize.config import load_experiment
    from harmonize.train import train_experiment

    cfg = load_experiment(1, [f"data.dataset={tiny_dataset}"])  # 256 px expected, the data are 32 px
    with pytest.raises(ConfigError, match="harmonize prepare .*--image-size 256"):
        train_experiment(cfg, out=tmp_path / "r1")
    cfg = load_experiment(6, [f"data.dataset={tiny_dataset}", f"data.image_size={SIZE}", "model.disc_layers=2"])
    with pytest.raises(ConfigError, match="T1 .*T2"):
        train_experiment(cfg, out=tmp_path / "r2")
    cfg = load_experiment(1, [f"data.dataset={tiny_dataset}", f"data.image_size={SIZE}", "model.disc_layers=2"])
    with pytest.raises(ConfigError, match="no run to resume"):
        train_experiment(cfg, out=tmp_path / "r3", resume=True)
    with pytest.raises(ConfigError, match="less than one batch"):
        train_experiment(cfg, out=tmp_path / "r4")  # batch 20 > 12 training slices


def test_experiment_on_lanczos_targets_refuses_b_spline_ones(tiny_dataset):
    """Exp. 16 is defined on Lanczos-resampled counterparts: a dataset prepared with the B-spline (or before the
    interpolator was recorded) is refused with the command that makes the right one; Exp. 15 takes either."""
    from harmonize.config import load_experiment
    from harmonize.train import open_dataset

    overrides = [f"data.dataset={tiny_dataset}", f"data.image_size={SIZE}"]
    with pytest.raises(ConfigError, match="resampled with bspline .*--interpolator lanczos"):
        open_dataset(load_experiment(16, overrides), progress=False)
    path, ds = open_dataset(load_experiment(15, overrides), progress=False)
    assert path == tiny_dataset and ds.has_counterparts
    with pytest.raises(ConfigError, match="data.interpolator"):
        load_experiment(16, ["data.interpolator=cubic"])


def test_align_volume_trains_on_the_pairs_with_a_counterpart(tiny_dataset, tmp_path):
    """Exp. 15 (data.align: volume): the paired steps draw only A slices that have a 3-D counterpart."""
    import pandas as pd

    run = tmp_path / "vol"
    assert _train(["--exp", "15", "--data", str(tiny_dataset), "--out", str(run), "--epochs", "1", "--batch-size", "3",
                   "--set", "train.validate=false", *TINY]) == 0
    # 12 training pairs, 3 of them (each subject's slice 0) without a counterpart: 9 pairs, 3 steps of 3
    assert list(pd.read_csv(run / "losses.csv")["step"]) == [1, 2, 3]


def test_validation_scores_the_saved_averaged_generator(tiny_dataset, tmp_path):
    """With train.ema the per-epoch val_mae_a2b is the error of the generator that is saved (the weights'
    moving average), not of the training weights."""
    import pandas as pd

    from harmonize.apply import load_generator
    from harmonize.io.dataset import PreparedDataset

    run = tmp_path / "ema"
    assert _train(["--exp", "8", "--data", str(tiny_dataset), "--out", str(run), "--epochs", "1", "--batch-size", "2",
                   "--set", "train.ema=0.5", "--set", "train.learning_rate=0.01", "--set", "train.precision=float32",
                   *TINY]) == 0
    logged = float(pd.read_csv(run / "losses_epoch.csv")["val_mae_a2b"].iloc[-1])
    gen = load_generator(run / pd.read_csv(run / "checkpoints.csv")["g_AtoB"].iloc[-1])
    test = PreparedDataset(tiny_dataset).split("test")
    mask = test.a.masks > 0
    saved = float(np.mean(np.abs(gen.harmonize(test.a.images) - test.a.truth)[mask]))
    assert logged == pytest.approx(saved, rel=1e-4)


def test_histmatch_prior_is_fitted_on_the_training_split(tiny_dataset, tmp_path):
    """Exp. 13 (model.prior: histmatch): an untrained generator is the histogram-matching baseline fitted on
    the training split, in physical units, through the shared normalisation; the saved generator carries it."""
    import pandas as pd

    from harmonize.baselines import fit_baseline_from_dataset
    from harmonize.io.dataset import PreparedDataset
    from harmonize.models.saving import load_generator_model
    from harmonize.preprocess.intensity import Normalization

    run = tmp_path / "prior"
    assert _train(["--exp", "13", "--data", str(tiny_dataset), "--out", str(run), "--epochs", "1", "--batch-size", "4",
                   "--set", "train.learning_rate=1e-12", "--set", "train.validate=false", "--set", "data.align=halfway",
                   *TINY]) == 0
    ckpt = pd.read_csv(run / "checkpoints.csv")["g_AtoB"].iloc[-1]
    model, meta = load_generator_model(run / ckpt)
    norm = Normalization.from_dict(meta["normalization"])
    test = PreparedDataset(tiny_dataset).split("test").a.images
    fake = norm.from_network(np.asarray(model(norm.to_network(test, "A")[..., None], training=False))[..., 0], "B")
    base = fit_baseline_from_dataset("histmatch", tiny_dataset)
    q = base.params["source_quantiles"]
    inside = (test >= q[0]) & (test <= q[-1])
    assert inside[test > 0].mean() > 0.9
    np.testing.assert_allclose(fake[inside], base.apply(test)[inside], rtol=1e-3)
    assert not np.allclose(fake[inside], test[inside], rtol=0.02)  # the tiny data's B is 5 % longer


@pytest.mark.slow
def test_quick_profile_on_builtin_data(tmp_path):
    """The built-in data through train -> select with the quick profile, shortened further."""
    from harmonize.cli import main

    run = tmp_path / "exp3"
    assert main(["train", "--exp", "3", "--quick", "--out", str(run), "--epochs", "2", "--verbose", "0",
                 "--set", "train.steps_per_epoch=4"]) == 0
    for name in ("config.yaml", "losses.csv", "losses_epoch.csv", "checkpoints.csv", "loss_curves.png",
                 "samples/epoch_002.png", "g_AtoB_000008.h5", "g_BtoA_000008.h5"):
        assert (run / name).exists(), name
    assert main(["select", "--run", str(run)]) == 0
    assert json.loads((run / "selected.json").read_text())["step"] in (4, 8)


@pytest.mark.parametrize("native_bf16, expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native_bf16, expected):
    """--precision auto: bf16 only where the CPU computes it natively; explicit choices pass through."""
    import tensorflow as tf

    import harmonize._runtime as runtime
    from harmonize import train

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("auto picks mixed_float16 on a GPU")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    assert train.resolve_precision("auto") == expected
    assert train.resolve_precision("float32") == "float32"
    monkeypatch.setattr(train, "BF16_AUTO_ON_CPU", False)
    assert train.resolve_precision("auto") == "float32"
