"""Sweeps as Ray jobs: submit, status, logs, stop and resume through a
cluster's dashboard address (http://HEAD:8265).

A job runs the entrypoint its caller gives (the `sweep` CLI's launch or
resume, sweeps/submit.py) on the head node, in a copy of the working
directory that Ray uploads (outputs, virtual environments and the git folder
left out). Its runtime environment sets the stop signal
to SIGINT, so `sweep stop` lets Tune save its state and close the MLflow
runs before Ray's deadline; `sweep resume NAME --address ...` submits a job
that continues it. The job's submission id is the sweep id, so the MLflow
parent run, the sweep folder and the Ray job share one name.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tuning.cluster import ClusterError, check_feasible, check_tracking, explain_ray_error, is_dashboard, node_slots, use_token_auth
from tuning.config import SweepConfig
from tuning.folder import JOB_ID_ENV, JOBS_ADDRESS_ENV, STARTED_MARK, LaunchError, find_sweep, is_launch_of

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Never uploaded with the working directory (Ray also honours .gitignore there).
EXCLUDES = [".git", ".venv", "venv", "runs", "mlruns", "mlartifacts", "*.db", "__pycache__", ".pytest_cache",
            "*.egg-info", ".ray_*"]
DEFAULT_STOP_WAIT_S = 120  # SIGINT, then this long for Tune to save its state, then SIGKILL


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    sweep_id: str
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str
    output_root: str  # the folder holding the sweep folder, on the cluster's shared storage
    tracking_uri: str
    start_time: Optional[float]  # seconds since the epoch
    end_time: Optional[float]
    kind: str  # launch | resume


def _check_address(address: str) -> None:
    if not is_dashboard(address):
        raise LaunchError(f"--address {address}: expected the cluster's dashboard address, e.g. http://HEAD:8265 "
                          "(Ray Jobs); `sweep launch --address` joins a cluster by its GCS address instead")


def _call(address: str, fn: Callable[[], Any]) -> Any:
    """Run a Jobs API call; a refused token or an unreachable dashboard becomes one line."""
    from ray.exceptions import AuthenticationError

    try:
        return fn()
    except AuthenticationError as exc:
        raise LaunchError(explain_ray_error(exc, address)) from None
    except Exception as exc:  # noqa: BLE001 - the HTTP client's connection errors are not builtin ConnectionErrors
        if not isinstance(exc, ConnectionError) and "connect" not in str(exc).lower():
            raise
        raise LaunchError(f"nothing answers at {address}: is the Ray head node running with its dashboard there "
                          "(`ray start --head --dashboard-host=0.0.0.0`), and is the address the dashboard's (port 8265)?") from None


def job_client(address: str) -> Any:
    import logging

    from ray.job_submission import JobSubmissionClient

    _check_address(address)
    # Ray logs each ignored file and default exclude of the upload at INFO/WARNING.
    for name in ("ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir", "ray.dashboard.modules.dashboard_sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)
    use_token_auth()
    return _call(address, lambda: JobSubmissionClient(address))


def _info(details: Any) -> JobInfo:
    meta = details.metadata or {}
    ms = (lambda t: t / 1000 if t else None)
    return JobInfo(details.submission_id or details.job_id, meta.get("sweep_id", details.submission_id or ""), str(details.status),
                   details.message or "", meta.get("output_dir", ""), meta.get("tracking_uri", ""),
                   ms(details.start_time), ms(details.end_time), meta.get("sweep_kind", "launch"))


def sweep_jobs(client: Any, address: str, name: str) -> list[JobInfo]:
    """The jobs of a sweep (by sweep id, or by name: its latest launch), oldest first."""
    jobs = [_info(j) for j in _call(address, client.list_jobs) if (j.metadata or {}).get("sweep_id")]
    mine = [j for j in jobs if j.sweep_id == name or j.job_id == name]
    if not mine:  # a sweep name: the latest sweep of that name
        named = [j for j in jobs if is_launch_of(j.sweep_id, name)]
        if named:
            latest = max(named, key=lambda j: j.start_time or 0).sweep_id
            mine = [j for j in named if j.sweep_id == latest]
    if not mine:
        known = sorted({j.sweep_id for j in jobs})
        raise LaunchError(f"no sweep {name!r} among the Ray jobs at {address}" + (f"; there are: {', '.join(known)}" if known else ""))
    return sorted(mine, key=lambda j: j.start_time or 0)


def _latest(address: str, name: str) -> tuple[Any, JobInfo]:
    """The Jobs client and the sweep's latest job."""
    client = job_client(address)
    return client, sweep_jobs(client, address, name)[-1]


def latest_job(address: str, name: str) -> JobInfo:
    return _latest(address, name)[1]


def _nodes(address: str) -> list[dict[str, Any]]:
    """The cluster's alive nodes as `ray.nodes()` entries, through the dashboard."""
    from ray.util.state import list_nodes

    nodes = _call(address, lambda: list_nodes(address=address, detail=True, raise_on_missing_output=False))
    return [{"NodeID": n.node_id, "NodeManagerAddress": n.node_ip, "Alive": n.state == "ALIVE", "Resources": n.resources_total or {}}
            for n in nodes if n.state == "ALIVE"]


def _runtime_env(working_dir: Path, output_root: Path, job_id: str, env: dict[str, str], stop_wait_s: int,
                 address: str) -> dict[str, Any]:
    import os

    excludes = list(EXCLUDES)
    try:
        excludes.append("/" + str(output_root.resolve().relative_to(working_dir.resolve())))  # outputs under the working directory
    except ValueError:
        pass
    env_vars = {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": str(stop_wait_s), JOB_ID_ENV: job_id, JOBS_ADDRESS_ENV: address,
                "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0"), "PYTHONUNBUFFERED": "1",
                **env}
    if "RAY_AUTH_MODE" in os.environ:  # the driver's own connection uses the mode the submitter uses
        env_vars.setdefault("RAY_AUTH_MODE", os.environ["RAY_AUTH_MODE"])
    return {"working_dir": str(working_dir), "excludes": excludes, "env_vars": env_vars}


def new_job_id(client: Any, address: str, base: str) -> str:
    """`base`, or `base-2`, `base-3`, ... if a job of the cluster has it."""
    taken = {j.submission_id for j in _call(address, client.list_jobs)}
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def submit_job(client: Any, address: str, job_id: str, entrypoint: str, *, working_dir: Path, output_root: Path,
               env: dict[str, str], metadata: dict[str, str], stop_wait_s: int = DEFAULT_STOP_WAIT_S) -> JobInfo:
    """Submit `entrypoint` (the shell command the head node runs) as Ray job
    `job_id` (from `new_job_id`) with the sweep's runtime environment.
    metadata: the sweep's (sweep_id, output_dir, tracking_uri, sweep_kind),
    what `sweep status` and `sweep resume` read back."""
    runtime_env = _runtime_env(working_dir, output_root, job_id, env, stop_wait_s, address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            _call(address, lambda: client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                                                    metadata=metadata))
            break
        except RuntimeError as exc:  # the head refused before creating the job: asking again is safe
            if NO_AGENT not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(AGENT_RETRY_PAUSE_S)
    return _info(_call(address, lambda: client.get_job_info(job_id)))


# A head whose nodes' dashboard agents have not registered yet (a cluster just
# started, or one under load) answers a submission with HTTP 500 "No available
# agent to submit job, please try again later" before creating anything.
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 60.0
AGENT_RETRY_PAUSE_S = 2.0


def check_resources(address: str, cfg: SweepConfig, output_root: Path) -> None:
    """Refuse (LaunchError) a sweep the cluster cannot run: a trial that fits
    no node, or a tracking store the nodes cannot share."""
    nodes = _nodes(address)
    try:
        check_feasible(node_slots(nodes, cfg.resources.cpu, cfg.resources.gpu), cfg.resources.cpu, cfg.resources.gpu)
        check_tracking(cfg.tracking.uri or f"sqlite:///{output_root / 'mlflow.db'}", len(nodes), cfg.tracking.uri is None)
    except ClusterError as exc:
        raise LaunchError(str(exc)) from None


def _error_line(logs: str) -> str:
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    return lines[-1] if lines else "no output"


def wait_started(client: Any, address: str, job: JobInfo, timeout_s: float) -> JobInfo:
    """Wait until the job's driver has created the sweep (its folder and MLflow
    runs), or failed before that; a failure raises with the driver's error line."""
    deadline = time.monotonic() + timeout_s
    while True:
        details = _info(_call(address, lambda: client.get_job_info(job.job_id)))
        logs = _call(address, lambda: client.get_job_logs(job.job_id))
        if STARTED_MARK in logs:
            return details
        if details.status in TERMINAL:
            raise LaunchError(f"Ray job {job.job_id} ended ({details.status}) before the sweep started: {_error_line(logs)}")
        if time.monotonic() > deadline:
            return details
        time.sleep(1.0)


def follow_logs(client: Any, address: str, job_id: str, write: Callable[[str], None] = sys.stdout.write) -> JobInfo:
    """Stream the job's logs until it ends; returns its final state."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    _call(address, lambda: asyncio.run(tail()))
    return _info(_call(address, lambda: client.get_job_info(job_id)))


def print_logs(address: str, name: str, follow: bool = False, write: Callable[[str], None] = sys.stdout.write) -> None:
    """The logs of the sweep's latest job so far, or (follow) streamed until it ends."""
    client, job = _latest(address, name)
    if follow:
        follow_logs(client, address, job.job_id, write)
    else:
        write(_call(address, lambda: client.get_job_logs(job.job_id)))


def stop_job(address: str, name: str, wait_s: float = 0.0) -> JobInfo:
    """Ask Ray to stop the sweep's running job: SIGINT to the driver, which
    saves Tune's state and closes the runs; SIGKILL after the job's wait."""
    client, job = _latest(address, name)
    if job.status in TERMINAL:
        raise LaunchError(f"sweep {job.sweep_id}: its Ray job {job.job_id} is not running ({job.status})")
    _call(address, lambda: client.stop_job(job.job_id))
    deadline = time.monotonic() + wait_s
    while True:
        job = _info(_call(address, lambda: client.get_job_info(job.job_id)))
        if job.status in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(1.0)


def local_folder(job: JobInfo) -> Optional[Path]:
    """The sweep's folder if this machine sees the cluster's shared storage."""
    try:
        return find_sweep(job.sweep_id, Path(job.output_root)) if job.output_root else None
    except LaunchError:
        return None
