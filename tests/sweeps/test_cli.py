"""The `sweep` command line: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from sweeps.cli import EXIT_INVALID, app
from tests.conftest import QUICKSTART, REPO, TINY_SWEEP

runner = CliRunner()


def test_validate_ok() -> None:
    result = runner.invoke(app, ["validate", str(QUICKSTART)])
    assert result.exit_code == 0, result.output
    assert "sweep 'quickstart', 6 cnnf trials (2 at a time)" in result.output
    assert "objective val_acc (max)" in result.output


def test_validate_reports_one_line_and_exit_2(write_sweep) -> None:
    path = write_sweep(TINY_SWEEP.replace("  num_trials: 2", "  num_trails: 2"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == EXIT_INVALID
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}:19: search.num_trails: unknown key; did you mean 'num_trials'?")
    assert result.stdout == ""


def test_validate_checks_data_is_there(write_sweep, tmp_path: Path) -> None:
    text = TINY_SWEEP.replace("    dataset: fashion-mnist-sample", f"    dataset: mnist\n    root: {tmp_path / 'nodata'}")
    result = runner.invoke(app, ["validate", str(write_sweep(text))])
    assert result.exit_code == EXIT_INVALID
    assert str(tmp_path / "nodata") in result.stderr
    assert "MNIST/raw/train-images-idx3-ubyte" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_launch_rejects_bad_spec_before_writing_anything(write_sweep, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write_sweep(TINY_SWEEP.replace("{choice: [0, 2]}", "{choice: [0, 9]}"))
    result = runner.invoke(app, ["launch", str(path), "--output-dir", str(out)])
    assert result.exit_code == EXIT_INVALID
    assert "space.model.ind: value 9 is not allowed" in result.stderr
    assert not out.exists()


def test_launch_rejects_missing_data_before_starting_ray(write_sweep, tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = TINY_SWEEP.replace("    dataset: fashion-mnist-sample", f"    dataset: mnist\n    root: {tmp_path / 'nodata'}")
    result = runner.invoke(app, ["launch", str(write_sweep(text)), "--output-dir", str(out)])
    assert result.exit_code == EXIT_INVALID
    assert "not found under root" in result.stderr
    assert not out.exists()
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_missing_file() -> None:
    result = runner.invoke(app, ["validate", "does-not-exist.yaml"])
    assert result.exit_code == EXIT_INVALID
    assert result.stderr.strip() == "error: does-not-exist.yaml: no such file"


def test_console_script_help_lists_commands() -> None:
    exe = Path(sys.executable).with_name("sweep")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True, cwd=REPO)
    assert "launch" in result.stdout and "validate" in result.stdout


def test_help_and_validate_do_not_import_ray_optuna_mlflow() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sweeps.cli import app\n"
        f"r = CliRunner().invoke(app, ['validate', {str(QUICKSTART)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('ray', 'optuna', 'mlflow') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"
