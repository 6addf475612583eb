"""TensorFlow runtime settings chosen before TensorFlow is imported.

Measured on the 2-core machines this project runs on: TensorFlow 2.21 leaves oneDNN off on
CPUs without AVX-512 (AMD EPYC Zen 3, AVX2 only); turning it on gave 1.6x in training and
3.2x in inference there. On CPUs with AVX-512 TensorFlow turns it on itself. So we ask for it
everywhere, unless the user already chose. XLA (jit_compile) was slower on both kinds of CPU
and is left off.
"""
import os

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
