#!/usr/bin/env python
"""Speed benchmark: the package's training and inference against the thesis-style reference.

    python benchmarks/speed.py                 # the full run (under 15 min on a 2-core AVX2 CPU)
    python benchmarks/speed.py --quick         # batch 5 only, fewer steps
    python benchmarks/speed.py --sizes 64 --batches 1 --steps 1 --warmup 1   # a smoke run

What it measures (see benchmarks/README.md for how to read it):

1. The machine: CPU model, cores, the flags that matter, TensorFlow/Keras versions, whether
   oneDNN is on (as TensorFlow reports it) under TensorFlow's defaults and under harmonize's
   runtime settings, and the measured 4096 x 4096 matmul GFLOP/s in float32 and bfloat16: the
   practical peak every share below is read against.
2. Training, thesis architecture (U-Net generator, PatchGAN), per image size and batch size:
   (a) the thesis-style loop (benchmarks/thesis_reference.py) with TensorFlow's default settings,
       cross-checked by an independent one-tf.function implementation of the same step;
   (b) harmonize's CycleGAN training model in float32 with harmonize's runtime settings;
   (c) the same with ``--precision auto`` (mixed_bfloat16 only where the CPU has native bf16).
   Seconds/step (median of the timed steps, warm-up excluded), images/s, achieved GFLOP/s and
   its share of the measured peak, peak RSS, and the ratios of (b) and (c) to (a).
3. Inference: slices/s of the bare generator call (float32, and bfloat16 where native) and of
   ``harmonize apply`` end to end on a 27-slice NIfTI volume with I/O (in-process API and CLI).

Every configuration runs in its own subprocess, so TensorFlow's settings and the peak RSS belong
to that configuration alone. The report goes to stdout and to
benchmarks/results/speed-<date>-<cpu>.md (and .json).
"""
from __future__ import annotations

import os

# The user's environment as it was before anything (harmonize) chose TensorFlow settings: the
# thesis-style configuration runs with exactly this, as a user of the thesis code gets it.
USER_ENV = dict(os.environ)

import argparse
import datetime
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _machine, flops  # neither imports TensorFlow or harmonize

RESULT_MARK = "@@BENCHMARK-RESULT@@ "
RESULTS_DIR = REPO / "benchmarks" / "results"
GIB = 1024 ** 3


# =========================================================================== workers
# Each worker runs in a fresh interpreter: ``speed.py --worker KIND JSON``. It prints one line
# ``RESULT_MARK {json}`` at the end; everything else it prints goes to the parent's log.


def _emit(result):
    print(RESULT_MARK + json.dumps(result), flush=True)


def _import_tf(settings):
    """Import TensorFlow in this worker under ``settings``: 'harmonize' or 'tf-defaults'."""
    if settings == "harmonize":
        import harmonize  # noqa: F401  (sets harmonize's TensorFlow defaults before TF loads)
    elif "harmonize" in sys.modules:
        raise RuntimeError("harmonize was imported before TensorFlow in a 'tf-defaults' worker")
    import keras  # noqa: F401
    import tensorflow as tf

    return tf


def worker_machine(spec):
    """TensorFlow settings and the matmul peak under one settings choice."""
    _import_tf(spec["settings"])
    out = {"tf": _machine.tensorflow_report(), "matmul": {}}
    for dtype in spec["dtypes"]:
        out["matmul"][dtype] = _machine.matmul_peak(dtype, n=spec["n"], repeats=spec["repeats"])
    out["peak_rss"] = _machine.peak_rss_bytes()
    return out


def _random_images(n, size, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (n, size, size, 1)).astype("float32")


def _timed_runs(fn, warmup, steps, budget, min_steps=2):
    """Call ``fn`` ``warmup + steps`` times; return every call's seconds (warm-up first).

    Stops early, after at least ``min(steps, min_steps)`` timed calls, once the timed calls have
    taken ``budget`` seconds: this keeps a full run within its time on slow machines.
    """
    seconds = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
        timed = seconds[warmup:]
        if len(timed) >= min(steps, min_steps) and sum(timed) >= budget:
            break
    return seconds


def worker_thesis(spec):
    """(a): the thesis-style loop with TensorFlow's defaults, then the independent cross-check."""
    tf = _import_tf("tf-defaults")
    from benchmarks import thesis_reference as ref

    tf_report = _machine.tensorflow_report()
    size, batch = spec["size"], spec["batch"]
    n = max(4 * batch, 8)
    loop = ref.ThesisLoop(size, batch, train_a=_random_images(n, size, 1), train_b=_random_images(n, size, 2),
                          seed=0, prefer_project=not spec["own_networks"])
    gen_f, disc_f = flops.forward_flops(loop.g_AtoB), flops.forward_flops(loop.d_A)
    step_seconds = _timed_runs(loop.step, spec["warmup"], spec["steps"], spec["budget"])
    timed = slice(spec["warmup"], None)
    calls = {name: statistics.median(v[timed]) for name, v in loop.call_seconds.items() if v[timed]}
    rss = _machine.peak_rss_bytes()
    frozen_ok = loop.check_frozen()
    result = {
        "tf": tf_report, "networks": loop.source, "gen_forward_flops": gen_f, "disc_forward_flops": disc_f,
        "passes": flops.THESIS_LOOP.name, "step_flops": flops.step_flops(flops.THESIS_LOOP, gen_f, disc_f, batch),
        "useful_step_flops": flops.step_flops(flops.MINIMAL_STEP, gen_f, disc_f, batch),
        "seconds": step_seconds, "warmup": spec["warmup"], "calls": calls, "peak_rss": rss,
        "trainable_check": frozen_ok,
    }
    if spec["crosscheck_steps"] > 0:
        step = ref.make_independent_step(loop)
        real_a = tf.constant(loop.train_a[:batch])
        real_b = tf.constant(loop.train_b[:batch])
        warm = max(1, spec["warmup"])
        seconds = _timed_runs(lambda: float(step(real_a, real_b)), warm, spec["crosscheck_steps"], spec["budget"] / 2)
        graph_total, graph_by_op = flops.graph_flops(step.get_concrete_function(real_a, real_b))
        result["crosscheck"] = {"seconds": seconds, "warmup": warm, "graph_flops": graph_total,
                                "graph_flops_by_op": graph_by_op}
    result["onednn_at_end"] = _machine.onednn_enabled()
    return result


def _resolve_precision(name):
    """Resolve a --precision value the way harmonize's training command does.

    Returns ``(policy name, how it was resolved)``. Uses the training command's own helper when
    it exists; otherwise the documented rule (mixed_bfloat16 where the CPU has native bf16).
    """
    try:
        import harmonize.train as train_cmd
    except ImportError:
        train_cmd = None
    for attr in ("resolve_precision", "choose_precision", "select_precision", "precision_policy"):
        helper = getattr(train_cmd, attr, None) if train_cmd is not None else None
        if callable(helper):
            value = helper(name)
            policy = value if isinstance(value, str) else getattr(value, "name", str(value))
            return policy, f"harmonize.train.{attr}"
    if name != "auto":
        return name, "given"
    from harmonize import _runtime

    return ("mixed_bfloat16" if _runtime.cpu_has_native_bf16() else "float32"), "benchmark fallback rule"


def worker_ours(spec):
    """(b)/(c): harmonize's CycleGAN training model with harmonize's runtime settings."""
    tf = _import_tf("harmonize")
    import keras

    from harmonize.models.generators import dtype_policy

    policy, how = _resolve_precision(spec["precision"])
    if spec.get("skip_if_float32") and policy == "float32":
        return {"policy": policy, "resolved_by": how, "same_as_float32": True, "tf": _machine.tensorflow_report()}
    size, batch = spec["size"], spec["batch"]
    keras.utils.set_random_seed(0)
    with dtype_policy(policy):
        # as harmonize.train builds and compiles an experiment; Experiment 1 has the thesis-style
        # loop's loss (adversarial 1, identity 5, cycle 10, D 0.5) and the thesis networks
        nets, model, built_by = _build_training_model(size, policy)
        tf_report = _machine.tensorflow_report()
    tf_report["precision_policy"] = policy
    n = max(4 * batch, 8)
    data = tf.data.Dataset.from_tensor_slices((_random_images(n, size, 1), _random_images(n, size, 2)))
    data = data.repeat().batch(batch, drop_remainder=True).prefetch(2)
    stamps = []
    warmup, steps, budget = spec["warmup"], spec["steps"], spec["budget"]

    class StepTimer(keras.callbacks.Callback):
        # overriding on_train_batch_end makes Keras dispatch callbacks synchronously, so every
        # stamp follows the end of its step (as with train.py's own per-step loss logger)
        def on_train_batch_begin(self, batch_index, logs=None):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_train_batch_end(self, batch_index, logs=None):
            stamps.append(time.perf_counter())
            timed = [b - a for a, b in itertools.pairwise(stamps)][warmup:]
            if len(timed) >= min(steps, 2) and sum(timed) >= budget:
                self.model.stop_training = True

    model.fit(data, epochs=1, steps_per_epoch=spec["warmup"] + spec["steps"], verbose=0, callbacks=[StepTimer()])
    seconds = [b - a for a, b in itertools.pairwise(stamps)]
    rss = _machine.peak_rss_bytes()
    gen_f, disc_f = flops.forward_flops(nets["gen_a2b"]), flops.forward_flops(nets["disc_a"])
    result = {
        "tf": tf_report, "policy": policy, "resolved_by": how,
        "networks": built_by,
        "gen_forward_flops": gen_f, "disc_forward_flops": disc_f, "passes": flops.MINIMAL_STEP.name,
        "step_flops": flops.step_flops(flops.MINIMAL_STEP, gen_f, disc_f, batch),
        "useful_step_flops": flops.step_flops(flops.MINIMAL_STEP, gen_f, disc_f, batch),
        "seconds": seconds, "warmup": spec["warmup"], "peak_rss": rss,
        "output_dtype": str(nets["gen_a2b"].output.dtype),
    }
    if spec.get("graph_check"):
        sig = tf.TensorSpec((batch, size, size, 1), tf.float32)
        concrete = tf.function(model.train_step).get_concrete_function((sig, sig))
        result["graph_flops"], result["graph_flops_by_op"] = flops.graph_flops(concrete)
    return result


def _build_training_model(size, policy):
    """Networks and compiled CycleGAN as ``harmonize train --exp 1`` builds them (under the current policy)."""
    from harmonize.errors import HarmonizeError
    from harmonize.models.cyclegan import CycleGAN

    try:
        from harmonize import train as train_cmd
        from harmonize.config import load_experiment

        cfg = load_experiment(1, overrides={"data.image_size": size})
        nets = train_cmd.build_networks(cfg, size)
        loss, pool, train = cfg.loss, cfg.train.pool_size, cfg.train
        compile_kw = {"learning_rate": train.learning_rate, "beta_1": train.beta_1, "beta_2": train.beta_2}
        built_by = ("harmonize.train.build_networks(experiments/exp1.yaml) + CycleGAN.compile as train.py, "
                    "trained with fit")
    except (ImportError, AttributeError, TypeError, HarmonizeError) as err:
        from harmonize.losses import LossWeights
        from harmonize.models.discriminators import build_patchgan_discriminator
        from harmonize.models.generators import build_unet_generator

        nets = {
            "gen_a2b": build_unet_generator(size, channels=1, base_filters=64, dropout_blocks=3, name="gen_a2b"),
            "gen_b2a": build_unet_generator(size, channels=1, base_filters=64, dropout_blocks=3, name="gen_b2a"),
            "disc_a": build_patchgan_discriminator(size, 1, 64, 4, name="disc_a"),
            "disc_b": build_patchgan_discriminator(size, 1, 64, 4, name="disc_b"),
            "disc_scanner": None,
        }
        loss, pool, compile_kw = LossWeights(adversarial=1, cycle=10, identity=5), 50, {}
        built_by = f"harmonize.models builders directly (experiment route failed: {type(err).__name__}: {err})"
    model = CycleGAN(nets["gen_a2b"], nets["gen_b2a"], nets["disc_a"], nets["disc_b"], nets.get("disc_scanner"),
                     loss_weights=loss, pool_size=pool, seed=0)
    model.compile(**compile_kw, loss_scaling=policy == "mixed_float16")
    return nets, model, built_by


def _phantom_volume(slices, size, seed=0):
    """A synthetic T1 head phantom in ms: ellipses of GM, WM and CSF ventricles, with noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype("float32")
    vol = np.zeros((slices, size, size), "float32")
    for k in range(slices):
        s = 1.0 - abs(k - slices / 2) / (slices * 0.75)  # smaller head towards the ends
        cy, cx = size / 2, size / 2
        r = np.hypot((yy - cy) / (0.42 * size * s), (xx - cx) / (0.34 * size * s))
        img = np.zeros((size, size), "float32")
        img[r < 1.0] = 1300.0   # scalp / other tissue
        img[r < 0.92] = 1050.0  # GM
        img[r < 0.75] = 620.0   # WM
        vent = np.hypot((yy - cy) / (0.09 * size * s), (xx - cx) / (0.05 * size * s)) < 1.0
        img[vent] = 4000.0      # CSF
        img = np.where(img > 0, img + rng.normal(0.0, 15.0, img.shape), 0.0)
        vol[k] = np.maximum(img, 0.0)
    return vol


def worker_infer(spec):
    """Inference: bare generator call (float32, bf16 where native) and harmonize.apply in-process."""
    tf = _import_tf("harmonize")
    import keras
    import numpy as np

    from harmonize.io.nifti import read_map, write_map
    from harmonize.io.volume import MapVolume
    from harmonize.models.generators import build_unet_generator, dtype_policy
    from harmonize.models.saving import save_generator
    from harmonize.preprocess.intensity import Normalization

    size, slices, batch, repeats = spec["size"], spec["slices"], spec["batch"], spec["repeats"]
    work = Path(spec["workdir"])
    keras.utils.set_random_seed(0)
    model = build_unet_generator(size, channels=1, base_filters=64, dropout_blocks=3, name="gen_a2b")
    gen_f = flops.forward_flops(model)
    volume = MapVolume(_phantom_volume(slices, size), spacing=(0.94, 0.94, 4.0), map_type="T1")
    in_path, g_path = work / "t1_A.nii.gz", work / "g_AtoB.h5"
    write_map(volume, in_path)
    scale = 4300.0
    save_generator(model, g_path, {
        "direction": "AtoB", "input_domain": "A", "output_domain": "B", "source_label": "BENCH_A",
        "target_label": "BENCH_B", "input_map_type": "T1", "output_map_type": "T1", "input_units": "ms",
        "output_units": "ms", "image_size": [size, size], "pixel_spacing_mm": [0.94, 0.94],
        "normalization": Normalization("shared", scale, scale).to_dict(), "experiment": "benchmark",
    })
    x = np.clip(volume.array / (scale / 2) - 1.0, -1, 1).astype("float32")[..., None]

    def bare(net):
        @tf.function(input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32)])
        def infer(v):
            return tf.cast(net(v, training=False), tf.float32)

        def run():
            for start in range(0, slices, batch):
                infer(x[start:start + batch]).numpy()

        run()  # trace + warm-up
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - t0)
        conv = next(layer for layer in net.layers if type(layer).__name__ == "Conv2D")
        return {"seconds": seconds, "slices": slices, "batch": batch, "compute_dtype": conv.compute_dtype}

    out = {"tf": _machine.tensorflow_report(), "gen_forward_flops": gen_f, "bare": {"float32": bare(model)},
           "workdir": str(work), "generator": str(g_path), "input": str(in_path)}
    if spec["bf16"]:
        with dtype_policy("mixed_bfloat16"):
            model16 = build_unet_generator(size, channels=1, base_filters=64, dropout_blocks=3, name="gen_a2b_bf16")
        model16.set_weights(model.get_weights())
        out["bare"]["bfloat16"] = bare(model16)

    import harmonize

    t0 = time.perf_counter()
    gen = harmonize.load_generator(g_path)
    load_seconds = time.perf_counter() - t0
    out_path = work / "t1_A_harmonized.nii.gz"

    def api_once():
        vol = read_map(in_path, "T1")
        res = gen.harmonize(vol, batch_size=batch)
        write_map(res, out_path)

    api_once()  # warm-up (traces the inference function)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        api_once()
        seconds.append(time.perf_counter() - t0)
    compute = getattr(getattr(gen, "model", None), "compute_dtype", None)
    out["api"] = {"seconds": seconds, "slices": slices, "batch": batch, "load_seconds": load_seconds,
                  "compute_dtype": compute}
    out["peak_rss"] = _machine.peak_rss_bytes()
    return out


def worker_quick_train(spec):
    """``harmonize train --exp 1 --quick`` in this process; its peak RSS is the target's number."""
    _import_tf("harmonize")
    from harmonize.cli import main as cli_main

    t0 = time.perf_counter()
    code = cli_main(["train", "--exp", "1", "--quick", "--out", spec["out"]])
    return {"exit": code, "seconds": time.perf_counter() - t0, "peak_rss": _machine.peak_rss_bytes()}


WORKERS = {"machine": worker_machine, "thesis": worker_thesis, "ours": worker_ours, "infer": worker_infer,
           "quick_train": worker_quick_train}


def _worker_main(kind, spec_json):
    result = WORKERS[kind](json.loads(spec_json))
    _emit(result)
    return 0


# =========================================================================== driver


class Report:
    """Prints lines and keeps them for the results file."""

    def __init__(self):
        self.lines = []

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)


def _worker_env(settings):
    env = dict(USER_ENV)  # never the driver's own os.environ: harmonize must not leak into (a)
    env["KERAS_BACKEND"] = "tensorflow"  # the benchmark measures TensorFlow (this is not a speed setting)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_worker(kind, spec, settings, timeout, log_dir):
    """Run one worker subprocess; return its result dict (raises RuntimeError on failure)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)]
    tag = f"{kind}-" + "-".join(f"{k}{v}" for k, v in sorted(spec.items()) if k in ("size", "batch", "precision", "settings"))
    log = Path(log_dir) / f"{tag}.log"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_worker_env(settings), capture_output=True, text=True, timeout=timeout,
                              cwd=str(REPO), check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{tag}: no result within {timeout:.0f} s") from err
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            result["wall_seconds"] = time.perf_counter() - t0
            return result
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"{tag} failed (exit {proc.returncode}); log {log}:\n{tail}")


def _median_timed(seconds, warmup):
    timed = seconds[warmup:] or seconds[-1:]
    return statistics.median(timed)


def _fmt_gib(nbytes):
    return f"{nbytes / GIB:.2f} GiB"


def _onoff(value):
    return {True: "on", False: "off", None: "unknown"}[value]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="benchmarks/speed.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256", help="image sizes, comma-separated (default 256: the thesis)")
    p.add_argument("--batches", default=None, help="batch sizes, comma-separated (default 1,5; --quick: 5)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps per configuration (default 4; --quick 2); the median is reported")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up steps (default 1: the first step traces and builds everything)")
    p.add_argument("--crosscheck-steps", type=int, default=None,
                   help="timed steps of the independent cross-check of (a) (default 2; --quick 1; 0 skips it)")
    p.add_argument("--step-budget", type=float, default=None,
                   help="seconds of timed steps per configuration after which it stops early, keeping at least "
                        "2 timed steps (default 90; --quick 60); the cross-check gets half")
    p.add_argument("--quick", action="store_true", help="a shorter run: batch 5 only, fewer steps and repeats")
    p.add_argument("--skip-inference", action="store_true", help="training only")
    p.add_argument("--skip-training", action="store_true", help="machine and inference only")
    p.add_argument("--own-networks", action="store_true",
                   help="(a) uses the thesis copies in thesis_reference.py even when the package builders match")
    p.add_argument("--matmul-n", type=int, default=4096, help="matrix size of the peak measurement (default 4096)")
    p.add_argument("--matmul-repeats", type=int, default=None, help="timed matmuls per dtype (default 5; --quick 3)")
    p.add_argument("--slices", type=int, default=27, help="slices of the inference volume (default 27)")
    p.add_argument("--infer-batch", type=int, default=8, help="slices per generator call (default 8, as apply)")
    p.add_argument("--infer-repeats", type=int, default=None, help="timed volumes per inference variant (default 5; --quick 3)")
    p.add_argument("--cli-repeats", type=int, default=None, help="timed `harmonize apply` CLI runs (default 2; --quick 1)")
    p.add_argument("--quick-train", action="store_true",
                   help="also run `harmonize train --exp 1 --quick` and report its peak RSS (the <= 4 GiB target); "
                        "off by default: its time is not in the 15-minute budget, and the first use builds the "
                        "built-in dataset")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a configuration is abandoned")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the .md/.json copy goes")
    p.add_argument("--no-save", action="store_true", help="print only; write no results file")
    args = p.parse_args(argv)
    quick = args.quick
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.batches = [int(b) for b in (args.batches or ("5" if quick else "1,5")).split(",") if b.strip()]
    defaults = {"steps": (2, 4), "warmup": (1, 1), "crosscheck_steps": (1, 2), "matmul_repeats": (3, 5),
                "infer_repeats": (3, 5), "cli_repeats": (1, 2), "step_budget": (60.0, 90.0)}
    for name, (q, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, q if quick else full)
    if min(args.sizes) < 16 or args.steps < 1 or args.warmup < 0:
        p.error("need --sizes >= 16, --steps >= 1, --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    say = Report()
    started = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    log_dir = Path(tempfile.mkdtemp(prefix="harmonize-speed-"))
    cpu = _machine.cpu_report()
    native = cpu["native_bf16"]
    results = {"date": stamp, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "cpu": cpu, "training": [], "inference": None, "ratios": [], "targets": []}

    say(f"# harmonize speed benchmark, {stamp}")
    say()
    say("## Machine")
    for line in _machine.format_cpu(cpu):
        say(line)
    user_onednn = USER_ENV.get("TF_ENABLE_ONEDNN_OPTS")
    say(f"TF_ENABLE_ONEDNN_OPTS in your environment: {user_onednn if user_onednn is not None else '(unset)'}")

    peaks = {}
    machine = {}
    for settings, dtypes in (("harmonize", ["float32", "bfloat16"]), ("tf-defaults", ["float32"])):
        spec = {"settings": settings, "dtypes": dtypes, "n": args.matmul_n, "repeats": args.matmul_repeats}
        res = run_worker("machine", spec, settings, args.timeout, log_dir)
        machine[settings] = res
        say(_machine.format_tf(res["tf"], f"{'harmonize settings' if settings == 'harmonize' else 'TF defaults':<18}"))
        for dtype, m in res["matmul"].items():
            say(f"  {m['n']}x{m['n']} matmul {dtype:<8}: {m['best_gflops']:8.1f} GFLOP/s best, "
                f"{m['median_gflops']:8.1f} median of {len(m['seconds'])}")
    for dtype in ("float32", "bfloat16"):
        peaks[dtype] = machine["harmonize"]["matmul"][dtype]["best_gflops"]
    peaks["float32-tf-defaults"] = machine["tf-defaults"]["matmul"]["float32"]["best_gflops"]
    results["machine"] = machine
    results["peaks"] = peaks
    say(f"peak used for shares: float32 {peaks['float32']:.1f} GFLOP/s, bfloat16 {peaks['bfloat16']:.1f} GFLOP/s "
        "(harmonize settings, best repeat)")
    if not native:
        say("bfloat16 is not native on this CPU: --precision auto trains in float32 here")

    if not args.skip_training:
        say()
        say("## Training, thesis architecture (U-Net generator + PatchGAN, 1 channel)")
        say("FLOP convention: conv/transposed-conv multiply-adds x 2 from layer shapes; per network pass "
            "1x forward (no gradient), 2x (gradient to the input only), 3x (weights trained).")
        say(f"  thesis-style loop executes per (A, B) pair: {flops.THESIS_LOOP.gen} G-forwards + "
            f"{flops.THESIS_LOOP.disc} D-forwards ({flops.THESIS_LOOP.description})")
        say(f"  harmonize CycleGAN step executes per (A, B) pair: {flops.MINIMAL_STEP.gen} G-forwards + "
            f"{flops.MINIMAL_STEP.disc} D-forwards ({flops.MINIMAL_STEP.description}); this is also the "
            "'useful' work every configuration is credited with")
        for size in args.sizes:
            for batch in args.batches:
                try:
                    results["training"].append(_train_block(args, say, size, batch, peaks, native, log_dir))
                except RuntimeError as err:  # one failed configuration must not lose the others
                    say(f"FAILED: {size} px, batch {batch}: {err}")
                    results.setdefault("failures", []).append(f"training {size} px batch {batch}: {err}")

    if not args.skip_inference:
        try:
            results["inference"] = _inference_block(args, say, max(args.sizes), peaks, native, log_dir)
        except RuntimeError as err:
            say(f"FAILED: inference: {err}")
            results.setdefault("failures", []).append(f"inference: {err}")

    if args.quick_train:
        say()
        say("## Quick training (harmonize train --exp 1 --quick)")
        out = Path(tempfile.mkdtemp(prefix="harmonize-speed-train-"))
        try:
            res = run_worker("quick_train", {"out": str(out / "run")}, "harmonize", args.timeout, log_dir)
            results["quick_train"] = res
            say(f"exit status {res['exit']}, {res['seconds']:.0f} s, peak RSS {_fmt_gib(res['peak_rss'])}")
        except RuntimeError as err:
            say(f"FAILED: quick training: {err}")
            results.setdefault("failures", []).append(f"quick training: {err}")
        finally:
            shutil.rmtree(out, ignore_errors=True)

    _targets_and_ratios(say, results, cpu)
    total = time.perf_counter() - started
    say()
    say(f"total benchmark time: {total / 60:.1f} min; worker logs in {log_dir}")
    results["total_seconds"] = total
    base = None if args.no_save else _results_base(args.results_dir, cpu)
    if base is not None:
        say(f"report copy: {base.with_suffix('.md')} and {base.with_suffix('.json')}")
    say()
    say("## Ratios")
    for line in results["ratios"]:
        say(line)
    if base is not None:
        _save(base, results, say.lines)
    return 0


def _train_block(args, say, size, batch, peaks, native, log_dir):
    say()
    say(f"### {size} x {size} px, batch {batch}")
    common = {"size": size, "batch": batch, "steps": args.steps, "warmup": args.warmup, "budget": args.step_budget}
    block = {"size": size, "batch": batch}
    a = run_worker("thesis", {**common, "crosscheck_steps": args.crosscheck_steps,
                              "own_networks": args.own_networks}, "tf-defaults", args.timeout, log_dir)
    block["a"] = a
    say(f"networks of (a): {a['networks']}")
    say(f"forward FLOPs per image: generator {a['gen_forward_flops'] / 1e9:.2f} GFLOP, "
        f"discriminator {a['disc_forward_flops'] / 1e9:.2f} GFLOP")
    b = run_worker("ours", {**common, "precision": "float32", "graph_check": True}, "harmonize", args.timeout, log_dir)
    block["b"] = b
    c = run_worker("ours", {**common, "precision": "auto", "skip_if_float32": True}, "harmonize", args.timeout, log_dir)
    if c.get("same_as_float32"):
        block["c_note"] = (f"--precision auto resolved to float32 here ({c['resolved_by']}): "
                           "(c) is configuration (b); its measurement is reused")
        c = {**b, "policy": c["policy"], "resolved_by": c["resolved_by"], "reused_b": True}
    block["c"] = c
    configs = [("a", "(a) thesis-style, TF defaults", a), ("b", "(b) harmonize float32", b),
               ("c", "(c) harmonize --precision auto", c)]
    if native and c.get("policy") != "mixed_bfloat16":
        # the CPU has native bf16 but auto did not pick it: measure what it would give
        forced = run_worker("ours", {**common, "precision": "mixed_bfloat16"}, "harmonize", args.timeout, log_dir)
        block["c_bf16"] = forced
        configs.append(("c_bf16", "(c') harmonize mixed_bfloat16", forced))

    rows = []
    for key, label, res in configs:
        peak_key = "bfloat16" if res.get("policy") == "mixed_bfloat16" else "float32"
        sec = _median_timed(res["seconds"], res["warmup"])
        row = {"key": key, "label": label, "seconds_per_step": sec, "pairs_per_s": batch / sec,
               "images_per_s": 2 * batch / sec,
               "gflops": res["step_flops"] / sec / 1e9, "useful_gflops": res["useful_step_flops"] / sec / 1e9,
               "peak_key": peak_key, "peak_rss": res["peak_rss"],
               "settings": f"oneDNN {_onoff(res['tf']['onednn'])}, policy {res.get('policy', res['tf']['precision_policy'])}"}
        row["share"] = row["gflops"] / peaks[peak_key]
        row["useful_share"] = row["useful_gflops"] / peaks[peak_key]
        rows.append(row)
    block["rows"] = rows
    say(f"{'configuration':<32} {'settings':<36} {'s/step':>8} {'pairs/s':>7} {'img/s':>7} {'GFLOP/s':>8} "
        f"{'of peak':>7} {'useful':>7} {'peak RSS':>9}")
    for r in rows:
        say(f"{r['label']:<32} {r['settings']:<36} {r['seconds_per_step']:8.3f} {r['pairs_per_s']:7.2f} "
            f"{r['images_per_s']:7.2f} {r['gflops']:8.1f} {r['share']:7.0%} {r['useful_share']:7.0%} "
            f"{_fmt_gib(r['peak_rss']):>9}")
    say("  s/step: median of the timed steps (warm-up excluded); pairs/s = batch / s-per-step (one (A, B) pair "
        "per batch element); img/s counts A and B images (2 per pair); GFLOP/s = executed FLOPs per step / s; "
        "'of peak' against the matmul peak of the precision used; 'useful' credits every configuration "
        "with the harmonize step's FLOPs")
    for r in rows:
        if r["share"] > 1.0:
            say(f"  WARNING: {r['label']} above 100% of the measured peak: the peak measurement or the FLOP "
                "count is off")
    say("  timed steps: " + ", ".join(f"{label.split()[0]} {len(res['seconds']) - res['warmup']}"
                                      for _, label, res in configs))
    if block.get("c_note"):
        say(f"  {block['c_note']}")
    if "c_bf16" in block:
        say("  (c') is mixed_bfloat16 chosen explicitly: this CPU computes bf16 natively but --precision auto "
            "did not pick it (see BF16_AUTO_ON_CPU in harmonize/train.py)")
    say(f"  FLOPs/step: thesis-style {a['step_flops'] / 1e9:.1f} GFLOP, harmonize {b['step_flops'] / 1e9:.1f} GFLOP"
        + (f"; traced harmonize train_step graph {b['graph_flops'] / 1e9:.1f} GFLOP" if "graph_flops" in b else ""))
    calls = ", ".join(f"{k} {v:.3f}" for k, v in a["calls"].items())
    say(f"  (a) per call, median s: {calls}")
    if not a.get("trainable_check"):
        say("  WARNING: (a)'s composite changed a frozen network's weights: the trainable flags did not hold")
    if "crosscheck" in a:
        x = a["crosscheck"]
        sec = _median_timed(x["seconds"], x["warmup"])
        ratio = _median_timed(a["seconds"], a["warmup"]) / sec
        block["crosscheck_seconds"] = sec
        say(f"  cross-check of (a): the same step as one tf.function over the same networks: {sec:.3f} s/step "
            f"({batch / sec:.2f} pairs/s); Keras loop / tf.function = {ratio:.2f}x; traced graph "
            f"{x['graph_flops'] / 1e9:.1f} GFLOP/step vs {a['step_flops'] / 1e9:.1f} from the pass list")
        if not 0.5 <= ratio <= 4.0:
            say("  WARNING: the thesis-style loop and its independent implementation differ by more than a sane factor")
    tf_default_peak = peaks["float32-tf-defaults"]
    say(f"  (a) against the float32 matmul peak under TensorFlow's defaults ({tf_default_peak:.1f} GFLOP/s): "
        f"{rows[0]['gflops'] / tf_default_peak:.0%}")
    say(f"  (a) TF settings: oneDNN {_onoff(a['tf']['onednn'])} (TF_ENABLE_ONEDNN_OPTS={a['tf']['TF_ENABLE_ONEDNN_OPTS']}); "
        f"(b)/(c): oneDNN {_onoff(b['tf']['onednn'])} (TF_ENABLE_ONEDNN_OPTS={b['tf']['TF_ENABLE_ONEDNN_OPTS']}), "
        f"(c) policy {c.get('policy')} ({c.get('resolved_by')}); generator output dtype {b.get('output_dtype')}")
    return block


def _inference_block(args, say, size, peaks, native, log_dir):
    say()
    say(f"## Inference, thesis U-Net generator, {args.slices} slices of {size} x {size}, batch {args.infer_batch}")
    work = Path(tempfile.mkdtemp(prefix="harmonize-speed-infer-"))
    try:
        res = run_worker("infer", {"size": size, "slices": args.slices, "batch": args.infer_batch,
                                   "repeats": args.infer_repeats, "workdir": str(work), "bf16": native},
                         "harmonize", args.timeout, log_dir)
        gen_f = res["gen_forward_flops"]
        rows = {}
        for dtype, m in res["bare"].items():
            sec = statistics.median(m["seconds"])
            rate = m["slices"] / sec
            rows[f"bare {dtype}"] = {"slices_per_s": rate, "gflops": rate * gen_f / 1e9,
                                     "share": rate * gen_f / 1e9 / peaks[dtype], "dtype": dtype}
        api = res["api"]
        api_rate = api["slices"] / statistics.median(api["seconds"])
        api_dtype = "bfloat16" if "bfloat16" in str(api.get("compute_dtype")) else "float32"
        rows["apply API (read + harmonize + write)"] = {"slices_per_s": api_rate, "gflops": api_rate * gen_f / 1e9,
                                                        "share": api_rate * gen_f / 1e9 / peaks[api_dtype],
                                                        "dtype": api_dtype}
        cli_seconds = []
        out_path = work / "t1_A_cli.nii.gz"
        cmd = [sys.executable, "-m", "harmonize", "apply", "--generator", res["generator"], res["input"],
               str(out_path), "--overwrite", "--no-progress", "--batch-size", str(args.infer_batch)]
        for _ in range(args.cli_repeats):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=_worker_env("harmonize"), capture_output=True, text=True,
                                  timeout=args.timeout, cwd=str(REPO), check=False)
            cli_seconds.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                say(f"  `harmonize apply` CLI failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
                cli_seconds = []
                break
        if cli_seconds:
            best = min(cli_seconds)
            rows["apply CLI (process start to exit)"] = {"slices_per_s": args.slices / best,
                                                         "gflops": args.slices / best * gen_f / 1e9,
                                                         "share": args.slices / best * gen_f / 1e9 / peaks[api_dtype],
                                                         "dtype": api_dtype, "wall_seconds": best}
        say(f"forward FLOPs per slice: {gen_f / 1e9:.2f} GFLOP; {_machine.format_tf(res['tf'], 'settings')}")
        say(f"{'variant':<40} {'dtype':<9} {'slices/s':>9} {'GFLOP/s':>8} {'of peak':>8}")
        for name, r in rows.items():
            say(f"{name:<40} {r['dtype']:<9} {r['slices_per_s']:9.1f} {r['gflops']:8.1f} {r['share']:8.0%}")
        say(f"  apply API: generator load {api['load_seconds']:.2f} s (not in the rate); the model runs in "
            f"{api.get('compute_dtype')}; peak RSS of the inference worker {_fmt_gib(res['peak_rss'])}")
        if cli_seconds:
            say(f"  apply CLI: {min(cli_seconds):.1f} s wall for the volume, including Python/TensorFlow start-up "
                "and loading the generator")
        return {"rows": rows, "raw": res, "cli_seconds": cli_seconds, "api_dtype": api_dtype}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _targets_and_ratios(say, results, cpu):
    kind = cpu["cpu_kind"]
    ratios, targets = results["ratios"], results["targets"]
    for block in results["training"]:
        where = f"{block['size']} px, batch {block['batch']}"
        rows = {r["key"]: r for r in block["rows"]}
        a, b, c = rows["a"], rows["b"], rows["c"]
        ratios.append(f"ratio training float32 vs thesis-style ({where}): {a['seconds_per_step'] / b['seconds_per_step']:.2f}x")
        ratios.append(f"ratio training auto vs thesis-style ({where}): {a['seconds_per_step'] / c['seconds_per_step']:.2f}x")
        if "c_bf16" in rows:
            ratios.append(f"ratio training mixed_bfloat16 (explicit) vs thesis-style ({where}): "
                          f"{a['seconds_per_step'] / rows['c_bf16']['seconds_per_step']:.2f}x")
        if block["batch"] == 5 and block["size"] == 256:
            rc, rb = a["seconds_per_step"] / c["seconds_per_step"], a["seconds_per_step"] / b["seconds_per_step"]
            if kind == "amx":
                targets.append(("training (c) vs (a) >= 3x (AMX)", f"{rc:.2f}x", rc >= 3.0))
                targets.append(("training (b) vs (a) >= 1.3x (AMX)", f"{rb:.2f}x", rb >= 1.3))
            else:
                targets.append((f"training (c) vs (a) >= 2x ({kind}; 3x is the AMX target)", f"{rc:.2f}x", rc >= 2.0))
            targets.append((f"training (c) at >= 60% of the {c['peak_key']} matmul peak", f"{c['share']:.0%}",
                            c["share"] >= 0.6))
            if "c_bf16" in rows:
                r16 = rows["c_bf16"]
                value = (f"{a['seconds_per_step'] / r16['seconds_per_step']:.2f}x at {r16['share']:.0%} of the "
                         "bfloat16 peak")
                targets.append(("(for information) training (c') mixed_bfloat16 vs (a)", value, None))
    inf = results.get("inference")
    if inf:
        rows = inf["rows"]
        api = rows["apply API (read + harmonize + write)"]
        bare_same = rows.get(f"bare {inf['api_dtype']}")
        best_bare_key = "bare bfloat16" if "bare bfloat16" in rows else "bare float32"
        best = rows[best_bare_key]
        targets.append((f"inference {best_bare_key} at >= 60% of its matmul peak", f"{best['share']:.0%}",
                        best["share"] >= 0.6))
        if kind == "amx":
            targets.append(("inference bare bf16 ~100 slices/s (AMX)", f"{best['slices_per_s']:.1f}",
                            best["slices_per_s"] >= 100))
        elif kind == "avx2":
            targets.append(("inference bare >= 30 slices/s (AVX2)", f"{best['slices_per_s']:.1f}",
                            best["slices_per_s"] >= 30))
        if bare_same:
            r = api["slices_per_s"] / bare_same["slices_per_s"]
            targets.append(("apply end to end >= 70% of the bare rate (same dtype)", f"{r:.0%}", r >= 0.7))
            ratios.append(f"ratio inference apply API vs bare generator ({inf['api_dtype']}): {r:.2f}x")
        if "bare bfloat16" in rows:
            ratios.append(f"ratio inference bare bfloat16 vs float32: "
                          f"{rows['bare bfloat16']['slices_per_s'] / rows['bare float32']['slices_per_s']:.2f}x")
        cli = rows.get("apply CLI (process start to exit)")
        if cli and bare_same:
            ratios.append(f"ratio inference apply CLI (with start-up) vs bare generator ({inf['api_dtype']}): "
                          f"{cli['slices_per_s'] / bare_same['slices_per_s']:.2f}x")
    quick = results.get("quick_train")
    if quick and quick.get("exit") == 0:
        targets.append(("peak RSS of `harmonize train --exp 1 --quick` <= 4 GiB", _fmt_gib(quick["peak_rss"]),
                        quick["peak_rss"] <= 4 * GIB))
    peaks = results["peaks"]
    ratios.append(f"ratio matmul bfloat16 vs float32 peak: {peaks['bfloat16'] / peaks['float32']:.2f}x")
    ratios.append(f"ratio matmul float32 harmonize settings vs TF defaults: "
                  f"{peaks['float32'] / peaks['float32-tf-defaults']:.2f}x")
    say()
    say("## Targets (from the issue; measured here)")
    if not targets:
        say("(none apply to this run: the targets are for 256 px, batch 5, and inference)")
    for name, value, ok in targets:
        say(f"  [{ {True: 'met', False: 'NOT met', None: 'info'}[ok] }] {name}: {value}")


def _results_base(results_dir, cpu):
    """``results_dir/speed-<date>-<cpu>`` (suffixes added by :func:`_save`)."""
    day = datetime.date.today().isoformat()
    return Path(results_dir) / f"speed-{day}-{_machine.slug(cpu['cpu_model'])}"


def _save(base, results, lines):
    base.parent.mkdir(parents=True, exist_ok=True)
    md = ["<!-- written by benchmarks/speed.py -->", "```text", *lines, "```", ""]
    base.with_suffix(".md").write_text("\n".join(md), encoding="utf-8")
    base.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
