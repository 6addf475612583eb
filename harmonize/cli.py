"""The ``harmonize`` command line.

Each subcommand lives in its own module that defines ``add_arguments(parser)`` and
``run(args) -> int`` and imports its heavy libraries (TensorFlow, SimpleITK) inside ``run``,
so ``--help`` answers at once. ``python -m harmonize.<command>`` runs the same code.

Errors in the user's input (:class:`harmonize.errors.HarmonizeError`) are printed as one line
on stderr with a non-zero exit status; set ``HARMONIZE_DEBUG=1`` to see the traceback.
"""
import argparse
import importlib
import os
import sys
import warnings

from harmonize import __version__
from harmonize.errors import HarmonizeError

#: subcommand -> (module, one-line summary); the order is the order of a study.
COMMANDS = {
    "simulate": ("harmonize.simulate.command", "write the built-in two-scanner quantitative map dataset (with paired truth)"),
    "prepare": ("harmonize.prepare", "turn a data folder (NIfTI/NumPy/DICOM) into one HDF5 training dataset"),
    "assess": ("harmonize.assess", "measure how different the two scanners are (histograms, SSIM/NRMSE, classifier, Grad-CAM)"),
    "train": ("harmonize.train", "train a CycleGAN experiment (experiments/exp<N>.yaml)"),
    "select": ("harmonize.select", "choose a checkpoint of a run by the thesis epoch-selection rules or a metric"),
    "evaluate": ("harmonize.evaluate", "validate a trained run on the test subjects (thesis Tables 4-7, errors vs truth)"),
    "apply": ("harmonize.apply", "harmonise new NIfTI/DICOM scans with a saved generator or a classical baseline"),
}

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _load(name):
    return importlib.import_module(COMMANDS[name][0])


def make_parser(name, module=None, parser=None):
    """Build (or fill) the argument parser of one subcommand."""
    module = module or _load(name)
    if parser is None:
        parser = argparse.ArgumentParser(prog=f"harmonize {name}", description=module.__doc__, formatter_class=_FORMATTER)
    module.add_arguments(parser)
    return parser


def _warning_format(name):
    """``warnings.formatwarning`` for a command: user-facing warnings (``UserWarning``: the
    project's, which name the file and the problem, also those raised in worker threads) as one
    line each, ``harmonize <name>: warning: <message>``, without the source line Python adds;
    other categories (deprecations) as Python prints them."""
    plain = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if issubclass(category, UserWarning):
            return f"harmonize {name}: warning: {message}\n"
        return plain(message, category, filename, lineno, line)

    return formatwarning


def _run(name, func, args):
    debug = os.environ.get("HARMONIZE_DEBUG", "") not in ("", "0")
    saved_format = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _warning_format(name)
    try:
        code = func(args)
    except HarmonizeError as err:
        if debug:
            raise
        print(f"harmonize {name}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"harmonize {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = saved_format
    return 0 if code is None else int(code)


def command_main(name, argv=None):
    """Entry point of ``python -m harmonize.<name>``: parse ``argv`` and run one subcommand."""
    module = _load(name)
    args = make_parser(name, module).parse_args(argv)
    return _run(name, module.run, args)


def main(argv=None):
    """Entry point of the ``harmonize`` console script. Returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(len(n) for n in COMMANDS)
    epilog = "commands:\n" + "\n".join(f"  {n:<{width}}  {summary}" for n, (_, summary) in COMMANDS.items())
    epilog += "\n\nRun 'harmonize <command> --help' for the inputs and outputs of each command."
    top = argparse.ArgumentParser(
        prog="harmonize",
        description="Harmonise quantitative MR maps (T1/T2/PD in physical units) between two scanners "
        "with CycleGAN style transfer, and validate whether it worked.",
        epilog=epilog,
        formatter_class=_FORMATTER,
    )
    top.add_argument("--version", action="version", version=f"harmonize {__version__}")
    top.add_argument("command", choices=list(COMMANDS), metavar="command", help="one of: " + ", ".join(COMMANDS))
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv:
        top.print_help()
        return 2
    if argv[0] in ("-h", "--help", "--version"):
        top.parse_args(argv[:1])
        return 0
    ns = top.parse_args(argv[:1])
    return command_main(ns.command, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
