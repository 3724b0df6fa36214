"""The command line as a user meets it: help for every subcommand, one-line errors, exit codes."""

import subprocess
import sys

import pytest

from wrn.cli import COMMANDS, main


@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS)])
def test_help_prints_and_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: wrn" in capsys.readouterr().out


def test_unknown_subcommand_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["trian"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trian" in err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "wrn", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("wrn ")
