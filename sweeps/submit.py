"""`sweep submit` and `sweep resume --address http://HEAD:8265`: a sweep as a Ray job.

The job runs this CLI on the head node (`python -m sweeps.cli launch ...
--address auto`) in a copy of the working directory that Ray uploads. What
can be checked from here is checked before anything is submitted: the
output folder is absolute (the job runs elsewhere), the spec is inside the
uploaded folder, a trial fits a node and the tracking store is one every
node reaches. The Ray Jobs calls themselves are `tuning.jobs`'s.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from tuning.config import SweepConfig
from tuning.jobs import DEFAULT_STOP_WAIT_S, TERMINAL, JobInfo, check_resources, job_client, new_job_id, submit_job, sweep_jobs
from tuning.folder import LaunchError

DRIVER = ("python", "-m", "sweeps.cli")  # `python` on the head node must have this package's dependencies


def _entry(*args: str) -> str:
    """The job's shell command: this CLI with `args`, each quoted."""
    return " ".join(shlex.quote(a) for a in [*DRIVER, *args])


def submit_sweep(cfg: SweepConfig, spec_path: Path, *, address: str, working_dir: Path, env: dict[str, str],
                 stop_wait_s: int = DEFAULT_STOP_WAIT_S) -> tuple[JobInfo, Any]:
    """Check what can be checked from here, then submit the sweep as a Ray job.
    Returns the job and its client (to wait for it)."""
    output_root = Path(cfg.output_dir)
    if not output_root.is_absolute():
        raise LaunchError(f"output_dir: {cfg.output_dir!r} is relative, but the job runs in a temporary copy of the working "
                          "directory on the head node: give an absolute path on storage every node mounts (--output-dir)")
    working_dir, spec_path = working_dir.resolve(), spec_path.resolve()
    if not working_dir.is_dir():
        raise LaunchError(f"--working-dir {working_dir}: not a folder")
    try:
        rel_spec = spec_path.relative_to(working_dir)
    except ValueError:
        raise LaunchError(f"{spec_path}: outside the working directory {working_dir} that is uploaded with the job; "
                          "run `sweep submit` from a folder holding the spec, or pass --working-dir") from None
    client = job_client(address)
    check_resources(address, cfg, output_root)
    job_id = new_job_id(client, address, f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    tracking = ["--tracking-uri", cfg.tracking.uri] if cfg.tracking.uri else []
    entrypoint = _entry("launch", str(rel_spec), "--address", "auto", "--output-dir", str(output_root), *tracking, "--sweep-id", job_id)
    metadata = {"sweep_id": job_id, "output_dir": str(output_root), "spec": str(rel_spec), "sweep_kind": "launch",
                "tracking_uri": cfg.tracking.uri or f"sqlite:///{output_root / 'mlflow.db'}"}
    job = submit_job(client, address, job_id, entrypoint, working_dir=working_dir, output_root=output_root, env=env,
                     metadata=metadata, stop_wait_s=stop_wait_s)
    return job, client


def submit_resume(name: str, *, address: str, working_dir: Path, env: dict[str, str],
                  stop_wait_s: int = DEFAULT_STOP_WAIT_S) -> tuple[JobInfo, Any]:
    """Submit a job that resumes a sweep an earlier job ran (after `sweep stop` or a crash)."""
    client = job_client(address)
    last = sweep_jobs(client, address, name)[-1]
    if last.status not in TERMINAL:
        raise LaunchError(f"sweep {last.sweep_id} is still running as Ray job {last.job_id} ({last.status}); `sweep stop` it first")
    job_id = new_job_id(client, address, f"{last.sweep_id}-resume")
    entrypoint = _entry("resume", last.sweep_id, "--output-dir", last.output_root, "--address", "auto")
    metadata = {"sweep_id": last.sweep_id, "output_dir": last.output_root, "sweep_kind": "resume",
                "tracking_uri": last.tracking_uri}
    job = submit_job(client, address, job_id, entrypoint, working_dir=working_dir.resolve(), output_root=Path(last.output_root),
                     env=env, metadata=metadata, stop_wait_s=stop_wait_s)
    return job, client
