"""Smoke tests of the speed benchmark's parts (benchmarks/): FLOP counting, the thesis-style loop.

The benchmark itself is run by hand on a quiet machine (benchmarks/README.md); these tests only
check that its pieces count and run correctly, on tiny inputs.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _machine, flops


def _conv_model():
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)            # 8x8x4
    x = keras.layers.Conv2D(6, 4, strides=2, padding="same", name="down")(x)   # 4x4x6
    x = keras.layers.Conv2DTranspose(2, 4, strides=2, padding="same", name="up")(x)  # 8x8x2
    return keras.Model(inp, x)


def test_forward_flops_match_a_hand_count():
    total, rows = flops.forward_flops(_conv_model(), per_layer=True)
    by_name = {name: f for name, _, f in rows}
    assert by_name["conv"] == 2 * (8 * 8 * 4) * (3 * 3 * 3)       # out pixels x out ch x k x k x in ch
    assert by_name["down"] == 2 * (4 * 4 * 6) * (4 * 4 * 4)
    assert by_name["up"] == 2 * (4 * 4 * 6) * (4 * 4 * 2)         # in pixels x in ch x k x k x out ch
    assert total == sum(by_name.values())


def test_nested_models_are_counted():
    import keras

    inner = _conv_model()
    inp = keras.Input((8, 8, 3))
    outer = keras.Model(inp, inner(inp))
    assert flops.forward_flops(outer) == flops.forward_flops(inner)


def test_graph_count_matches_layer_count_and_pass_convention():
    import tensorflow as tf

    model = _conv_model()
    forward = flops.forward_flops(model)
    x = tf.zeros((2, 8, 8, 3))

    @tf.function
    def infer(v):
        return model(v)

    @tf.function
    def train(v):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(v))
        return loss, tape.gradient(loss, model.trainable_variables)

    assert flops.graph_flops(infer.get_concrete_function(x))[0] == 2 * forward
    # trained: forward + weight gradients of every layer + input gradients of all but the first
    # (TensorFlow prunes the first layer's input gradient: nothing needs it)
    first = flops.forward_flops(model, per_layer=True)[1][0][2]
    assert flops.graph_flops(train.get_concrete_function(x))[0] == 2 * (3 * forward - first)


def test_step_pass_lists():
    assert flops.THESIS_LOOP.gen == 26 and flops.THESIS_LOOP.disc == 16
    assert flops.MINIMAL_STEP.gen == 18 and flops.MINIMAL_STEP.disc == 16
    assert flops.step_flops(flops.MINIMAL_STEP, 10, 1, batch=5) == 5 * (18 * 10 + 16)


def test_machine_report_without_tensorflow():
    report = _machine.cpu_report()
    assert report["cores_usable"] >= 1
    assert set(report["flags"]) >= {"AVX2", "AVX-512 BF16", "AMX"}
    assert _machine.peak_rss_bytes() > 0
    assert _machine.slug("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz") == "intel-xeon-platinum-8481c-2-70ghz"
    assert _machine.cpu_kind({"avx2", "fma"}) == "avx2"
    assert _machine.cpu_kind({"avx2", "avx512f", "amx_bf16"}) == "amx"


def test_matmul_peak_small():
    m = _machine.matmul_peak("float32", n=64, repeats=2)
    assert m["best_gflops"] > 0 and m["best_gflops"] >= m["median_gflops"]
    assert _machine.onednn_enabled() in (True, False, None)


def test_image_pool_follows_the_tutorial():
    from benchmarks.thesis_reference import ImagePool

    pool = ImagePool(max_size=3, seed=0)
    first = pool.update(np.arange(3, dtype="float32")[:, None])
    assert first.ravel().tolist() == [0.0, 1.0, 2.0] and len(pool.images) == 3
    out = pool.update(np.full((20, 1), 9.0, "float32")).ravel()
    assert len(out) == 20 and len(pool.images) == 3
    assert set(out.tolist()) <= {0.0, 1.0, 2.0, 9.0} and (out != 9.0).any() and (out == 9.0).any()


def test_thesis_loop_runs_one_step_at_32px():
    from benchmarks import thesis_reference as ref

    loop = ref.ThesisLoop(image_size=32, batch_size=2, base_filters=4)
    losses = loop.step()
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert "package builders" in loop.source
    assert loop.n_patch == 2  # 32 px through four stride-2 convolutions
    # every composite trains only its own generator (trainable flags applied before the first call)
    assert loop.check_frozen()
    assert {k for k, v in loop.call_seconds.items() if v} == set(ref.ThesisLoop.CALLS)


def test_thesis_copies_have_the_package_architecture():
    from benchmarks import thesis_reference as ref

    g_ref, d_ref = ref.build_thesis_generator(32, base_filters=4), ref.build_thesis_discriminator(32, base_filters=4)
    g, _, d, _, source = ref.build_networks(32, base_filters=4)
    assert ref.conv_signature(g) == ref.conv_signature(g_ref) and ref.conv_signature(d) == ref.conv_signature(d_ref)
    assert flops.forward_flops(g) == flops.forward_flops(g_ref)
    assert flops.forward_flops(d) == flops.forward_flops(d_ref)
    *_, own = ref.build_networks(32, prefer_project=False, base_filters=4)
    assert "package builders" in source and "thesis copies" in own
    x = np.zeros((1, 32, 32, 1), "float32")
    assert g_ref(x).shape == (1, 32, 32, 1) and d_ref(x).shape == (1, 2, 2, 1)


@pytest.mark.slow
def test_independent_step_does_the_loop_s_work():
    import tensorflow as tf

    from benchmarks import thesis_reference as ref

    loop = ref.ThesisLoop(image_size=32, batch_size=2, base_filters=4)
    step = ref.make_independent_step(loop)
    a, b = tf.constant(loop.train_a[:2]), tf.constant(loop.train_b[:2])
    assert np.isfinite(float(step(a, b)))
    traced, _ = flops.graph_flops(step.get_concrete_function(a, b))
    listed = flops.step_flops(flops.THESIS_LOOP, flops.forward_flops(loop.g_AtoB), flops.forward_flops(loop.d_A), 2)
    # the pass list counts the (unneeded) input gradient of each trained network's first layer
    assert 0.97 * listed <= traced <= listed


def test_speed_arguments():
    from benchmarks import speed

    quick = speed.parse_args(["--quick"])
    assert quick.batches == [5] and quick.steps == 2 and quick.sizes == [256]
    full = speed.parse_args([])
    assert full.batches == [1, 5] and full.steps == 4 and full.warmup == 1


@pytest.mark.slow
def test_speed_benchmark_smoke_run(tmp_path):
    """The whole driver at 32 px with one step of everything (a few minutes: every part is a subprocess)."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--sizes", "32", "--batches", "2",
           "--steps", "1", "--warmup", "1", "--crosscheck-steps", "1", "--matmul-n", "256",
           "--matmul-repeats", "1", "--slices", "3", "--infer-repeats", "1", "--cli-repeats", "1",
           "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=str(REPO), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    ratio_lines = [ln for ln in lines if ln.startswith("ratio ")]
    assert any(ln.startswith("ratio training auto vs thesis-style (32 px, batch 2): ") for ln in ratio_lines)
    assert lines[-1] == ratio_lines[-1]  # the ratios come last
    assert list(tmp_path.glob("speed-*.md")) and list(tmp_path.glob("speed-*.json"))


def test_quality_seed_summary_is_the_mean_and_range_of_the_seed_rows():
    from benchmarks import quality

    rows = [{"method": "exp 15, seed 0", "MAE (ms)": 32.0, "bias WM (%)": 0.36, "train (s)": 100.0},
            {"method": "exp 15, seed 1", "MAE (ms)": 32.5, "bias WM (%)": -0.03, "train (s)": 120.0},
            {"method": "exp 15, seed 2", "MAE (ms)": 32.3, "bias WM (%)": 0.16, "train (s)": 110.0}]
    mean, spread = quality.seed_summary(rows, "exp 15, 3 seeds")
    assert mean["method"] == "exp 15, 3 seeds: mean"
    assert spread["method"] == "exp 15, 3 seeds: spread (max - min)"
    assert mean["MAE (ms)"] == pytest.approx(32.2667, abs=1e-4)
    assert mean["bias WM (%)"] == pytest.approx(0.16333, abs=1e-4)
    assert spread["bias WM (%)"] == pytest.approx(0.39)
    assert spread["train (s)"] == pytest.approx(20.0)


def test_quality_refuses_a_run_folder_trained_with_another_seed(tmp_path, monkeypatch, capsys):
    """Evaluating existing runs with --seeds checks each folder's recorded seed before any work."""
    from benchmarks import quality

    run = tmp_path / "runs" / "default" / "exp15-seed1"
    run.mkdir(parents=True)
    (run / "checkpoints.csv").write_text("step\n10\n")
    (run / "config.yaml").write_text("train:\n  seed: 0\n")
    assert quality.run_seed(run) == 0
    monkeypatch.setattr(quality, "dataset_for", lambda *a, **k: tmp_path / "data.h5")
    monkeypatch.setattr(quality, "evaluate", lambda *a, **k: pytest.fail("evaluated a run of the wrong seed"))
    with pytest.raises(SystemExit) as exc:
        quality.main(["--exp", "15", "--seeds", "1", "--runs", str(tmp_path / "runs"),
                      "--results-dir", str(tmp_path / "results")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "exp15-seed1 was trained with seed 0, not 1" in err


def test_quality_seeds_and_a_seed_override_are_exclusive(tmp_path, monkeypatch, capsys):
    from benchmarks import quality

    monkeypatch.setattr(quality, "dataset_for", lambda *a, **k: pytest.fail("prepared data before the check"))
    with pytest.raises(SystemExit):
        quality.main(["--exp", "15", "--seeds", "0", "1", "--set", "train.seed=3", "--runs", str(tmp_path)])
    assert "--seeds or with --set train.seed" in capsys.readouterr().err
