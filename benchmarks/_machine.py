"""The machine a benchmark ran on, and its practical matmul peak.

Nothing here imports TensorFlow or harmonize at module level: the benchmark driver imports this
module before it decides, per subprocess, which runtime settings TensorFlow gets.

The functions that need TensorFlow (:func:`tensorflow_report`, :func:`matmul_peak`) are meant to run
inside a worker subprocess whose environment was chosen before TensorFlow was imported.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time

#: CPU flags that decide TensorFlow's CPU speed, in the order they are printed.
FLAGS_THAT_MATTER = (
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512F"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("amx_tile", "AMX"),
    ("amx_bf16", "AMX-BF16"),
)


def cpu_flags():
    """The set of CPU feature flags in /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model():
    """The CPU model name ('AMD EPYC 7B13', 'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz', ...)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def has_native_bf16(flags=None):
    """True where the CPU computes bfloat16 natively (AMX-BF16 or AVX-512 BF16).

    The same test as :func:`harmonize._runtime.cpu_has_native_bf16`, repeated here so the driver can
    decide without importing harmonize (which would set TensorFlow's environment in this process).
    """
    flags = cpu_flags() if flags is None else flags
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))


def cpu_kind(flags=None):
    """A short label of the CPU's relevant capability: 'amx', 'avx512-bf16', 'avx512', 'avx2' or 'other'."""
    flags = cpu_flags() if flags is None else set(flags)
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def usable_cores():
    """Number of cores this process may run on (affinity), and the machine's logical CPU count."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return usable, os.cpu_count() or usable


def cpu_report():
    """A dict describing the CPU, without TensorFlow."""
    flags = cpu_flags()
    usable, logical = usable_cores()
    return {
        "cpu_model": cpu_model(),
        "cpu_kind": cpu_kind(flags),
        "cores_usable": usable,
        "cpus_logical": logical,
        "flags": {label: (flag in flags) for flag, label in FLAGS_THAT_MATTER},
        "native_bf16": has_native_bf16(flags),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def slug(text):
    """A file-name friendly short form of a CPU model: 'AMD EPYC 7B13' -> 'amd-epyc-7b13'."""
    out = []
    for ch in text.lower():
        out.append(ch if ch.isalnum() else "-")
    s = "-".join(part for part in "".join(out).split("-") if part and part not in ("r", "tm", "cpu", "processor"))
    return s[:40] or "cpu"


def peak_rss_bytes():
    """Peak resident set size of this process in bytes (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB


def onednn_enabled():
    """Whether TensorFlow runs with its oneDNN optimisations on, as TensorFlow itself decides it.

    Reads TensorFlow's own answer (``IsMklEnabled``, which applies ``TF_ENABLE_ONEDNN_OPTS`` and
    TensorFlow's per-CPU default). Returns None when that function is not available.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    try:
        return bool(_pywrap_util_port.IsMklEnabled())
    except AttributeError:
        return None


def tensorflow_report():
    """TensorFlow/Keras versions and the runtime settings in effect in this process (imports TF)."""
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onednn": onednn_enabled(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "precision_policy": keras.mixed_precision.global_policy().name,
    }


def matmul_peak(dtype="float32", n=4096, repeats=5, warmup=1):
    """Measure ``n x n`` matmul throughput in GFLOP/s (2 n^3 FLOPs per product; imports TF).

    The product runs inside a ``tf.function`` on tensors already in the requested dtype, so the
    figure is the practical peak TensorFlow reaches on this machine with the current settings.

    Returns
    -------
    dict
        ``{"dtype", "n", "best_gflops", "median_gflops", "seconds": [...]}``; the best repeat is
        the peak that the training and inference figures are read against.
    """
    import tensorflow as tf

    tf_dtype = tf.as_dtype(dtype)
    gen = tf.random.Generator.from_seed(0)
    a = tf.cast(gen.normal((n, n)), tf_dtype)
    b = tf.cast(gen.normal((n, n)), tf_dtype)

    @tf.function
    def product(x, y):
        # Reduce to a scalar so fetching the result costs nothing next to the product.
        return tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32))

    for _ in range(warmup):
        product(a, b).numpy()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a, b).numpy()
        seconds.append(time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {
        "dtype": dtype,
        "n": n,
        "best_gflops": flops / min(seconds) / 1e9,
        "median_gflops": flops / statistics.median(seconds) / 1e9,
        "seconds": seconds,
    }


def format_cpu(report):
    """Human-readable lines for :func:`cpu_report`."""
    flags = ", ".join(f"{label} {'yes' if on else 'no'}" for label, on in report["flags"].items())
    return [
        f"CPU:            {report['cpu_model']} ({report['cpu_kind']})",
        f"cores:          {report['cores_usable']} usable of {report['cpus_logical']} logical",
        f"flags:          {flags}",
        f"native bf16:    {'yes' if report['native_bf16'] else 'no'}",
        f"python:         {report['python']} on {report['platform']}",
    ]


def format_tf(report, label):
    """One line for :func:`tensorflow_report`."""
    onednn = {True: "on", False: "off", None: "unknown"}[report["onednn"]]
    return (f"{label}: TensorFlow {report['tensorflow']}, Keras {report['keras']}, oneDNN {onednn} "
            f"(TF_ENABLE_ONEDNN_OPTS={report['TF_ENABLE_ONEDNN_OPTS']}), policy {report['precision_policy']}")
