"""Every command runs as ``harmonize <command>`` and as ``python -m harmonize.<command>`` (README)."""
import os
import shutil
import subprocess
import sys

import pytest

from harmonize.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_python_m_module_prints_the_commands_help(name):
    out = subprocess.run([sys.executable, "-m", f"harmonize.{name}", "--help"], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: harmonize {name}"), out.stdout[:200]


def test_console_entry_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n  {name} " in text


def test_error_after_tensorflow_starts_is_the_only_line_on_stderr(tmp_path):
    """TensorFlow's start-up log (oneDNN, no CUDA driver, failed cuInit) is held back, so a command that
    has imported TensorFlow still answers bad input with one line; HARMONIZE_DEBUG shows everything."""
    missing = tmp_path / "no_such_run"
    cmd = [sys.executable, "-m", "harmonize", "evaluate", "--run", str(missing), "--out", str(tmp_path / "out")]
    env = {k: v for k, v in os.environ.items() if k != "HARMONIZE_DEBUG"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300, env=env)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("harmonize evaluate: error:") and str(missing) in lines[0]
    # and TensorFlow was imported before the error (so its log was there to hold back)
    script = "import sys\nfrom harmonize.cli import main\nmain(sys.argv[1:])\nprint('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script, "evaluate", "--run", str(missing)], capture_output=True,
                         text=True, check=False, timeout=300)
    assert out.stdout.split()[-1:] == ["True"], out.stdout


def test_warnings_are_one_line_each(nifti_tree, tmp_path):
    shutil.copy(nifti_tree / "SCANNER_A" / "sub00.nii.gz", nifti_tree / "SCANNER_A" / "extra.nii.gz")
    cmd = [sys.executable, "-m", "harmonize", "prepare", str(nifti_tree), "--out", str(tmp_path / "d.h5"), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "HARMONIZE_DEBUG"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("harmonize prepare: warning: ") and "extra" in lines[0] and "only one scanner" in lines[0]


def test_warnings_raised_in_worker_threads_are_one_line_too():
    """Registration warnings come from a thread pool (their frame is in concurrent.futures, not in the package)."""
    from harmonize.cli import _warning_format

    fmt = _warning_format("prepare")
    text = fmt(UserWarning("b1: 3-D registration failed"), UserWarning, "/usr/lib/python3/concurrent/futures/thread.py", 58,
               "work_item.run()")
    assert text == "harmonize prepare: warning: b1: 3-D registration failed\n"
    other = fmt(DeprecationWarning("old"), DeprecationWarning, "x.py", 1, "")
    assert other.startswith("x.py:1: DeprecationWarning: old")
