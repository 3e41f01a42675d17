"""Devices against resources in the sweep YAML (a trial sees only the GPUs
Ray gives it), and the command line's cluster options (`sweep submit`,
`--address` on status/stop/logs/resume) on input that is wrong before any
cluster is contacted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeps.cli import EXIT_INVALID, app
from sweeps.spec import SpecError, load_sweep, parse_sweep
from tests.conftest import EXAMPLES, TINY_SWEEP

runner = CliRunner()
NOWHERE = "http://127.0.0.1:1"  # a dashboard address nothing answers at

TRAIN = "    batch_size: 64\n"
RESOURCES = "resources:\n  cpu: 1\n"
assert TRAIN in TINY_SWEEP and TINY_SWEEP.endswith(RESOURCES)


def with_device(device: str, gpu: float | None) -> str:
    """TINY_SWEEP with base.train.device and resources.gpu (None: left out, i.e. 0)."""
    text = TINY_SWEEP.replace(TRAIN, f"{TRAIN}    device: {device}\n")
    return text if gpu is None else text.replace(RESOURCES, f"{RESOURCES}  gpu: {gpu}\n")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def device_error(write_sweep, text: str, key: str = "base.train.device") -> str:
    """The file fails with one line `<path>:<line of the device>: <key>: ...`."""
    path = write_sweep(text)
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message, message
    line = line_of(text, "device:")
    assert message.startswith(f"{path}:{line}: {key}: "), message
    assert (info.value.key, info.value.line) == (key, line)
    return message


# --- devices ---------------------------------------------------------------------------


@pytest.mark.parametrize("device, gpu", [("cuda", None), ("cuda", 0), ("cuda:0", 0), ("cuda:1", None)])
def test_a_cuda_device_needs_a_gpu(write_sweep, device: str, gpu: float | None) -> None:
    message = device_error(write_sweep, with_device(device, gpu))
    assert f"{device} needs resources.gpu > 0" in message
    assert "auto" in message  # what to use instead


@pytest.mark.parametrize("device, gpu", [("cuda:1", 0.5), ("cuda:1", 1), ("cuda:2", 2), ("cuda:7", 0.25)])
def test_a_trial_sees_only_its_gpus(write_sweep, device: str, gpu: float) -> None:
    message = device_error(write_sweep, with_device(device, gpu))
    assert f"a trial with resources.gpu {gpu:g} sees its GPU as cuda:0 only" in message


@pytest.mark.parametrize("device, gpu", [("cuda", 0.25), ("cuda", 1), ("cuda:0", 0.5), ("cuda:1", 2), ("cuda:0", 1),
                                         ("auto", None), ("cpu", None), ("auto", 0.5), ("cpu", 1)])
def test_devices_that_fit_the_resources(device: str, gpu: float | None) -> None:
    c = parse_sweep(with_device(device, gpu), "s.yaml").config
    assert c.base.train.device == device
    assert c.resources.gpu == (gpu or 0)


def test_the_search_device_of_an_fl_sweep_is_checked_too(write_sweep) -> None:
    text = (EXAMPLES / "fl_quota_small.yaml").read_text()
    anchor = "    max_margin: 0.5"
    assert text.count(anchor) == 1
    bad = text.replace(anchor, "    device: cuda\n" + anchor)
    message = device_error(write_sweep, bad, key="base.search.device")
    assert "cuda needs resources.gpu > 0" in message
    ok = bad.replace("resources:\n  cpu: 1\n  gpu: 0\n", "resources:\n  cpu: 1\n  gpu: 0.5\n")
    assert ok != bad
    assert parse_sweep(ok, "fl.yaml").config.base.search.device == "cuda"


def test_a_cuda_device_in_the_space_needs_a_gpu() -> None:
    text = TINY_SWEEP.replace("  model.step_size: {loguniform: [0.05, 0.2]}\n",
                              "  model.step_size: {loguniform: [0.05, 0.2]}\n  train.device: {choice: [cpu, cuda]}\n")
    with pytest.raises(SpecError, match="device"):
        parse_sweep(text, "s.yaml")


# --- sweep submit and --address: wrong input, no cluster -----------------------------------


def _one_line_error(result) -> str:
    assert result.exit_code == EXIT_INVALID, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert result.stdout == ""
    return lines[0]


def _ray_untouched() -> bool:
    return "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_submit_with_a_gcs_address_asks_for_the_dashboard(write_sweep, tmp_path: Path) -> None:
    spec = write_sweep(TINY_SWEEP)
    result = runner.invoke(app, ["submit", str(spec), "--address", "127.0.0.1:6390", "-o", str(tmp_path / "out"),
                                 "--working-dir", str(tmp_path)])
    line = _one_line_error(result)
    assert line.startswith("error: --address 127.0.0.1:6390: expected the cluster's dashboard address")
    assert "dashboard" in line and "http://HEAD:8265" in line
    assert not (tmp_path / "out").exists()
    assert _ray_untouched()


@pytest.mark.parametrize("override", [None, "rel/out"])
def test_submit_with_a_relative_output_dir(write_sweep, tmp_path: Path, override: str | None) -> None:
    spec = write_sweep(TINY_SWEEP)  # output_dir: runs (the default)
    args = ["submit", str(spec), "--address", NOWHERE, "--working-dir", str(tmp_path)]
    line = _one_line_error(runner.invoke(app, args + (["-o", override] if override else [])))
    assert line.startswith(f"error: output_dir: {override or 'runs'!r} is relative")
    assert "absolute path" in line


def test_submit_with_a_spec_outside_the_working_dir(write_sweep, tmp_path: Path) -> None:
    spec = write_sweep(TINY_SWEEP)
    wd = tmp_path / "project"
    wd.mkdir()
    result = runner.invoke(app, ["submit", str(spec), "--address", NOWHERE, "-o", str(tmp_path / "out"), "--working-dir", str(wd)])
    line = _one_line_error(result)
    assert f"outside the working directory {wd.resolve()}" in line


@pytest.mark.parametrize("pair", ["NOEQUALS", "=value"])
def test_submit_env_must_be_key_value(write_sweep, tmp_path: Path, pair: str) -> None:
    spec = write_sweep(TINY_SWEEP)
    result = runner.invoke(app, ["submit", str(spec), "--address", NOWHERE, "-o", str(tmp_path / "out"),
                                 "--working-dir", str(tmp_path), "--env", "OK=1", "--env", pair])
    line = _one_line_error(result)
    assert line == f"error: --env {pair!r}: expected KEY=VALUE"


def test_submit_rejects_a_bad_spec_first(write_sweep, tmp_path: Path) -> None:
    spec = write_sweep(with_device("cuda", None))
    result = runner.invoke(app, ["submit", str(spec), "--address", NOWHERE, "-o", str(tmp_path / "out"), "--working-dir", str(tmp_path)])
    assert "base.train.device: cuda needs resources.gpu > 0" in _one_line_error(result)


def test_submit_requires_an_address(write_sweep) -> None:
    result = runner.invoke(app, ["submit", str(write_sweep(TINY_SWEEP))])
    assert result.exit_code == 2  # click's usage error
    assert "--address" in result.stderr


@pytest.mark.parametrize("command", [["status", "abl"], ["stop", "abl"], ["logs", "abl"], ["logs", "abl", "--follow"]])
def test_job_commands_want_the_dashboard_address(command: list[str]) -> None:
    line = _one_line_error(runner.invoke(app, [*command, "--address", "127.0.0.1:6390"]))
    assert line.startswith("error: --address 127.0.0.1:6390: expected the cluster's dashboard address")
    assert _ray_untouched()


def test_resume_with_a_gcs_address_looks_for_the_folder_here(tmp_path: Path) -> None:
    # HOST:PORT is a cluster to join, not a Ray job: the sweep folder must exist under -o first.
    result = runner.invoke(app, ["resume", "abl", "--address", "127.0.0.1:6390", "-o", str(tmp_path)])
    line = _one_line_error(result)
    assert line == f"error: no sweep 'abl' under {tmp_path}"
    assert _ray_untouched()


def test_resume_env_must_be_key_value_with_a_dashboard() -> None:
    result = runner.invoke(app, ["resume", "abl", "--address", NOWHERE, "--env", "NOEQUALS"])
    assert _one_line_error(result) == "error: --env 'NOEQUALS': expected KEY=VALUE"
