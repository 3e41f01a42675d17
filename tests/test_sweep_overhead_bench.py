"""benchmarks/sweep_overhead.py still runs end to end in its smoke mode and
prints its table with figures (the targets are not asserted: timings belong to
a benchmark run alone, not to a noisy CI machine)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d+(?:\.\d+)?"


@pytest.mark.slow
def test_sweep_overhead_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        # One workload (the cpu-bound one, which also checks the compute figures): each
        # sweep starts its own Ray, and the trivial workload only takes 0 matmuls through the same code.
        # ~45 s on 2 cores, nearly all of it what the benchmark measures: two fresh Ray sessions
        # (ray.init ~5 s each), a worker process per trial that imports torch, the driver's warmed
        # imports (~6 s); the trials' own work is 4 x 0.5 s per engine.
        [sys.executable, str(REPO / "benchmarks" / "sweep_overhead.py"), "--quick", "--workloads", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,  # not the repo: the Ray workers must not need it as cwd
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # One table row per engine (and workload): trials done, concurrency, then nine figures and a verdict.
    row = re.compile(rf"^(ours|baseline)\s+(trivial|cpu)\s+(\d+)/(\d+)\s+(\d+)((?:\s+{NUMBER}){{9}})\s+(PASS|FAIL\([a-z,]+\))\s*$", re.M)
    found = {(m[1], m[2]): m for m in row.finditer(proc.stdout)}
    assert set(found) == {("ours", "cpu"), ("baseline", "cpu")}, proc.stdout[-3000:]
    for m in found.values():
        assert m[3] == m[4] == "4"  # every trial of the smoke sweep finished
        wall, wall_init, compute, *_ = (float(v) for v in m[6].split())
        assert 0 < wall <= wall_init
        assert compute >= 0
    assert "ovh/trial s" in proc.stdout and "cores busy %" in proc.stdout
    assert re.search(rf"cpu: baseline / ours overhead per trial = {NUMBER} / {NUMBER} = {NUMBER}x", proc.stdout)

    figures = json.loads(out.read_text())
    # The host is named first (read before torch is imported, whose import time is a figure).
    assert proc.stdout.startswith("host: ") and figures["host"]["cpu"] in proc.stdout.splitlines()[0]
    assert figures["host"]["cpus"] == os.cpu_count()
    rows = {(r["engine"], r["workload"]): r for r in figures["rows"]}
    assert set(rows) == set(found)
    for (engine, workload), r in rows.items():
        assert r["finished"] == r["trials"] == 4 and r["concurrency"] >= 1
        for key in ("wall_s", "ray_init_s", "overhead_per_trial_s", "driver_cpu_s", "window_s", "cores_busy", "trial_compute_share"):
            assert math.isfinite(r[key]), (engine, workload, key)
        assert 0 <= r["cores_busy"] <= 1.5 and 0 <= r["machine_busy"] <= 1.0 + 1e-6
        # the trials' own compute, as reported through the engine, matches what they wrote to their probe files
        assert r["compute_s"] == pytest.approx(r["compute_probe_s"], rel=1e-6, abs=1e-6)
        if workload == "cpu":
            assert r["compute_s"] > 0.5  # four trials of ~0.5 s CPU each (loose: a noisy machine)
