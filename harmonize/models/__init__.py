"""Keras 3 networks: generators, discriminators, the scanner classifier and the CycleGAN training model.

Importing this package stays cheap (no Keras import). The harmonize custom objects (the
ResNet generator's ``ReflectionPadding2D`` layer, the loss functions) are registered with Keras by
:func:`register_custom_objects`, which runs here already when Keras is loaded, and which code that
loads saved models calls before ``keras.models.load_model``.
"""
import sys as _sys


def register_custom_objects():
    """Register every harmonize Keras custom object (idempotent; imports Keras)."""
    from harmonize import losses
    from harmonize.models import generators  # noqa: F401  (defining the layer classes registers them)

    losses.register_losses()


if "keras" in _sys.modules:  # free when Keras is already imported
    register_custom_objects()
