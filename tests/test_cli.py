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


# What a fresh `wrn ARGS` process has imported by the time the command returns.
IMPORTED = """
import runpy, sys
sys.argv = ["wrn", *sys.argv[1:]]
try:
    runpy.run_module("wrn", run_name="__main__")
except SystemExit:
    pass
print(" ".join(sorted(m for m in sys.modules if m == "torch" or m.startswith("wrn"))))
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["--version"]])
def test_help_imports_no_torch(argv):
    """Help is instant: commands import their work lazily, and `import wrn` loads no model."""
    out = subprocess.run([sys.executable, "-c", IMPORTED, *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    modules = out.stdout.split()
    assert "wrn.cli" in modules and "torch" not in modules, modules


def test_control_a_command_that_builds_a_model_does_import_torch():
    """Control: the probe sees torch where a command really loads it."""
    out = subprocess.run([sys.executable, "-c", IMPORTED, "info", "wrn-10-1"], capture_output=True, text=True,
                         timeout=120)
    assert "torch" in out.stdout.split(), out.stderr


def test_the_public_api_survives_importing_the_modules_behind_it():
    """wrn.predict is the function even after the modules that hold and use it are imported (a
    submodule named wrn.predict would replace the function with itself on import)."""
    import numpy as np

    import wrn
    import wrn.commands.predict  # noqa: F401
    import wrn.inference  # noqa: F401

    assert {"create_model", "list_models", "load_checkpoint", "predict"} <= set(dir(wrn))
    assert callable(wrn.predict) and wrn.predict.__module__ == "wrn.inference"
    model = wrn.create_model("wrn-10-1", num_classes=3)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    preds = wrn.predict(model, images, mean=[0.5] * 3, std=[0.25] * 3, classes=["a", "b", "c"])
    assert preds.probs.shape == (2, 3) and wrn.list_models()
    assert callable(wrn.load_checkpoint)
    with pytest.raises(AttributeError):
        wrn.no_such_thing  # noqa: B018
