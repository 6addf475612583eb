"""TensorFlow runtime settings chosen before TensorFlow is imported.

Measured on the 2-core machines this project runs on: TensorFlow 2.21 leaves oneDNN off on
CPUs without AVX-512 (AMD EPYC Zen 3, AVX2 only); turning it on gave 1.6x in training and
3.2x in inference there. On CPUs with AVX-512 TensorFlow turns it on itself. So we ask for it
everywhere, unless the user already chose. XLA (jit_compile) was slower on both kinds of CPU
and is left off.
"""
import os
import sys
import tempfile

_DEFAULTS = {
    "TF_ENABLE_ONEDNN_OPTS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",  # keep TensorFlow's C++ info/warning chatter out of the user's terminal
    "KERAS_BACKEND": "tensorflow",
}


def configure_environment():
    """Set the runtime defaults in ``os.environ`` where the user has not set them.

    Returns
    -------
    dict
        The variables this call set (empty when the user had set them all).
    """
    changed = {}
    for key, value in _DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = value
            changed[key] = value
    return changed


def import_tensorflow_quietly():
    """Import TensorFlow and set up its devices with its C++ start-up log held back from stderr.

    TensorFlow 2.21 writes several lines at start-up (oneDNN, CUDA drivers not found, a failed
    ``cuInit`` on machines without a GPU) that ``TF_CPP_MIN_LOG_LEVEL`` no longer silences; they
    sit above a command's own messages and read like failures. Each command that uses
    TensorFlow calls this at the start of its run (apply after the checks of its inputs). If the
    import fails, the held-back log is written out before the error is raised; where stderr
    cannot be redirected, TensorFlow is imported plainly. With ``HARMONIZE_DEBUG`` set the log
    is left alone.
    """
    if "tensorflow" in sys.modules or os.environ.get("HARMONIZE_DEBUG", "") not in ("", "0"):
        _plain_import()
        return
    sys.stderr.flush()
    saved = held = None
    try:
        saved = os.dup(2)
        held = tempfile.TemporaryFile()
        os.dup2(held.fileno(), 2)
    except OSError:  # no stderr, or no temporary file: nothing to hold back with
        if saved is not None:
            os.close(saved)
        if held is not None:
            held.close()
        _plain_import()
        return
    with held:
        failed = True
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def _plain_import():
    import tensorflow as tf  # noqa: F401  (log and all)


def cpu_flags():
    """Return the set of CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16():
    """True where the CPU computes bfloat16 natively (AMX-BF16 or AVX-512 BF16)."""
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)
