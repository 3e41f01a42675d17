"""Cluster helpers (tuning.cluster) and the Ray Jobs helpers (tuning.jobs)
that need no cluster: token auth, one-line errors, GPU packing, multi-node
tracking and storage checks, the job's entrypoint and runtime environment,
and the checks `submit_sweep` makes before it contacts anything.

The only Ray here is a private local one (`address="local"`, 1 CPU, no
dashboard) started by a module fixture for the tests at the end of the
file; nothing connects to another cluster on this machine.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from sweeps.spec import parse_sweep
from tests.conftest import REPO, TINY_SWEEP, private_ray
from tuning import cluster, jobs, runner
from tuning.cluster import (
    AUTH_MODE_ENV,
    ClusterError,
    NodeSlots,
    _probe,
    check_feasible,
    check_storage,
    check_tracking,
    describe_packing,
    explain_ray_error,
    node_slots,
    tracking_is_local,
    use_token_auth,
)
from sweeps.submit import _entry, submit_sweep
from tuning.jobs import EXCLUDES, JobInfo, _check_address, _error_line, _runtime_env, sweep_jobs
from tuning.runner import JOB_ID_ENV, JOBS_ADDRESS_ENV, LaunchError

NOWHERE = "http://127.0.0.1:1"  # a dashboard address nothing answers at: checks must fail before using it


def node(node_id: str = "a1b2c3d4e5f6", ip: str = "10.0.0.1", cpu: float = 8, gpu: float = 0, alive: bool = True) -> dict[str, Any]:
    """A `ray.nodes()` entry."""
    resources: dict[str, float] = {"CPU": cpu, "memory": 1e9}
    if gpu:
        resources["GPU"] = gpu
    return {"NodeID": node_id, "NodeManagerAddress": ip, "Alive": alive, "Resources": resources}


@pytest.fixture
def auth_env():
    """Run with RAY_AUTH_MODE unset and put it back afterwards, whatever the test or the library set."""
    saved = os.environ.pop(AUTH_MODE_ENV, None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(AUTH_MODE_ENV, None)
        else:
            os.environ[AUTH_MODE_ENV] = saved


# --- token authentication ------------------------------------------------------------


def test_use_token_auth_turns_token_mode_on_when_unset(auth_env, monkeypatch) -> None:
    # Without ray._raylet loaded the function only sets the variable (the Config branch is tested below).
    monkeypatch.delitem(sys.modules, "ray._raylet", raising=False)
    assert use_token_auth() == "token"
    assert os.environ[AUTH_MODE_ENV] == "token"


@pytest.mark.parametrize("explicit", ["disabled", "token", "k8s"])
def test_use_token_auth_respects_an_explicit_setting(auth_env, monkeypatch, explicit: str) -> None:
    monkeypatch.delitem(sys.modules, "ray._raylet", raising=False)
    os.environ[AUTH_MODE_ENV] = explicit
    assert use_token_auth() == explicit
    assert os.environ[AUTH_MODE_ENV] == explicit


def test_use_token_auth_makes_an_imported_ray_see_token_mode() -> None:
    # Ray reads RAY_AUTH_MODE when ray._raylet is imported; the function must refresh it.
    # A subprocess, so this process's Ray configuration is left alone.
    code = ("import ray._raylet as r\n"
            "before = r.get_authentication_mode()\n"
            "from tuning.cluster import use_token_auth\n"
            "assert use_token_auth() == 'token'\n"
            "print(before == r.AuthenticationMode.TOKEN, r.get_authentication_mode() == r.AuthenticationMode.TOKEN)\n")
    env = {k: v for k, v in os.environ.items() if k != AUTH_MODE_ENV}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_explain_authentication_error_is_one_line_with_the_fix(auth_env) -> None:
    from ray.exceptions import AuthenticationError

    os.environ[AUTH_MODE_ENV] = "token"
    line = explain_ray_error(AuthenticationError("token mismatch\nsecond line of detail"), "10.0.0.1:6379")
    assert line is not None and "\n" not in line
    assert "the Ray cluster at 10.0.0.1:6379 refused us" in line
    assert "token mismatch" in line and "second line" not in line
    assert "RAY_AUTH_MODE=token" in line
    assert "ray get-auth-token" in line and "RAY_AUTH_TOKEN" in line


@pytest.mark.parametrize("exc", [ConnectionError("GCS unreachable"), ConnectionRefusedError(111, "refused")])
def test_explain_connection_error_names_the_address(auth_env, exc: Exception) -> None:
    line = explain_ray_error(exc, "10.0.0.9:6390")
    assert line is not None and "\n" not in line
    assert line.startswith("cannot connect to the Ray cluster at 10.0.0.9:6390")
    assert "RAY_AUTH_MODE=unset" in line
    assert f"({exc})" in line  # the cause is kept: "GCS unreachable", "[Errno 111] refused"


def test_explain_client_server_startup_failure_names_the_logs(auth_env) -> None:
    # What Ray's client raises when the head's proxy cannot start a client server in time: the
    # server-side traceback, whose last line says what failed.
    exc = ConnectionAbortedError("Initialization failure from server:\nTraceback (most recent call last):\n"
                                 "  File \"proxier.py\", line 780, in Datapath\n"
                                 "RuntimeError: Proxy failed to Connect to backend! Check `ray_client_server.err`")
    line = explain_ray_error(exc, "ray://10.0.0.9:10001")
    assert line is not None and "\n" not in line
    assert line.startswith("the Ray cluster at ray://10.0.0.9:10001 accepted the Ray Client connection")
    assert "RuntimeError: Proxy failed to Connect to backend!" in line and "Traceback" not in line
    assert "ray_client_server" in line and "HOST:6379" in line


def _client_init_failure() -> ConnectionAbortedError:
    """What Ray's client raises when the head's proxy could not start this client's server."""
    return ConnectionAbortedError("Initialization failure from server:\nTraceback (most recent call last):\n"
                                  "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err")


def _failing_init(monkeypatch, exc: Exception, failures: int) -> list[str]:
    """Make ray.init raise `exc` on its first `failures` calls; returns the addresses it was called with."""
    import ray

    calls: list[str] = []

    def init(**kwargs: Any) -> None:
        calls.append(kwargs["address"])
        if len(calls) <= failures:
            raise exc

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(runner, "CLIENT_RETRY_PAUSE_S", 0.0)
    return calls


@pytest.mark.parametrize("failures, joined", [(1, True), (2, True), (3, False)])
def test_ray_client_start_failures_are_tried_again(auth_env, monkeypatch, capsys, failures: int, joined: bool) -> None:
    # Ray's real client error, injected into ray.init: a real head that fails to start client servers
    # costs 30 s per attempt (checked by hand with RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S=0 on the head).
    calls = _failing_init(monkeypatch, _client_init_failure(), failures)
    if joined:
        assert runner._init_ray("ray://head:10001") is True
    else:
        with pytest.raises(LaunchError) as info:
            runner._init_ray("ray://head:10001")
        assert str(info.value).startswith("the Ray cluster at ray://head:10001 accepted the Ray Client connection")
        assert "Starting Ray client server failed" in str(info.value)
    assert calls == ["ray://head:10001"] * min(failures + 1, runner.CLIENT_START_ATTEMPTS)
    notes = capsys.readouterr().err.splitlines()
    assert [n.split(":", 1)[0] for n in notes] == ["note"] * min(failures, runner.CLIENT_START_ATTEMPTS - 1)
    attempts = runner.CLIENT_START_ATTEMPTS
    assert all(f"attempt {i + 1} of {attempts}" in n and n.endswith("trying again") for i, n in enumerate(notes))


@pytest.mark.parametrize("exc, address", [
    (ConnectionError("ray client connection timeout"), "ray://head:10001"),  # Ray's client retried the channel itself
    (ConnectionRefusedError(111, "refused"), "head:6379"),
    (_client_init_failure(), "head:6379"),  # only a Ray Client join starts a server per client
])
def test_other_connection_failures_are_not_tried_again(auth_env, monkeypatch, exc: Exception, address: str) -> None:
    calls = _failing_init(monkeypatch, exc, failures=10)
    with pytest.raises(LaunchError) as info:
        runner._init_ray(address)
    assert calls == [address]
    assert f"at {address}" in str(info.value) and f"{str(exc).splitlines()[-1]})" in str(info.value)


@pytest.mark.parametrize("exc", [ValueError("bad"), RuntimeError("boom"), TimeoutError("slow"), KeyError("k")])
def test_explain_other_errors_is_none(exc: Exception) -> None:
    assert explain_ray_error(exc, "auto") is None


# --- nodes and GPU packing ---------------------------------------------------------------


def test_fractional_gpus_pack_per_gpu_not_per_node() -> None:
    # 2 GPUs x floor(1 / 0.4) = 4 trials, not floor(2 / 0.4) = 5.
    [s] = node_slots([node(cpu=8, gpu=2)], cpu=1, gpu=0.4)
    assert (s.trials, s.per_gpu, s.gpus, s.cpus) == (4, 2, 2, 8.0)


@pytest.mark.parametrize(
    "cpus, gpus, cpu, gpu, trials, per_gpu",
    [
        (8, 2, 1, 0.25, 8, 4),  # 4 per GPU
        (8, 2, 2, 0.25, 4, 4),  # the CPUs are the limit
        (8, 1, 1, 1 / 3, 3, 3),  # 1 / (1/3) is 3.0000000000000004 or 2.9999...: still 3
        (16, 2, 1, 0.2, 10, 5),  # 5 per GPU
        (8, 2, 1, 1, 2, 0),  # whole GPUs
        (8, 3, 1, 2, 1, 0),  # two whole GPUs each: the third GPU stays idle
        (8, 2.0, 1, 1, 2, 0),  # ray.nodes() reports GPU as a float
        (8, 0, 1, 0.5, 0, 2),  # no GPU on the node
        (8, 0, 1, 1, 0, 0),
        (6, 0, 4, 0, 1, 0),  # CPU only
        (0.3, 0, 0.1, 0, 3, 0),  # 0.3 / 0.1 is 2.9999999999999996
        (2, 0, 0.5, 0, 4, 0),
    ],
)
def test_node_slots(cpus: float, gpus: float, cpu: float, gpu: float, trials: int, per_gpu: int) -> None:
    [s] = node_slots([node(cpu=cpus, gpu=gpus)], cpu=cpu, gpu=gpu)
    assert (s.trials, s.per_gpu) == (trials, per_gpu)


def test_node_slots_skips_dead_nodes_and_keeps_ids() -> None:
    nodes = [node("dead0000", "10.0.0.1", alive=False, gpu=8), node("live1111", "10.0.0.2", cpu=4, gpu=1),
             {"NodeID": "bare2222", "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 2}}]  # no Alive key: alive
    slots = node_slots(nodes, cpu=1, gpu=0.5)
    assert [(s.node_id, s.ip, s.trials) for s in slots] == [("live1111", "10.0.0.2", 2), ("bare2222", "10.0.0.3", 0)]


def test_check_feasible_passes_when_one_node_holds_a_trial() -> None:
    slots = node_slots([node("cpuonly0", cpu=16), node("gpunode1", cpu=4, gpu=1)], cpu=1, gpu=0.5)
    check_feasible(slots, cpu=1, gpu=0.5)  # the GPU node holds 2


def test_check_feasible_names_the_request_and_every_node() -> None:
    nodes = [node("0123456789abcdef", "10.0.0.1", cpu=16), node("fedcba9876543210", "10.0.0.2", cpu=2, gpu=1)]
    with pytest.raises(ClusterError) as info:
        check_feasible(node_slots(nodes, cpu=4, gpu=0.5), cpu=4, gpu=0.5)
    message = str(info.value)
    assert "\n" not in message
    assert "cpu=4 gpu=0.5 (0.5 of one GPU)" in message
    assert "node 10.0.0.1 (01234567): CPU=16 GPU=0" in message
    assert "node 10.0.0.2 (fedcba98): CPU=2 GPU=1" in message


def test_check_feasible_whole_gpus_wording() -> None:
    with pytest.raises(ClusterError, match=r"gpu=2 \(2 whole GPUs\)"):
        check_feasible(node_slots([node(cpu=8, gpu=1)], cpu=1, gpu=2), cpu=1, gpu=2)


def test_describe_packing_with_waiting_trials() -> None:
    slots = node_slots([node(ip="10.0.0.1", cpu=8, gpu=2), node(ip="10.0.0.2", cpu=4)], cpu=1, gpu=0.4)
    line = describe_packing(slots, cpu=1, gpu=0.4, max_concurrent=6)
    assert "\n" not in line
    assert line.startswith("cluster: 2 node(s) hold 4 trial(s) of cpu=1 gpu=0.4 at once (10.0.0.1 4, 2 per GPU on 2 GPUs)")
    assert "10.0.0.2" not in line  # it holds none
    assert line.endswith("search.max_concurrent=6: 2 of them wait for a slot")


def test_describe_packing_without_waiting() -> None:
    slots = node_slots([node(ip="10.0.0.1", cpu=4, gpu=2)], cpu=1, gpu=1)
    line = describe_packing(slots, cpu=1, gpu=1, max_concurrent=2)
    assert "(10.0.0.1 2 on 2 GPUs)" in line
    assert line.endswith("search.max_concurrent=2")
    assert "wait" not in line
    cpu_line = describe_packing(node_slots([node(ip="10.0.0.1", cpu=3)], cpu=1, gpu=0), cpu=1, gpu=0, max_concurrent=3)
    assert "(10.0.0.1 3)" in cpu_line and "GPU" not in cpu_line and "wait" not in cpu_line


def test_node_slots_dataclass_is_frozen() -> None:
    s = NodeSlots("id", "ip", 1.0, 0, 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.trials = 2  # type: ignore[misc]


# --- tracking and storage ------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["sqlite:///runs/mlflow.db", "SQLITE:////abs/mlflow.db", "file:///tmp/mlruns", "file:mlruns",
                                 "mlruns", "/abs/path/mlruns", "./rel"])
def test_tracking_is_local(uri: str) -> None:
    assert tracking_is_local(uri)


@pytest.mark.parametrize("uri", ["http://mlflow:5000", "HTTPS://mlflow.example.org", "postgresql://u:p@db/mlflow",
                                 "mysql+pymysql://db/mlflow", "databricks", "databricks://profile", "databricks-uc"])
def test_tracking_is_not_local(uri: str) -> None:
    assert not tracking_is_local(uri)


def test_check_tracking_refuses_a_local_store_on_several_nodes() -> None:
    with pytest.raises(ClusterError) as info:
        check_tracking("sqlite:////shared/runs/mlflow.db", n_nodes=3, default=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("tracking.uri: the default sqlite:////shared/runs/mlflow.db is a file on one machine")
    assert "3 nodes" in message and "`mlflow server" in message and "http://THAT_HOST:5000" in message
    with pytest.raises(ClusterError, match=r"^tracking.uri: file:///x is a file"):
        check_tracking("file:///x", n_nodes=2, default=False)


def test_check_tracking_accepts_one_node_or_a_server() -> None:
    check_tracking("sqlite:///mlflow.db", n_nodes=1, default=True)
    check_tracking("http://mlflow:5000", n_nodes=5, default=False)


def test_probe_reads_the_token(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("abc123")
    assert _probe(str(probe), "abc123") is True
    assert _probe(str(probe), "abc124") is False  # another node's file of the same name
    assert _probe(str(tmp_path / "missing"), "abc123") is False  # the folder is local to another machine
    assert _probe(str(tmp_path), "abc123") is False  # a folder, not the file: OSError, not a crash


def test_check_storage_with_one_alive_node_probes_nothing(tmp_path: Path, monkeypatch) -> None:
    def fail(*_a, **_k):
        raise AssertionError("probed a single-node cluster")

    monkeypatch.setattr(cluster, "unshared_nodes", fail)
    root = tmp_path / "never"
    check_storage(root, [node("a"), node("b", alive=False)])
    check_storage(root, [])
    assert not root.exists()


def test_check_storage_names_the_nodes_that_do_not_see_it(tmp_path: Path, monkeypatch) -> None:
    seen: list[list[str]] = []

    def unshared(root: Path, nodes: list[dict[str, Any]], timeout_s: float = 120.0) -> list[str]:
        seen.append([n["NodeID"] for n in nodes])
        root.mkdir(parents=True, exist_ok=True)  # as the real probe does
        return ["10.0.0.2 (bbbbbbbb)"]

    monkeypatch.setattr(cluster, "unshared_nodes", unshared)
    root = tmp_path / "new"
    nodes = [node("aaaaaaaa", "10.0.0.1"), node("bbbbbbbb", "10.0.0.2"), node("cccccccc", "10.0.0.3", alive=False)]
    with pytest.raises(ClusterError) as info:
        check_storage(root, nodes)
    message = str(info.value)
    assert seen == [["aaaaaaaa", "bbbbbbbb"]]  # only alive nodes are probed
    assert message.startswith(f"output_dir: {root} is not shared: node(s) 10.0.0.2 (bbbbbbbb) of the 2-node Ray cluster")
    assert "\n" not in message
    assert not root.exists()  # the check created it, so it removes it

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ClusterError):
        check_storage(existing, nodes)
    assert existing.is_dir()  # the user's folder stays


def test_check_storage_passes_when_every_node_sees_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cluster, "unshared_nodes", lambda root, nodes, timeout_s=120.0: [])
    check_storage(tmp_path, [node("a"), node("b")])


# --- jobs: addresses, entrypoint, runtime environment ---------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1:6390", "auto", "ray://head:10001", "head:8265"])
def test_check_address_wants_the_dashboard(address: str) -> None:
    with pytest.raises(LaunchError) as info:
        _check_address(address)
    assert str(info.value).startswith(f"--address {address}: expected the cluster's dashboard address")
    assert "http://HEAD:8265" in str(info.value)


@pytest.mark.parametrize("address", ["http://head:8265", "https://ray.example.org"])
def test_check_address_accepts_http(address: str) -> None:
    _check_address(address)


def test_entry_is_shell_quoted() -> None:
    args = ("launch", "my spec.yaml", "--output-dir", "/shared/it's here", "--sweep-id", "x;rm -rf /")
    entry = _entry(*args)
    assert entry.startswith("python -m sweeps.cli launch ")
    assert shlex.split(entry) == ["python", "-m", "sweeps.cli", *args]


def test_runtime_env_excludes_outputs_inside_the_working_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(AUTH_MODE_ENV, raising=False)
    wd = tmp_path / "wd"
    env = _runtime_env(wd, wd / "out" / "sweeps", "tiny-20260101-000000", {"CNNF_DATA_ROOT": "/data"}, 90, "http://head:8265")
    assert env["working_dir"] == str(wd)
    assert env["excludes"] == [*EXCLUDES, "/out/sweeps"]
    v = env["env_vars"]
    assert v["RAY_JOB_STOP_SIGNAL"] == "SIGINT"
    assert v["RAY_JOB_STOP_WAIT_TIME_S"] == "90"
    assert v[JOB_ID_ENV] == "tiny-20260101-000000" and JOB_ID_ENV == "SWEEP_RAY_JOB_ID"
    assert v[JOBS_ADDRESS_ENV] == "http://head:8265" and JOBS_ADDRESS_ENV == "SWEEP_JOBS_ADDRESS"
    assert v["CNNF_DATA_ROOT"] == "/data"
    assert AUTH_MODE_ENV not in v
    assert all(isinstance(x, str) for x in v.values())  # Ray wants strings


def test_runtime_env_outputs_elsewhere_and_auth_mode(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(AUTH_MODE_ENV, "token")
    env = _runtime_env(tmp_path / "wd", Path("/shared/runs"), "j", {}, 120, "http://h:8265")
    assert env["excludes"] == EXCLUDES and env["excludes"] is not EXCLUDES
    assert env["env_vars"][AUTH_MODE_ENV] == "token"  # the job's driver connects the way the submitter does
    # The user's --env wins, also for the auth mode.
    env = _runtime_env(tmp_path / "wd", Path("/shared/runs"), "j", {AUTH_MODE_ENV: "disabled"}, 120, "http://h:8265")
    assert env["env_vars"][AUTH_MODE_ENV] == "disabled"


@pytest.mark.parametrize(
    "logs, line",
    [
        ("starting\nerror: tracking.uri: refused\n", "tracking.uri: refused"),
        ("error: first\nmore\nerror: second\nTraceback...\n  KeyError\n", "second"),
        ("just output\n\nlast words   \n\n", "last words"),
        ("", "no output"),
        ("\n  \n", "no output"),
    ],
)
def test_error_line(logs: str, line: str) -> None:
    assert _error_line(logs) == line


# --- jobs: submit_sweep fails before contacting the cluster -----------------------------------


def _config(output_dir: str):
    return dataclasses.replace(parse_sweep(TINY_SWEEP, "tiny.yaml").config, output_dir=output_dir)


@pytest.mark.parametrize("output_dir", ["runs", "./out", "sub/dir"])
def test_submit_rejects_a_relative_output_dir(tmp_path: Path, output_dir: str) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SWEEP)
    with pytest.raises(LaunchError) as info:
        submit_sweep(_config(output_dir), spec, address=NOWHERE, working_dir=tmp_path, env={})
    assert str(info.value).startswith(f"output_dir: {output_dir!r} is relative")
    assert "--output-dir" in str(info.value)


def test_submit_rejects_a_spec_outside_the_working_dir(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SWEEP)
    wd = tmp_path / "project"
    wd.mkdir()
    with pytest.raises(LaunchError) as info:
        submit_sweep(_config(str(tmp_path / "out")), spec, address=NOWHERE, working_dir=wd, env={})
    message = str(info.value)
    assert message.startswith(f"{spec.resolve()}: outside the working directory {wd.resolve()}")
    assert "--working-dir" in message
    assert not (tmp_path / "out").exists()


def test_submit_rejects_a_missing_working_dir(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SWEEP)
    with pytest.raises(LaunchError, match=r"^--working-dir .*nope: not a folder"):
        submit_sweep(_config(str(tmp_path / "out")), spec, address=NOWHERE, working_dir=tmp_path / "nope", env={})


def test_submit_with_a_gcs_address_names_the_dashboard(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SWEEP)
    with pytest.raises(LaunchError, match=r"^--address 127.0.0.1:6390: expected the cluster's dashboard address"):
        submit_sweep(_config(str(tmp_path / "out")), spec, address="127.0.0.1:6390", working_dir=tmp_path, env={})


# --- jobs: finding a sweep's jobs --------------------------------------------------------------


def job(submission_id: Optional[str], sweep_id: Optional[str], start_s: Optional[float], status: str = "SUCCEEDED",
        kind: str = "launch", output_dir: str = "/shared/runs") -> SimpleNamespace:
    """A Ray JobDetails as list_jobs returns it (times in ms)."""
    meta = {} if sweep_id is None else {"sweep_id": sweep_id, "output_dir": output_dir, "sweep_kind": kind,
                                        "tracking_uri": "http://mlflow:5000"}
    return SimpleNamespace(submission_id=submission_id, job_id=None if submission_id else "02000000", metadata=meta,
                           status=status, message=f"job {submission_id}", start_time=None if start_s is None else start_s * 1000,
                           end_time=None)


class FakeJobs:
    """Stands in for the Ray Jobs HTTP service (JobSubmissionClient.list_jobs)."""

    def __init__(self, details: list[SimpleNamespace]):
        self.details = details

    def list_jobs(self) -> list[SimpleNamespace]:
        return list(self.details)


ADDR = "http://head:8265"
JOBS = FakeJobs([
    job("abl-20260101-100000", "abl-20260101-100000", 100, "STOPPED"),
    job("abl-20260101-100000-resume", "abl-20260101-100000", 200, "RUNNING", kind="resume"),
    job("abl-20260102-090000", "abl-20260102-090000", 50, "FAILED"),  # an older start despite the later id
    job("ablation-20260103-000000", "ablation-20260103-000000", 900),
    job("abl-big-20260104-000000", "abl-big-20260104-000000", 1000),
    job("raw-job", None, 5000),  # not a sweep: no sweep_id in its metadata
    job(None, None, 6000),  # submitted by a driver: no submission id
])


def test_sweep_jobs_by_sweep_id_keeps_launch_and_resume_oldest_first() -> None:
    found = sweep_jobs(JOBS, ADDR, "abl-20260101-100000")
    assert [(j.job_id, j.kind, j.status) for j in found] == [
        ("abl-20260101-100000", "launch", "STOPPED"), ("abl-20260101-100000-resume", "resume", "RUNNING")]
    assert all(isinstance(j, JobInfo) and j.sweep_id == "abl-20260101-100000" for j in found)
    assert found[0].start_time == 100.0 and found[0].end_time is None  # ms -> s
    assert found[0].output_root == "/shared/runs" and found[0].tracking_uri == "http://mlflow:5000"


def test_sweep_jobs_by_job_id() -> None:
    [found] = sweep_jobs(JOBS, ADDR, "abl-20260101-100000-resume")
    assert found.kind == "resume" and found.sweep_id == "abl-20260101-100000"


def test_sweep_jobs_by_name_is_the_latest_started_sweep_of_that_name() -> None:
    found = sweep_jobs(JOBS, ADDR, "abl")
    # abl-20260101-100000 started last (its resume at 200); ablation-* and abl-big-* are other names.
    assert {j.sweep_id for j in found} == {"abl-20260101-100000"}
    assert [j.start_time for j in found] == [100.0, 200.0]
    assert [j.sweep_id for j in sweep_jobs(JOBS, ADDR, "ablation")] == ["ablation-20260103-000000"]
    assert [j.sweep_id for j in sweep_jobs(JOBS, ADDR, "abl-big")] == ["abl-big-20260104-000000"]


def test_sweep_jobs_unknown_name_lists_the_known_sweeps() -> None:
    with pytest.raises(LaunchError) as info:
        sweep_jobs(JOBS, ADDR, "ab")
    message = str(info.value)
    assert message.startswith(f"no sweep 'ab' among the Ray jobs at {ADDR}; there are: ")
    assert "abl-20260101-100000, abl-20260102-090000, abl-big-20260104-000000, ablation-20260103-000000" in message
    assert "raw-job" not in message
    with pytest.raises(LaunchError, match=r"^no sweep 'x' among the Ray jobs at http://head:8265$"):
        sweep_jobs(FakeJobs([job("raw", None, 1)]), ADDR, "x")


def test_sweep_jobs_by_name_does_not_pick_a_sweep_named_name_dash_digit() -> None:
    # `abl-2` is a legal sweep name (NAME_PATTERN); `sweep status abl` must not show it.
    client = FakeJobs([job("abl-20260101-100000", "abl-20260101-100000", 100),
                       job("abl-2-20260105-000000", "abl-2-20260105-000000", 500)])
    assert [j.sweep_id for j in sweep_jobs(client, ADDR, "abl")] == ["abl-20260101-100000"]


def test_sweep_jobs_turns_a_refused_connection_into_one_line() -> None:
    class Down:
        def list_jobs(self):
            raise ConnectionError("Failed to connect to Ray at address: http://head:8265.")

    with pytest.raises(LaunchError) as info:
        sweep_jobs(Down(), ADDR, "abl")
    assert str(info.value).startswith(f"nothing answers at {ADDR}")
    assert "8265" in str(info.value) and "\n" not in str(info.value)


def test_call_lets_unrelated_errors_through() -> None:
    class Broken:
        def list_jobs(self):
            raise KeyError("bug in our code")

    with pytest.raises(KeyError):
        sweep_jobs(Broken(), ADDR, "abl")


def test_new_job_id_skips_taken_ids() -> None:
    client = FakeJobs([job("tiny-1", "tiny-1", 1), job("tiny-1-2", "tiny-1", 2), job(None, None, 3)])
    assert jobs.new_job_id(client, ADDR, "tiny-1") == "tiny-1-3"
    assert jobs.new_job_id(client, ADDR, "tiny-9") == "tiny-9"


# --- inside and outside a Ray trial ----------------------------------------------------------


@pytest.fixture
def no_ray_init(monkeypatch):
    """Record (and refuse) any ray.init, so a test never joins a cluster running on this machine."""
    import ray

    if ray.is_initialized():
        pytest.skip("needs a process without Ray")
    calls: list[tuple] = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise RuntimeError("ray.init refused by the test")

    monkeypatch.setattr(ray, "init", refuse)
    return calls


def test_trial_placement_outside_ray_is_empty(no_ray_init) -> None:
    assert cluster.trial_placement() == {}


def test_trial_placement_outside_ray_does_not_start_ray(no_ray_init, monkeypatch) -> None:
    import ray._private.auto_init_hook as hook

    monkeypatch.setattr(hook, "enable_auto_connect", True)  # Ray's default (RAY_ENABLE_AUTO_CONNECT unset)
    cluster.trial_placement()
    assert no_ray_init == []


# --- a private local Ray (one node) --------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    with private_ray(num_cpus=1) as ray:
        yield ray


def test_unshared_nodes_the_real_node_sees_the_probe(local_ray, tmp_path: Path) -> None:
    root = tmp_path / "shared" / "runs"
    nodes = local_ray.nodes()
    assert len(nodes) == 1
    assert cluster.unshared_nodes(root, nodes, timeout_s=60) == []
    assert root.is_dir() and list(root.iterdir()) == []  # the probe file is removed


def test_check_cluster_on_one_real_node(local_ray, tmp_path: Path) -> None:
    line = cluster.check_cluster(tmp_path, f"sqlite:///{tmp_path}/mlflow.db", True, cpu=1, gpu=0, max_concurrent=3)
    assert line.startswith("cluster: 1 node(s) hold 1 trial(s) of cpu=1 gpu=0 at once")
    assert line.endswith("search.max_concurrent=3: 2 of them wait for a slot")
    with pytest.raises(ClusterError, match=r"cpu=1 gpu=1 \(1 whole GPU\), but"):  # the node has no GPU
        cluster.check_cluster(tmp_path, "sqlite:///x.db", True, cpu=1, gpu=1, max_concurrent=1)


def test_trial_placement_inside_a_task(local_ray) -> None:
    placed = local_ray.get(local_ray.remote(num_cpus=0)(cluster.trial_placement).remote(), timeout=60)
    assert placed == {"trial_node_id": local_ray.get_runtime_context().get_node_id(), "trial_gpu_ids": ""}


def test_check_feasible_cpu_only_request_has_no_gpu_clause() -> None:
    with pytest.raises(ClusterError, match=r"^resources: a trial asks for cpu=4 gpu=0, but no node"):
        check_feasible(node_slots([node(cpu=2, gpu=0)], cpu=4, gpu=0), cpu=4, gpu=0)


def test_sweep_counts_reads_trial_states_from_mlflow_alone(tmp_path: Path) -> None:
    """`sweep status --address` where the sweep folder is not mounted: counts from the MLflow store."""
    from mlflow import MlflowClient

    from tuning.tracking import PARENT_TAG, STATE_TAG, SWEEP_ID_TAG, sweep_counts

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={SWEEP_ID_TAG: "s-20260101-000000"}).info.run_id
    other = client.create_run(exp, tags={SWEEP_ID_TAG: "t-20260101-000000"}).info.run_id
    runs = [("FINISHED", "COMPLETE"), ("FINISHED", "COMPLETE"), ("FINISHED", "PRUNED"), ("FAILED", "FAILED"),
            ("RUNNING", ""), ("KILLED", "")]
    for status, state in runs:
        run = client.create_run(exp, tags={SWEEP_ID_TAG: "s-20260101-000000", PARENT_TAG: parent, STATE_TAG: state})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status=status)
    done = client.create_run(exp, tags={SWEEP_ID_TAG: "t-20260101-000000", PARENT_TAG: other, STATE_TAG: "COMPLETE"})
    client.set_terminated(done.info.run_id, status="FINISHED")
    assert sweep_counts(uri, "s-20260101-000000") == {"COMPLETE": 2, "PRUNED": 1, "FAILED": 1, "RUNNING": 1, "KILLED": 1}
    assert sweep_counts(uri, "t-20260101-000000")["COMPLETE"] == 1


class _AgentLateClient:
    """A Jobs client whose head answers like Ray's before a dashboard agent has registered."""

    def __init__(self, refusals: int, message: str = "Request failed with status code 500: No available agent to submit job, "
                                                   "please try again later.."):
        self.refusals, self.message, self.submitted = refusals, message, []

    def submit_job(self, **kwargs: Any) -> str:
        if self.refusals > 0:
            self.refusals -= 1
            raise RuntimeError(self.message)
        self.submitted.append(kwargs["submission_id"])
        return kwargs["submission_id"]

    def get_job_info(self, job_id: str) -> Any:
        return SimpleNamespace(submission_id=job_id, status="PENDING", entrypoint="x", metadata={}, message="",
                               start_time=None, end_time=None, driver_info=None)


def test_submit_waits_for_a_late_dashboard_agent(monkeypatch, tmp_path: Path) -> None:
    """A fresh or loaded head refuses a submission (HTTP 500, no agent yet) before creating anything: ask again."""
    monkeypatch.setattr(jobs, "_runtime_env", lambda *a, **k: {})
    monkeypatch.setattr(jobs, "_info", lambda info: info)
    pauses: list[float] = []
    monkeypatch.setattr(jobs.time, "sleep", pauses.append)
    client = _AgentLateClient(refusals=2)
    info = jobs.submit_job(client, "http://127.0.0.1:8265", "sweep-1", "true", working_dir=tmp_path, output_root=tmp_path,
                           env={}, metadata={})
    assert client.submitted == ["sweep-1"] and info.submission_id == "sweep-1"
    assert pauses == [jobs.AGENT_RETRY_PAUSE_S] * 2


def test_submit_does_not_retry_other_refusals(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(jobs, "_runtime_env", lambda *a, **k: {})
    monkeypatch.setattr(jobs.time, "sleep", lambda s: pytest.fail("retried a refusal that is not about the agent"))
    client = _AgentLateClient(refusals=1, message="Request failed with status code 400: Job with submission_id sweep-1 already exists")
    with pytest.raises(RuntimeError, match="already exists"):
        jobs.submit_job(client, "http://127.0.0.1:8265", "sweep-1", "true", working_dir=tmp_path, output_root=tmp_path,
                        env={}, metadata={})
    assert client.submitted == []
