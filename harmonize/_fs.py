"""Atomic output: write to a temporary path beside the target, then rename.

A failure never leaves a partial output, and an output never replaces one of the inputs.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from harmonize.errors import InputError


def check_not_input(output, inputs):
    """Raise InputError when ``output`` is (or lies inside / contains) one of ``inputs``."""
    out = Path(output).resolve()
    for inp in inputs:
        src = Path(inp).resolve()
        if out == src:
            raise InputError(f"{output}: the output path is the input path; choose another output so the input is not overwritten")
        if src.is_dir() and src in out.parents:
            raise InputError(f"{output}: the output lies inside the input folder {inp}; choose a folder outside it")
        if out.is_dir() and out in src.parents and out.exists():
            raise InputError(f"{output}: the output folder contains the input {inp}; choose another output folder")


def check_overwrite(output, overwrite):
    """Raise InputError when ``output`` exists (other than as an empty folder) and ``overwrite`` is not set."""
    out = Path(output)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"{output}: already exists; choose another output or add --overwrite")


@contextlib.contextmanager
def atomic_path(target, suffix=None):
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block succeeds.

    Works for files and for folders (the block may create a folder at the yielded path).
    ``suffix`` defaults to the target's own suffixes so writers that look at the extension
    (``.nii.gz``, ``.h5``) behave as they would for the target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".partial{suffix}", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
