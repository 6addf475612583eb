"""Keras 3 networks: generators, discriminators, the scanner classifier and the CycleGAN training model."""
