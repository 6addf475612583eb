"""harmonize: quantitative MR map harmonisation between scanners by CycleGAN style transfer.

Importing the package is cheap: TensorFlow is loaded only by the modules that need it.
Before that happens, :mod:`harmonize._runtime` chooses TensorFlow's CPU runtime settings
(it never overrides a value the user has set in the environment).
"""
from harmonize import _runtime

_runtime.configure_environment()

__version__ = "0.1.0"

__all__ = ["__version__", "load_generator"]


def load_generator(path):
    """Load a saved ``.h5`` generator with its normalisation; see :func:`harmonize.apply.load_generator`."""
    from harmonize.apply import load_generator as _load

    return _load(path)
