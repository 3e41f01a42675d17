"""Running on a Ray cluster: authentication, multi-node checks, GPU packing.

Everything here fails before a sweep writes anything: a tracking URI or
an output folder the other nodes cannot reach, a trial no node can hold,
a token the cluster refuses. Messages are one line and say what to change.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_HELP = ("the cluster's token must be in ~/.ray/auth_token, in the file RAY_AUTH_TOKEN_PATH names, "
              "or in RAY_AUTH_TOKEN (copy it from the head node: `ray get-auth-token`)")


class ClusterError(RuntimeError):
    """The cluster cannot run this sweep as asked; the message says what to change."""


def use_token_auth() -> str:
    """Keep Ray's token authentication on for this process and the ones it starts.

    Ray 2.59+ turns token authentication on for a cluster that `ray.init`
    starts, but a process that connects to a cluster (`ray job submit`, a
    joining node, `ray.init(address=...)`) sends its token only when
    RAY_AUTH_MODE=token is set. An explicit user setting is respected.
    """
    if AUTH_MODE_ENV in os.environ:
        return os.environ[AUTH_MODE_ENV]
    os.environ[AUTH_MODE_ENV] = "token"
    if "ray._raylet" in sys.modules:  # Ray read its config at import: make it see the mode (as Ray's own opt-in does)
        from ray._raylet import Config

        Config.initialize("")
    return "token"


def is_dashboard(address: Optional[str]) -> bool:
    """A Ray dashboard (Jobs) address, http(s)://HEAD:8265, as opposed to a GCS or Ray Client address."""
    return bool(address) and address.startswith(("http://", "https://"))


def explain_ray_error(exc: BaseException, address: str) -> Optional[str]:
    """One line for a failure to reach or authenticate with a Ray cluster, or None."""
    from ray.exceptions import AuthenticationError

    mode = os.environ.get(AUTH_MODE_ENV, "unset")
    if isinstance(exc, AuthenticationError):
        first = str(exc.message if hasattr(exc, "message") else exc).strip().splitlines()[0]
        return f"the Ray cluster at {address} refused us ({first}; RAY_AUTH_MODE={mode}): {TOKEN_HELP}"
    if client_server_failed(exc):
        # Ray Client: the head's proxy answered but its per-client server did not start (or not in time).
        return (f"the Ray cluster at {address} accepted the Ray Client connection but could not start a client "
                f"server for us ({_last_line(exc)}); see ray_client_server*.err in the head node's Ray logs "
                f"(/tmp/ray/session_latest/logs), or join through the GCS address (HOST:6379) instead")
    if isinstance(exc, ConnectionError):
        return (f"cannot connect to the Ray cluster at {address} ({_last_line(exc)}): it is not running there, or "
                f"its token authentication refused us (RAY_AUTH_MODE={mode}; {TOKEN_HELP})")
    return None


def client_server_failed(exc: BaseException) -> bool:
    """Ray Client's error for a head that answered but could not start (in time) a server for this client."""
    return isinstance(exc, ConnectionAbortedError) and str(exc).startswith("Initialization failure from server")


def _last_line(exc: BaseException, limit: int = 200) -> str:
    """The most specific line of an exception's text (a server traceback ends with the error), shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- nodes and GPU packing -----------------------------------------------------------


@dataclass(frozen=True)
class NodeSlots:
    """How many trials of one resource request a node holds at once."""

    node_id: str
    ip: str
    cpus: float
    gpus: int  # whole GPUs on the node
    trials: int  # trials of the request that fit at once
    per_gpu: int  # trials sharing one GPU (0 without GPUs)


def node_slots(nodes: list[dict[str, Any]], cpu: float, gpu: float) -> list[NodeSlots]:
    """Trials per node for a request of `cpu` CPUs and `gpu` GPUs, GPU by GPU.

    Ray places a fractional request (gpu < 1) on one GPU: a GPU holds
    floor(1 / gpu) such trials, and what is left of it stays unused, so a
    node with 2 GPUs holds 4 trials of 0.4, not 5. A request of one or more
    GPUs takes whole GPUs. `nodes` are `ray.nodes()` entries.
    """
    out = []
    for n in nodes:
        if not n.get("Alive", True):
            continue
        res = n.get("Resources", {})
        cpus, gpus = float(res.get("CPU", 0)), int(res.get("GPU", 0) + 1e-9)
        by_cpu = math.floor(cpus / cpu + 1e-9)
        if gpu <= 0:
            per_gpu, by_gpu = 0, by_cpu
        elif gpu < 1:
            per_gpu = math.floor(1 / gpu + 1e-9)
            by_gpu = per_gpu * gpus
        else:
            per_gpu, by_gpu = 0, math.floor(gpus / gpu + 1e-9)
        out.append(NodeSlots(n.get("NodeID", "?"), n.get("NodeManagerAddress", "?"), cpus, gpus,
                             max(0, min(by_cpu, by_gpu)), per_gpu))
    return out


def check_feasible(slots: list[NodeSlots], cpu: float, gpu: float) -> None:
    """Fail, naming the request and every node, if no node can hold one trial."""
    if any(s.trials >= 1 for s in slots):
        return
    have = ", ".join(f"node {s.ip} ({s.node_id[:8]}): CPU={s.cpus:g} GPU={s.gpus}" for s in slots)
    need = "" if gpu == 0 else f" ({gpu:g} of one GPU)" if gpu < 1 else f" ({gpu:g} whole GPU{'' if gpu == 1 else 's'})"
    raise ClusterError(f"resources: a trial asks for cpu={cpu:g} gpu={gpu:g}{need}, but no node of the Ray cluster "
                       f"has that ({have})")


def describe_packing(slots: list[NodeSlots], cpu: float, gpu: float, max_concurrent: int) -> str:
    """One line on how the sweep's trials pack onto the cluster."""
    total = sum(s.trials for s in slots)
    parts = []
    for s in slots:
        if s.trials == 0:
            continue
        gpu_part = f", {s.per_gpu} per GPU on {s.gpus} GPUs" if s.per_gpu else (f" on {s.gpus} GPUs" if gpu > 0 else "")
        parts.append(f"{s.ip} {s.trials}{gpu_part}")
    line = (f"cluster: {len(slots)} node(s) hold {total} trial(s) of cpu={cpu:g} gpu={gpu:g} at once ({'; '.join(parts)}); "
            f"search.max_concurrent={max_concurrent}")
    if max_concurrent > total:
        line += f": {max_concurrent - total} of them wait for a slot"
    return line


# --- multi-node storage and tracking -----------------------------------------------------


def tracking_is_local(uri: str) -> bool:
    """A tracking URI that names a file on one machine (SQLite, file store, a path)."""
    lowered = uri.lower()
    if lowered.startswith(("sqlite:", "file:")):
        return True
    return "://" not in lowered and not lowered.startswith("databricks")  # a bare path


def check_tracking(uri: str, n_nodes: int, default: bool) -> None:
    if n_nodes > 1 and tracking_is_local(uri):
        what = f"the default {uri}" if default else uri
        raise ClusterError(
            f"tracking.uri: {what} is a file on one machine, but the Ray cluster has {n_nodes} nodes and every node must reach "
            "MLflow; run `mlflow server --backend-store-uri sqlite:///mlflow.db --host 0.0.0.0 --port 5000` on a machine "
            "they all reach and set tracking.uri: http://THAT_HOST:5000")


def _probe(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def unshared_nodes(root: Path, nodes: list[dict[str, Any]], timeout_s: float = 120.0) -> list[str]:
    """The nodes that cannot read a file written to `root` here.

    A small Ray task pinned to each node reads a probe file with a random
    token; a node that does not see it has `root` on local disk (or not at
    all). Returns 'ip (node id)' of each such node.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    probe = root / f".shared-storage-probe-{token[:8]}"
    probe.write_text(token)
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(_probe)
        alive = [n for n in nodes if n.get("Alive", True)]
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(probe), token)
                for n in alive]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        seen = [ray.get(ref) if ref in ready else False for ref in refs]  # a node that never answered counts as not seeing it
        return [f"{n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]})" for n, ok in zip(alive, seen) if not ok]
    finally:
        probe.unlink(missing_ok=True)


def check_storage(root: Path, nodes: list[dict[str, Any]]) -> None:
    """On a multi-node cluster, the sweep folder must be storage every node mounts at the same path."""
    alive = [n for n in nodes if n.get("Alive", True)]
    if len(alive) < 2:
        return
    created = not root.exists()
    missing = unshared_nodes(root, alive)
    if missing:
        if created:
            try:
                root.rmdir()
            except OSError:
                pass
        raise ClusterError(
            f"output_dir: {root} is not shared: node(s) {', '.join(missing)} of the {len(alive)}-node Ray cluster cannot see it (or did not answer within 2 min); "
            "trials checkpoint and share stages there, so on a multi-node cluster it must be storage every node mounts at "
            "the same path (NFS, a cloud file system)")


def check_cluster(root: Path, tracking_uri: str, tracking_default: bool, cpu: float, gpu: float,
                  max_concurrent: int) -> str:
    """Every check of a sweep against the connected Ray cluster; returns the packing line."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    slots = node_slots(nodes, cpu, gpu)
    check_feasible(slots, cpu, gpu)
    check_tracking(tracking_uri, len(nodes), tracking_default)
    check_storage(root, nodes)
    return describe_packing(slots, cpu, gpu, max_concurrent)


# --- inside a trial ----------------------------------------------------------------------


def trial_placement() -> dict[str, str]:
    """Where this trial runs: Ray node id and the GPUs Ray gave it (for the trial's MLflow tags)."""
    import ray

    if not ray.is_initialized():  # its calls below would start (or join) a Ray
        return {}
    try:
        ctx = ray.get_runtime_context()
        node = ctx.get_node_id()
        gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - outside Ray (a trainable called directly in a test)
        return {}
    return {"trial_node_id": node, "trial_gpu_ids": gpus}
