"""Fractional-GPU packing, proven without a GPU.

Ray lets a node declare GPUs it does not have (`ray.init(num_gpus=N)`, `ray
start --num-gpus N`) and then assigns them to trials exactly as it would real
ones: a fractional request is placed on one GPU, CUDA_VISIBLE_DEVICES and
`ray.get_gpu_ids()` name it, and a GPU holds at most 1 / fraction such
trials at once. Here a real sweep of 10 trials with `resources: {gpu: 0.25}`
runs on a node declaring 2 GPUs and 8 CPUs, at most 8 at once, so the last 2
trials run in worker processes reused from finished trials
(`reuse_actors`). The trials are tests/tuning/gpu_probe.py's: each records
what Ray gave it, then trains on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY_SWEEP, private_ray
from tuning.runner import LaunchError, MLFLOW_DB

pytestmark = pytest.mark.slow

DECLARED_GPUS = 2
DECLARED_CPUS = 8
FRACTION = 0.25
PER_GPU = 4  # 1 / FRACTION
TRIALS = 10
CONCURRENT = 8


def _spec(out: Path, experiment: str, gpu: float, cpu: float = 1, num_trials: int = TRIALS) -> str:
    text = (TINY_SWEEP.replace("experiment: cnnf", f"experiment: {experiment}")
            .replace("num_trials: 2", f"num_trials: {num_trials}")
            .replace("max_concurrent: 2", f"max_concurrent: {CONCURRENT}")
            .replace("epochs: 2", "epochs: 1")
            .replace("n_train: 256", "n_train: 64")
            .replace("pgd_steps: 2\n    n_examples: 32", "pgd_steps: 1\n    n_examples: 16\n    checks: false")
            .replace("  model.ind: {choice: [0, 2]}\n", "")
            .replace("resources:\n  cpu: 1\n", f"output_dir: {out}\nresources:\n  cpu: {cpu}\n  gpu: {gpu}\n"))
    assert f"gpu: {gpu}" in text and f"num_trials: {num_trials}" in text and "checks: false" in text
    return text


@pytest.fixture(scope="module")
def declared_gpus():
    """A local Ray node declaring 2 GPUs and 8 CPUs that this machine does not have."""
    with private_ray(num_cpus=DECLARED_CPUS, num_gpus=DECLARED_GPUS) as ray:
        yield ray


@pytest.fixture(scope="module")
def packed(declared_gpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from mlflow import MlflowClient

    from sweeps.spec import parse_sweep
    from tests.tuning import gpu_probe
    from tuning.runner import launch_sweep

    gpu_probe.register()
    out = tmp_path_factory.mktemp("packed")
    loaded = parse_sweep(_spec(out, gpu_probe.KIND, FRACTION), "packed.yaml")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        outcome = launch_sweep(loaded.config, loaded.text)
    records = [json.loads(line) for line in (outcome.output_dir / gpu_probe.PROBE_LOG).read_text().splitlines()]
    client = MlflowClient(f"sqlite:///{out / MLFLOW_DB}")
    runs = client.search_runs([outcome.experiment_id])
    children = {r.data.tags["optuna.trial"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    return {"outcome": outcome, "records": records, "runs": children, "printed": printed.getvalue(), "out": out}


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = now = 0
    for _, step in events:  # at a tie an end (-1) sorts before a start: touching intervals do not overlap
        now += step
        peak = max(peak, now)
    return peak


def test_every_trial_ran_once(packed: dict[str, Any]) -> None:
    outcome = packed["outcome"]
    assert (outcome.status, outcome.n_finished, outcome.n_failed) == ("FINISHED", TRIALS, 0)
    assert sorted(r["trial"] for r in packed["records"]) == list(range(TRIALS))
    assert sorted(packed["runs"], key=int) == [str(i) for i in range(TRIALS)]


def test_launch_says_how_the_trials_pack(declared_gpus, packed: dict[str, Any]) -> None:
    ip = declared_gpus.util.get_node_ip_address()
    assert (f"cluster: 1 node(s) hold {CONCURRENT} trial(s) of cpu=1 gpu={FRACTION:g} at once "
            f"({ip} {CONCURRENT}, {PER_GPU} per GPU on {DECLARED_GPUS} GPUs)") in packed["printed"]


def test_each_trial_sees_exactly_the_gpu_ray_gave_it(packed: dict[str, Any]) -> None:
    for r in packed["records"]:
        assert len(r["ray_gpu_ids"]) == 1, r  # a fraction of one GPU, never a share of two
        assert r["ray_gpu_ids"][0] in {str(g) for g in range(DECLARED_GPUS)}, r
        assert r["cuda_visible_devices"] == r["ray_gpu_ids"][0], r


def test_at_most_four_trials_share_a_gpu_and_both_gpus_fill(packed: dict[str, Any]) -> None:
    by_gpu: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in packed["records"]:
        by_gpu[r["ray_gpu_ids"][0]].append((r["start"], r["end"]))
    assert sorted(by_gpu) == [str(g) for g in range(DECLARED_GPUS)]
    peaks = {gpu: _peak_overlap(spans) for gpu, spans in by_gpu.items()}
    assert all(peak <= PER_GPU for peak in peaks.values()), peaks
    # Packing happened: more trials ran at once than one GPU holds, and a GPU
    # carried more than one (each holds its slot HOLD_S s before training).
    every = [span for spans in by_gpu.values() for span in spans]
    assert _peak_overlap(every) > PER_GPU, peaks
    assert max(peaks.values()) >= 2, peaks


def test_reused_workers_keep_their_gpu(packed: dict[str, Any]) -> None:
    """A worker process reused for a later trial (10 trials, 8 slots) reports,
    for each trial it runs, the GPU Ray assigned it, the same every time."""
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in packed["records"]:
        by_pid[r["pid"]].append(r)
    reused = {pid: rs for pid, rs in by_pid.items() if len(rs) > 1}
    assert reused, "no worker process ran two trials: reuse_actors did not reuse one"
    assert sum(len(rs) for rs in reused.values()) - len(reused) == TRIALS - len(by_pid)
    for pid, rs in reused.items():
        assert len({r["cuda_visible_devices"] for r in rs}) == 1, rs
        assert len({tuple(r["ray_gpu_ids"]) for r in rs}) == 1, rs


def test_mlflow_runs_carry_the_gpu_ids(packed: dict[str, Any]) -> None:
    from tuning.tracking import GPU_IDS_TAG

    for r in packed["records"]:
        run = packed["runs"][str(r["trial"])]
        assert run.data.tags.get(GPU_IDS_TAG) == r["ray_gpu_ids"][0], (r, run.data.tags)


def test_the_trial_refuses_a_gpu_torch_cannot_see(packed: dict[str, Any]) -> None:
    """Inside each Ray worker, the product's device choice for `auto` named
    the GPU Ray gave it and refused to fall back to the CPU."""
    for r in packed["records"]:
        assert r["device"] is None, r
        assert r["refusal"].startswith(f"resources.gpu {FRACTION:g}: Ray gave this trial GPU {r['ray_gpu_ids'][0]} "), r
        assert f"CUDA_VISIBLE_DEVICES='{r['cuda_visible_devices']}'" in r["refusal"], r


def test_a_real_trial_on_a_declared_gpu_fails_loudly(declared_gpus, tmp_path: Path) -> None:
    """The CNN-F kind itself, with device auto, on a GPU torch cannot see:
    the trial fails with the refusal as its error; nothing trains on the CPU."""
    from mlflow import MlflowClient

    from sweeps.spec import parse_sweep
    from tuning.runner import launch_sweep

    loaded = parse_sweep(_spec(tmp_path, "cnnf", FRACTION, num_trials=1), "loud.yaml")
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = launch_sweep(loaded.config, loaded.text)
    assert (outcome.n_finished, outcome.n_failed) == (0, 1)
    [run] = [r for r in MlflowClient(f"sqlite:///{tmp_path / MLFLOW_DB}").search_runs([outcome.experiment_id])
             if "mlflow.parentRunId" in r.data.tags]
    assert "cannot use it; the trial does not fall back to the CPU" in run.data.tags.get("error", ""), run.data.tags
    assert not any(k.startswith("val_") for k in run.data.metrics), run.data.metrics  # it never trained


@pytest.mark.parametrize("cpu, gpu, need", [(1, 3, r"cpu=1 gpu=3 \(3 whole GPUs\)"),
                                            (DECLARED_CPUS + 1, FRACTION, r"cpu=9 gpu=0.25 \(0.25 of one GPU\)")])
def test_a_request_no_node_can_hold_fails_at_launch_in_one_line(declared_gpus, tmp_path: Path, cpu: float, gpu: float,
                                                                 need: str) -> None:
    from sweeps.spec import parse_sweep
    from tuning.runner import launch_sweep

    loaded = parse_sweep(_spec(tmp_path / "runs", "cnnf", gpu, cpu=cpu), "big.yaml")
    with pytest.raises(LaunchError, match=rf"^resources: a trial asks for {need}, but no node") as info:
        launch_sweep(loaded.config, loaded.text)
    assert "\n" not in str(info.value)
    assert "GPU=2" in str(info.value)  # it names what the nodes have
    assert not (tmp_path / "runs").exists()  # no sweep folder, no MLflow store, no run
