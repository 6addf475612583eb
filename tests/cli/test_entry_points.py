"""Every command runs as ``harmonize <command>`` and as ``python -m harmonize.<command>`` (README)."""
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
