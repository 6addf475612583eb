"""Errors that the command line reports as one line on stderr with a non-zero exit.

Every message names the file (or DICOM series) involved, says what was wrong, and what to do.
"""


class HarmonizeError(Exception):
    """Base class of every error that harmonize raises for a user's input or settings."""

    exit_code = 1


class InputError(HarmonizeError):
    """An input file, folder or series is missing, unreadable, or not what is required."""

    exit_code = 2


class UnitsError(InputError):
    """Values cannot be a quantitative map in the stated units (e.g. seconds where ms are expected)."""


class GeometryError(InputError):
    """Sizes, spacing or orientation do not fit (mixed in-plane sizes, uneven slice spacing...)."""


class ConfigError(HarmonizeError):
    """An experiment configuration or a command-line setting is invalid."""

    exit_code = 3


class ModelError(HarmonizeError):
    """A saved model does not fit the request (another map type, image size or direction)."""

    exit_code = 4


def describe(path):
    """Short printable name of a file or series used in error messages."""
    return str(path)
