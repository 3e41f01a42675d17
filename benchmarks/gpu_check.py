"""One prepared GPU check (issue #24): the CUDA tests, two real GPU sweeps and their figures, in one command.

On one GPU machine, within a hard time budget (`--budget-s`, default 450 s,
so that a 600 s device call with the install in front still returns):

 1. the environment: Python, the versions of torch / Ray / Optuna / MLflow /
    pydantic, and every requirement of this repository, followed through the
    installed distributions' Requires-Dist, checked against the versions
    actually installed (what benchmarks/gpu_wheels.py could not verify);
 2. the CUDA tests: every test file under tests/ whose tests skip without
    CUDA (found by their `skipif(not torch.cuda.is_available()` mark, not
    listed by hand), run with pytest; passed / failed / skipped from its
    JUnit XML;
 3. two real `sweep launch` runs of the same GPU version of
    sweeps/examples/ablation_small.yaml (the B.2 CNN-F ablation, shrunk: see
    `gpu_spec`): "packed" with `resources.gpu 0.25` (4 trials at once on the
    GPU) and "serial" with `gpu 1` (one at a time). Same seed, same sampler
    and fifo scheduling (the spec's ASHA would stop trials depending on
    timing), so both train the same configurations. For each: trials per
    hour (finished trials over the window from the first trial's start to
    the last one's end, from the MLflow runs; and over the command's wall
    time), the GPU's utilisation and memory while it ran (`nvidia-smi` sampled
    every 500 ms in the background), each trial's peak memory (its MLflow
    metric `gpu_mem_peak_mib`, torch's peak reserved memory, and as a second
    source the largest `used_memory` nvidia-smi saw for any compute process),
    its share limit (fraction x the GPU's memory), and the MLflow store read
    back with mlflow's client: parent and child runs, and each child's
    `ray.gpu_ids`, `ray.trial_id` and `trial.state` tags;
 4. the targets (issue #24 part 3): every CUDA test passes; packed trials
    reach >= 2.5x the trials per hour of one trial per GPU; no trial exceeds
    its memory share.

Everything goes to `--out DIR/gpu_check.json` (rewritten after each phase, so
a run cut short still leaves what it measured), the CUDA tests' JUnit XML and
the nvidia-smi samples beside it. The sweeps' own folders and MLflow store go
to `--work` (default: a temporary folder, kept and named in the JSON).

    python3 benchmarks/gpu_check.py --out DIR               # on the GPU machine (benchmarks/gpu_check.sh installs first)
    .venv/bin/python benchmarks/gpu_check.py --dry-run --out DIR   # rehearsal on the CPU

`--dry-run` runs the same flow on the CPU: the CUDA tests are collected and
skip (it says so), no nvidia-smi (it says so), the sweeps are tiny (2
trials, 1 epoch, `resources.gpu 0`, 2 and 1 at a time) and the JSON is
marked `"dry_run": true`; its figures say nothing about any GPU. The
repository need not be pip-installed: the sweeps run as `python -m
sweeps.cli` with the repository put on PYTHONPATH, which the local Ray
instance and its workers inherit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))  # cnnf, for _host, when the repository is not installed

import yaml  # noqa: E402

from _host import print_host  # noqa: E402

BASE_SPEC = REPO / "sweeps" / "examples" / "ablation_small.yaml"
RESULT = "gpu_check.json"
JUNIT = "cuda_tests.xml"
SMI_SAMPLES = "nvidia_smi.csv"
CUDA_SKIP_MARK = re.compile(r"skipif\(\s*not\s+torch\.cuda\.is_available\(\)")
GPU_MEM_PEAK = "gpu_mem_peak_mib"  # the trial's metric (tuning.replicates.GPU_MEM_PEAK), read back from MLflow
GPU_IDS_TAG, TRIAL_ID_TAG, STATE_TAG, PARENT_TAG = "ray.gpu_ids", "ray.trial_id", "trial.state", "mlflow.parentRunId"
SPEEDUP_TARGET = 2.5
# Sizes of the two sweeps. GPU: 8 trials each; the serial sweep runs them one after the other and
# dominates the run (at ~10-20 s per trial on an H200, ~2-3 min; the packed one about half that).
GPU_SIZES = {"trials": 8, "epochs": 2, "n_train": 256, "replicates": 1}
DRY_SIZES = {"trials": 2, "epochs": 1, "n_train": 64, "replicates": 1}
# The dry run's evaluation, shrunk so that a CPU trial takes seconds (the GPU run keeps ablation_small's).
DRY_EVAL = {"pgd_steps": 2, "n_examples": 16, "checks": False, "eps_grid": []}
RESERVE_S = 25  # kept back from the budget for reading MLflow and writing the JSON


def now() -> float:
    return time.time()


# --------------------------------------------------------------------------- the environment


def environment() -> dict[str, Any]:
    """Python, PYTHONPATH and the versions of the packages this check depends on."""
    from importlib import metadata

    versions = {}
    for name in ("torch", "torchvision", "numpy", "ray", "optuna", "mlflow", "pydantic", "pytest", "packaging"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "executable": sys.executable, "pythonpath": os.environ.get("PYTHONPATH", ""),
            "versions": versions}


def requirement_check() -> dict[str, Any]:
    """Every requirement of pyproject.toml's dependencies, followed through the installed distributions'
    Requires-Dist (markers for this interpreter, the extras asked), against the installed versions."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    roots = [Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    pending: list[tuple[Requirement, str, frozenset[str]]] = [(r, "pyproject.toml", frozenset()) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    unmet: list[str] = []
    checked = 0
    while pending:
        req, owner, owner_extras = pending.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (owner_extras or {""})):
            continue
        checked += 1
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{owner} needs {req}: not installed")
            continue
        if not req.specifier.contains(dist.version, prereleases=True):
            unmet.append(f"{owner} needs {req.name}{req.specifier}: {dist.version} is installed ({dist._path})")  # type: ignore[attr-defined]
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        pending += [(Requirement(r), f"{req.name}=={dist.version}", frozenset(req.extras)) for r in dist.requires or []]
    return {"requirements_checked": checked, "unmet": sorted(set(unmet))}


def git_commit() -> Optional[str]:
    """The repository's commit (with "+dirty" if the working tree differs), or None without git or .git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def nvidia_smi(*query: str) -> Optional[list[list[str]]]:
    """Rows of one `nvidia-smi --query-...` call (CSV, no header, no units), or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    proc = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in proc.stdout.strip().splitlines() if line.strip()]


def gpu_info() -> dict[str, Any]:
    """The GPU as nvidia-smi and torch see it (empty values without either)."""
    import torch

    rows = nvidia_smi("--query-gpu=name,driver_version,memory.total")
    info: dict[str, Any] = {"nvidia_smi": rows is not None, "cuda_available": torch.cuda.is_available(),
                            "torch_cuda": torch.version.cuda}
    if rows:
        info |= {"name": rows[0][0], "driver": rows[0][1], "memory_total_mib": float(rows[0][2]), "count": len(rows)}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"torch_name": props.name, "torch_memory_total_mib": props.total_memory / 2**20,
                 "multiprocessors": props.multi_processor_count}
        info.setdefault("memory_total_mib", props.total_memory / 2**20)
    return info


# --------------------------------------------------------------------------- nvidia-smi sampling


@dataclass
class Sampler:
    """nvidia-smi in the background: the GPU's utilisation and memory every 500 ms (one `-lms` process)
    and the compute processes' memory every second; each sample stamped with time.time()."""

    out: Path
    gpu: list[tuple[float, float, float]] = field(default_factory=list)  # (t, util %, memory used MiB)
    apps: list[tuple[float, int, float]] = field(default_factory=list)  # (t, pid, used MiB)
    proc: Optional[subprocess.Popen[str]] = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> bool:
        if shutil.which("nvidia-smi") is None:
            return False
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                      "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.threads = [threading.Thread(target=self._read_gpu, daemon=True), threading.Thread(target=self._poll_apps, daemon=True)]
        for t in self.threads:
            t.start()
        return True

    def _read_gpu(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.gpu.append((now(), float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                continue  # "[N/A]" or a partial line

    def _poll_apps(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                rows = nvidia_smi("--query-compute-apps=pid,used_memory") or []
            except (OSError, subprocess.TimeoutExpired):
                continue
            t = now()
            for row in rows:
                try:
                    self.apps.append((t, int(row[0]), float(row[1])))
                except (ValueError, IndexError):
                    continue

    def stop(self) -> None:
        self.stop_event.set()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for t in self.threads:
            t.join(5)
        with self.out.open("w") as f:
            f.write("time,utilization_gpu_pct,memory_used_mib\n")
            f.writelines(f"{t:.3f},{u:g},{m:g}\n" for t, u, m in self.gpu)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """The samples between t0 and t1: mean and max utilisation, max memory, per-process max memory."""
        g = [(u, m) for t, u, m in self.gpu if t0 <= t <= t1]
        per_pid: dict[int, float] = {}
        for t, pid, used in self.apps:
            if t0 <= t <= t1:
                per_pid[pid] = max(per_pid.get(pid, 0.0), used)
        return {"samples": len(g),
                "util_mean_pct": sum(u for u, _ in g) / len(g) if g else None,
                "util_max_pct": max(u for u, _ in g) if g else None,
                "util_busy_share": sum(u > 0 for u, _ in g) / len(g) if g else None,
                "memory_used_max_mib": max(m for _, m in g) if g else None,
                "compute_apps_samples": sum(t0 <= t <= t1 for t, _, _ in self.apps),
                "compute_apps_max_mib": {str(pid): mem for pid, mem in sorted(per_pid.items())}}


# --------------------------------------------------------------------------- the CUDA tests


def cuda_test_files() -> list[Path]:
    """Every test file under tests/ with a `skipif(not torch.cuda.is_available()` mark."""
    return sorted(p for p in (REPO / "tests").rglob("test_*.py") if CUDA_SKIP_MARK.search(p.read_text()))


def run_cuda_tests(out: Path, timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    """Run the CUDA test files with pytest; counts from its JUnit XML."""
    files = cuda_test_files()
    junit = out / JUNIT
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "addopts=-ra",
           *[str(p.relative_to(REPO)) for p in files]]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout_s, 1))
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = None, f"timed out after {timeout_s:.0f} s: " + str(exc.stdout or "")[-2000:]
    result: dict[str, Any] = {"files": [str(p.relative_to(REPO)) for p in files], "returncode": rc,
                              "seconds": time.perf_counter() - t0, "output_tail": tail}
    if junit.exists():
        suites = ET.parse(junit).getroot()
        suites = suites.findall("testsuite") if suites.tag == "testsuites" else [suites]
        counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        failed = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
        skips = [c.find("skipped").get("message") or "" for s in suites for c in s.iter("testcase")  # type: ignore[union-attr]
                 if c.find("skipped") is not None]
        result |= counts | {"failed_tests": failed, "skip_reasons": sorted(set(skips)),
                            "skipped_for_cuda": sum("cuda" in m.lower() for m in skips)}
    return result


# --------------------------------------------------------------------------- the sweeps


def gpu_spec(name: str, gpu: float, cpu: float, concurrent: int, sizes: dict[str, int], dry_run: bool,
             time_s: float, base: Path = BASE_SPEC) -> dict[str, Any]:
    """ablation_small.yaml made into the check's sweep: the given resources and concurrency, device auto
    (cpu in the dry run), `sizes` (trials, epochs, n_train, replicates), fifo scheduling, a time budget."""
    spec = yaml.safe_load(base.read_text())
    spec["name"] = name
    spec["seed"] = 0
    b = spec["base"]
    b["data"]["n_train"] = sizes["n_train"]
    b["train"]["epochs"] = sizes["epochs"]
    b["train"]["device"] = "cpu" if dry_run else "auto"
    if dry_run:
        b["train"]["adv_steps"] = 1
        b["eval"] |= DRY_EVAL
    spec["search"] |= {"num_trials": sizes["trials"], "max_concurrent": concurrent, "replicates": sizes["replicates"]}
    spec["scheduler"] = {"name": "fifo"}  # the same work in both sweeps: ASHA's stops depend on timing
    spec["budget"] = {"time_s": max(1, int(time_s)), "max_failed_trials": sizes["trials"]}
    spec["resources"] = {"cpu": cpu, "gpu": gpu}
    spec.pop("output_dir", None)
    spec.pop("tracking", None)
    return spec


def run_sweep(label: str, spec: dict[str, Any], work: Path, deadline: float, env: dict[str, str], sampler: Optional[Sampler],
              gpu_fraction: float, gpu_memory_mib: Optional[float]) -> dict[str, Any]:
    """`python -m sweeps.cli launch` of `spec` under `work`, stopped (SIGINT, then SIGKILL) at `deadline`;
    then its MLflow runs, trials per hour and memory figures."""
    spec_file = work / f"{spec['name']}.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = work / "runs"
    log = work / f"{spec['name']}.log"
    cmd = [sys.executable, "-m", "sweeps.cli", "launch", str(spec_file), "-o", str(runs)]
    print(f"[{label}] sweep launch: {spec['search']['num_trials']} trials, {spec['search']['max_concurrent']} at a time, "
          f"resources {spec['resources']} (stops at the budget: {max(0, deadline - now()):.0f} s)", flush=True)
    t0 = now()
    stopped = None
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=max(1.0, deadline - now()))
        except subprocess.TimeoutExpired:
            stopped = "budget: SIGINT"
            os.killpg(proc.pid, signal.SIGINT)  # the sweep records its finished trials and closes the rest as KILLED
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stopped = "budget: SIGKILL"
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    t1 = now()
    tail = log.read_text()[-2500:]
    result: dict[str, Any] = {"label": label, "spec": spec, "returncode": proc.returncode, "stopped": stopped,
                              "wall_s": t1 - t0, "log": str(log), "output_tail": tail,
                              "gpu_fraction": gpu_fraction, "concurrent": spec["search"]["max_concurrent"]}
    result |= mlflow_figures(runs, spec["name"])
    done = result["finished_trials"]
    window = result.get("trial_window_s")
    result["trials_per_hour"] = done / window * 3600 if done and window else None
    result["trials_per_hour_wall"] = done / result["wall_s"] * 3600 if done else None
    share = gpu_fraction * gpu_memory_mib if gpu_memory_mib and gpu_fraction > 0 else None
    result["memory_share_mib"] = share
    peaks = [t[GPU_MEM_PEAK] for t in result["trials"] if t.get(GPU_MEM_PEAK) is not None]
    result["gpu_mem_peak_mib_max"] = max(peaks) if peaks else None
    result["trials_over_share"] = ([t["run_name"] for t in result["trials"] if t.get(GPU_MEM_PEAK) is not None and t[GPU_MEM_PEAK] > share]
                                   if share is not None and peaks else None)
    if sampler is not None:
        w0, w1 = (result["first_trial_start"], result["last_trial_end"]) if result.get("first_trial_start") else (t0, t1)
        result["nvidia_smi"] = sampler.window(w0, w1)
        apps = result["nvidia_smi"]["compute_apps_max_mib"]
        result["compute_apps_over_share"] = (sorted(pid for pid, mem in apps.items() if mem > share)
                                             if share is not None and apps else None)
    return result


def mlflow_figures(runs: Path, experiment: str) -> dict[str, Any]:
    """The sweep's MLflow store read back: parent and child runs, each child's tags, state, times and peak memory."""
    db = runs / "mlflow.db"
    if not db.exists():
        return {"mlflow_db": str(db), "mlflow_error": "no MLflow store was written", "parent_runs": 0, "child_runs": 0,
                "finished_trials": 0, "trials": []}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {"mlflow_db": str(db), "mlflow_error": f"no experiment {experiment!r}", "parent_runs": 0, "child_runs": 0,
                "finished_trials": 0, "trials": []}
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if PARENT_TAG not in r.data.tags]
    children = [r for r in all_runs if PARENT_TAG in r.data.tags]
    trials = []
    for r in sorted(children, key=lambda r: r.info.start_time or 0):
        tags = r.data.tags
        trials.append({"run_name": r.info.run_name, "status": r.info.status, "state": tags.get(STATE_TAG),
                       "ray_trial_id": tags.get(TRIAL_ID_TAG), "has_gpu_ids_tag": GPU_IDS_TAG in tags,
                       "gpu_ids": tags.get(GPU_IDS_TAG), "start": (r.info.start_time or 0) / 1e3,
                       "end": (r.info.end_time / 1e3) if r.info.end_time else None,
                       GPU_MEM_PEAK: r.data.metrics.get(GPU_MEM_PEAK),
                       "time_trial_s": r.data.metrics.get("time_trial_s"), "params": dict(r.data.params)})
    finished = [t for t in trials if t["status"] == "FINISHED" and t["state"] == "COMPLETE"]
    starts = [t["start"] for t in finished]
    ends = [t["end"] for t in finished if t["end"]]
    out: dict[str, Any] = {"mlflow_db": str(db), "experiment": experiment, "parent_runs": len(parents), "child_runs": len(children),
                           "finished_trials": len(finished), "trials": trials,
                           "children_with_gpu_ids_tag": sum(t["has_gpu_ids_tag"] for t in trials),
                           "children_with_trial_id_tag": sum(t["ray_trial_id"] is not None for t in trials),
                           "gpu_ids_seen": sorted({t["gpu_ids"] for t in trials if t["gpu_ids"] is not None}),
                           "parent_tags": {k: v for k, v in (parents[0].data.tags.items() if parents else [])
                                           if not k.startswith("mlflow.") or k == "mlflow.source.git.commit"}}
    if starts and ends:
        out |= {"first_trial_start": min(starts), "last_trial_end": max(ends), "trial_window_s": max(ends) - min(starts)}
    return out


# --------------------------------------------------------------------------- the whole check


def targets(result: dict[str, Any], dry_run: bool) -> dict[str, dict[str, Any]]:
    """The issue's three targets: passed (a bool, or None where this run cannot decide, with why), the value, the threshold."""
    t = result.get("cuda_tests", {})
    sweeps = result.get("sweeps", {})
    packed, serial = sweeps.get("packed", {}), sweeps.get("serial", {})
    out: dict[str, dict[str, Any]] = {}
    if dry_run or not result["gpu"].get("cuda_available"):
        why = "dry run: no GPU" if dry_run else "torch sees no CUDA device"
        out["cuda_tests_pass"] = {"passed": None, "why_none": why, "value": f"{t.get('skipped_for_cuda')} skipped for want of CUDA",
                                  "threshold": "all pass, none skipped for want of CUDA"}
    else:
        ok = (bool(t.get("tests")) and t.get("returncode") == 0 and t.get("failures") == 0 and t.get("errors") == 0
              and t.get("skipped_for_cuda") == 0)
        out["cuda_tests_pass"] = {"passed": ok, "value": f"{t.get('passed')}/{t.get('tests')} passed, "
                                  f"{t.get('skipped_for_cuda')} skipped for want of CUDA", "threshold": "all pass, none skipped for want of CUDA"}
    a, b = packed.get("trials_per_hour"), serial.get("trials_per_hour")
    ratio = a / b if a and b else None
    out["packed_speedup"] = {"value": ratio, "threshold": SPEEDUP_TARGET,
                             "passed": (ratio >= SPEEDUP_TARGET) if ratio is not None and not dry_run else None}
    if dry_run:
        out["packed_speedup"]["why_none"] = "dry run: CPU trials on this host say nothing about GPU packing"
    elif ratio is None:
        out["packed_speedup"]["why_none"] = "a sweep finished no trial"
    over = [s.get("trials_over_share") for s in (packed, serial)]
    if dry_run or any(o is None for o in over):
        out["no_trial_over_memory_share"] = {"passed": None, "value": None, "threshold": "peak <= fraction x GPU memory",
                                             "why_none": "dry run: no GPU memory" if dry_run else
                                             f"no {GPU_MEM_PEAK} metric in a sweep's MLflow runs"}
    else:
        out["no_trial_over_memory_share"] = {"passed": not any(over), "value": {"packed": over[0], "serial": over[1]},
                                             "threshold": "peak <= fraction x GPU memory"}
    return out


def write(out: Path, result: dict[str, Any]) -> None:
    (out / RESULT).write_text(json.dumps(result, indent=1, default=str) + "\n")


def fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, the tests' JUnit XML and the nvidia-smi samples")
    parser.add_argument("--work", type=Path, default=None, help="folder for the sweeps and their MLflow store (default: a new temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="the same flow on the CPU, tiny sweeps; the JSON says dry_run: true")
    parser.add_argument("--budget-s", type=float, default=450.0, help="hard limit for the whole check, seconds (default 450)")
    parser.add_argument("--trials", type=int, default=None, help=f"trials per sweep (default {GPU_SIZES['trials']}; dry run {DRY_SIZES['trials']})")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per trial (default {GPU_SIZES['epochs']}; dry run {DRY_SIZES['epochs']})")
    parser.add_argument("--n-train", type=int, default=None, help=f"training images per trial (default {GPU_SIZES['n_train']})")
    parser.add_argument("--replicates", type=int, default=None, help="seeds per trial (default 1; ablation_small.yaml has 2)")
    parser.add_argument("--packed-gpu", type=float, default=0.25, help="resources.gpu of the packed sweep (default 0.25)")
    parser.add_argument("--cpu", type=float, default=2.0, help="resources.cpu per trial on the GPU machine (default 2)")
    parser.add_argument("--tests-timeout-s", type=float, default=180.0, help="limit for the CUDA tests (default 180)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the CUDA tests")
    parser.add_argument("--skip-sweeps", action="store_true", help="leave out the two sweeps")
    args = parser.parse_args()

    started = now()
    deadline = started + args.budget_s
    if args.out.exists() and not args.out.is_dir():
        sys.exit(f"gpu_check: --out {args.out}: exists and is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    if not BASE_SPEC.is_file():
        sys.exit(f"gpu_check: {BASE_SPEC}: the sweep this check is built on is missing")
    if not 0 < args.packed_gpu < 1:
        sys.exit(f"gpu_check: --packed-gpu {args.packed_gpu}: a fraction of one GPU, 0 < f < 1")
    sizes = dict(DRY_SIZES if args.dry_run else GPU_SIZES)
    for key in ("trials", "epochs", "n_train", "replicates"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                sys.exit(f"gpu_check: --{key.replace('_', '-')} {value}: must be at least 1")
            sizes[key] = value
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)

    import torch

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    host = print_host(device)
    if not args.dry_run and not torch.cuda.is_available():
        print("WARNING: torch sees no CUDA device; the GPU sweeps will be refused (use --dry-run on a CPU machine)", flush=True)
    result: dict[str, Any] = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
                              "budget_s": args.budget_s, "sizes": sizes, "work": str(work), "commit": git_commit(), "host": host,
                              "environment": environment(), "gpu": gpu_info(), "skipped": {}}
    g = result["gpu"]
    print(f"GPU: {g.get('name', g.get('torch_name', 'none'))}, driver {g.get('driver', 'n/a')}, "
          f"{fmt(g.get('memory_total_mib'), '.0f')} MiB; torch {result['environment']['versions']['torch']} (CUDA {g['torch_cuda']})"
          + ("" if g["nvidia_smi"] else "; nvidia-smi: not found, no utilisation or per-process memory sampled"), flush=True)
    result["requirements"] = requirement_check()
    unmet = result["requirements"]["unmet"]
    print(f"requirements: {result['requirements']['requirements_checked']} checked, {len(unmet)} unmet", flush=True)
    for line in unmet:
        print(f"  unmet: {line}", flush=True)
    write(args.out, result)

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           # the sweeps run `python -m sweeps.cli` from the repository on PYTHONPATH (it need not be installed); the local
           # Ray instance and its workers inherit this environment
           "PYTHONPATH": os.pathsep.join([str(REPO), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])}

    if args.skip_tests:
        result["skipped"]["cuda_tests"] = "--skip-tests"
    else:
        files = cuda_test_files()
        print(f"CUDA tests: {len(files)} files ({', '.join(str(p.relative_to(REPO)) for p in files)})", flush=True)
        t = run_cuda_tests(args.out, min(args.tests_timeout_s, deadline - now() - RESERVE_S), env)
        result["cuda_tests"] = t
        line = f"CUDA tests: {t.get('passed')} passed, {t.get('failures')} failed, {t.get('errors')} errors, {t.get('skipped')} skipped of {t.get('tests')} in {t['seconds']:.0f} s"
        if t.get("skipped") and t.get("skip_reasons"):
            line += f" (skipped: {'; '.join(t['skip_reasons'])})"
        print(line, flush=True)
        for name in t.get("failed_tests", []):
            print(f"  failed: {name}", flush=True)
        write(args.out, result)

    sampler = Sampler(args.out / SMI_SAMPLES)
    if args.skip_sweeps:
        result["skipped"]["sweeps"] = "--skip-sweeps"
    else:
        if not sampler.start():
            sampler = None  # type: ignore[assignment]
            result["skipped"]["nvidia_smi"] = "nvidia-smi not found: no GPU utilisation or per-process memory"
            print("nvidia-smi: not found; GPU utilisation and per-process memory are not sampled", flush=True)
        memory = g.get("memory_total_mib")
        if args.dry_run:  # 2 cores here: the packed sweep runs 2 trials at once, the serial one 1
            plans = [("packed", 0.0, 1.0, 2), ("serial", 0.0, 1.0, 1)]
        else:
            plans = [("packed", args.packed_gpu, args.cpu, int(1 / args.packed_gpu + 1e-9)), ("serial", 1.0, args.cpu, 1)]
        result["sweeps"] = {}
        try:
            for i, (label, gpu, cpu, concurrent) in enumerate(plans):
                left = deadline - now() - RESERVE_S
                # the packed sweep gets 40 % of what is left; the serial one (about 4x as long) everything after it
                until = now() + (left * 0.4 if i == 0 else left)
                spec = gpu_spec(f"gpu-check-{label}", gpu, cpu, concurrent, sizes, args.dry_run, time_s=until - now() - 15)
                s = run_sweep(label, spec, work, until, env, sampler, gpu, memory)
                result["sweeps"][label] = s
                print(f"[{label}] {s['finished_trials']}/{sizes['trials']} trials finished in {s['wall_s']:.0f} s "
                      f"(exit {s['returncode']}{', ' + s['stopped'] if s['stopped'] else ''}); trials/hour "
                      f"{fmt(s['trials_per_hour'])} (window {fmt(s.get('trial_window_s'))} s), {fmt(s['trials_per_hour_wall'])} over the wall time; "
                      f"MLflow: {s['parent_runs']} parent, {s['child_runs']} child runs, {s.get('children_with_gpu_ids_tag', 0)} "
                      f"with {GPU_IDS_TAG} {s.get('gpu_ids_seen', [])}", flush=True)
                if sampler is not None:
                    w = s["nvidia_smi"]
                    print(f"[{label}] GPU utilisation mean {fmt(w['util_mean_pct'])} % (max {fmt(w['util_max_pct'])}), memory used max "
                          f"{fmt(w['memory_used_max_mib'], '.0f')} MiB, per-process max {w['compute_apps_max_mib'] or 'not listed'}", flush=True)
                peaks = [t[GPU_MEM_PEAK] for t in s["trials"] if t.get(GPU_MEM_PEAK) is not None]
                print(f"[{label}] peak memory per trial ({GPU_MEM_PEAK}): "
                      + (", ".join(f"{p:.0f}" for p in peaks) + f" MiB; share {fmt(s['memory_share_mib'], '.0f')} MiB" if peaks
                         else "not reported (no CUDA in the trials)"), flush=True)
                if s["returncode"] not in (0, None) and s["finished_trials"] == 0:
                    print(f"[{label}] the sweep failed; its log's end:\n{s['output_tail']}", flush=True)
                write(args.out, result)
        finally:
            if sampler is not None:
                sampler.stop()

    result["targets"] = targets(result, args.dry_run)
    result["wall_s"] = now() - started
    write(args.out, result)
    print(f"targets{' (dry run: not decided)' if args.dry_run else ''}:", flush=True)
    for name, t in result["targets"].items():
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["passed"]]
        print(f"  {name}: {verdict} (value {t['value'] if not isinstance(t['value'], float) else format(t['value'], '.2f')}, "
              f"target {t['threshold']}){' - ' + t['why_none'] if t.get('why_none') else ''}", flush=True)
    print(f"wrote {args.out / RESULT} ({result['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
