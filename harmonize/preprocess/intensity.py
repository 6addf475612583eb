"""Invertible normalisation between physical units and the network range [-1, 1].

``to_network(x) = 2 x / scale - 1`` and ``from_network(y) = (y + 1) scale / 2``, per domain
('A' = source scanner, 'B' = target scanner). 0 (background) maps to -1, the generator's tanh floor.

Kinds
-----
shared (default)
    One scale for both scanners: the maximum of the training data of both. The inter-scanner
    difference the networks must learn survives normalisation, and ``apply`` returns physical units.
per-scanner-max
    The thesis's ``X / max(X)`` per scanner, kept for exact reproduction. It erases any global
    scale difference between the scanners (a 5 % T1 bias becomes invisible to the networks);
    it is also what domains of different map types (Experiment 6, T1 vs T2) need.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from harmonize.errors import ConfigError

KINDS = ("shared", "per-scanner-max")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-domain linear map from physical units to [-1, 1]; see the module docstring."""

    kind: str
    scale_a: float
    scale_b: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"normalization kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("scale_a", "scale_b"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"normalization {name} must be a positive number, got {value!r}")

    @classmethod
    def fit(cls, values_a, values_b, kind="shared"):
        """Fit on the training data of both domains (arrays in physical units, any shape)."""
        if kind not in KINDS:
            raise ConfigError(f"normalization kind {kind!r} is not one of {', '.join(KINDS)}")
        max_a = float(np.max(values_a))
        max_b = float(np.max(values_b))
        if kind == "shared":
            scale = max(max_a, max_b)
            return cls(kind, scale, scale)
        return cls(kind, max_a, max_b)

    def scale(self, domain):
        if domain in ("A", "a"):
            return self.scale_a
        if domain in ("B", "b"):
            return self.scale_b
        raise ValueError(f"domain must be 'A' or 'B', got {domain!r}")

    def to_network(self, x, domain):
        """Physical units -> network range (float32). Works on NumPy arrays and tensors."""
        s = np.float32(2.0 / self.scale(domain))
        return x * s - np.float32(1.0)

    def from_network(self, y, domain):
        """Network range -> physical units (float32). Exact inverse of :meth:`to_network`."""
        s = np.float32(self.scale(domain) / 2.0)
        return (y + np.float32(1.0)) * s

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        try:
            return cls(kind=data["kind"], scale_a=float(data["scale_a"]), scale_b=float(data["scale_b"]))
        except KeyError as err:
            raise ConfigError(f"stored normalization lacks {err}; got {data!r}") from err
