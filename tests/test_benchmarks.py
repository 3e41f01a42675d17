"""The benchmark scripts still run end to end (their figures are not asserted:
timings belong to benchmarks run alone, not to a test suite).

Each runs with its small-work options (one timed call, tiny batches, a
256 x 256 matmul "peak"), so a test takes seconds of real work on any CPU:
every code path runs, and what is counted rather than timed (FLOPs, forward
passes, row sets) is asserted. bf16 rows run only where the CPU has native
bf16 (cnnf.runtime.native_bf16, which CNNF_NATIVE_BF16=0 turns off): the
expected rows follow that detection, so the tests hold under
`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 CNNF_NATIVE_BF16=0` too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnf.runtime import BF16_ENV, bf16_note, native_bf16

REPO = Path(__file__).resolve().parents[1]
# Small-work options: one timed call or step, no warm-up, tiny batches and peak matmul (see each script's docstring).
THROUGHPUT_SMOKE = ("--seconds", "0", "--min-rounds", "1", "--warmup", "0", "--peak-seconds", "0", "--peak-size", "256",
                    "--train-batch", "4", "--infer-batch", "8")
BREAKDOWN_SMOKE = ("--steps", "1", "--warmup", "0", "--batch", "4", "--peak-seconds", "0", "--peak-size", "256")
# A generous bound on a run with bf16 requested where it is emulated: before bf16 was skipped there,
# the bf16 matmul peaks alone made the fp32-only throughput smoke test take ~10 min on a 2-core AVX2
# host; the fp32 work left takes seconds. Guards that regression only; not a speed assertion.
EMULATED_BF16_BOUND_S = 120
# One OpenMP thread unless the caller's environment sets a count: on a shared 2-core machine two
# threads wait on each other at every op whenever another process holds a core (a batch-4 CNN-F
# training step took ~5 s instead of ~0.15 s), and these runs measure nothing that needs two.
SMOKE_ENV = {"OMP_NUM_THREADS": "1"}


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """(the finished process, its wall seconds) of benchmarks/<name> with args, run from the repository."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={**SMOKE_ENV, **os.environ, **(env or {})})
    return proc, time.perf_counter() - t0


def assert_host(stdout: str, figures: dict) -> None:
    """The host is named first in the output and stored in the JSON, with the ISA flags read from /proc/cpuinfo."""
    assert stdout.startswith("host: "), stdout[:300]
    host = figures["host"]
    assert host["cpu"] and host["cpu"] in stdout.splitlines()[0]
    if Path("/proc/cpuinfo").exists():
        assert set(host["isa"]) == {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
    assert host["native_bf16"] == native_bf16("cpu")


def assert_bf16_skipped(stdout: str, figures: dict) -> None:
    """The reason is printed once and recorded in the JSON."""
    reason = figures["skipped"]["bf16"]
    assert reason.startswith(bf16_note("cpu"))
    assert stdout.count(reason) == 1 and "--force-bf16" in reason


@pytest.mark.slow
def test_cnnf_throughput_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc, _ = run_script("cnnf_throughput.py", "--precision", "fp32", "bf16", *THROUGHPUT_SMOKE,
                         "--kernels", "fused", "eager", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CNN-F/CNN time ratio" in proc.stdout
    figures = json.loads(out.read_text())
    assert_host(proc.stdout, figures)
    # bf16 rows where this CPU runs bf16 natively; elsewhere skipped, with the reason.
    precisions = ("fp32", "bf16") if native_bf16("cpu") else ("fp32",)
    if "bf16" not in precisions:
        assert_bf16_skipped(proc.stdout, figures)
    else:
        assert figures["skipped"] == {}
    assert set(figures["peak_gflops"]) == set(precisions) and all(v > 0 for v in figures["peak_gflops"].values())
    both = figures["rows"]
    assert {(r["what"], r["precision"]) for r in both} == {
        (what, p + kernels) for what in ("CNN-F train", "CNN train", "CNN-F infer", "CNN infer")
        for p in precisions for kernels in ("", "+fused")}
    # x eager: each CNN-F row over this run's fp32 eager CNN-F row (1 for that row itself).
    by = {(r["what"], r["precision"]): r["images_per_s"] for r in both}
    assert figures["x_fp32_eager"] == pytest.approx({
        f"CNN-F {kind} {p + kernels}": by[(f"CNN-F {kind}", p + kernels)] / by[(f"CNN-F {kind}", "fp32")]
        for kind in ("train", "infer") for p in precisions for kernels in ("", "+fused")})
    assert figures["x_fp32_eager"]["CNN-F train fp32"] == 1.0
    assert "x eager" in proc.stdout
    # Only ratios measured in this run: no reference figure from another machine, quoted or scaled.
    assert "x ref" not in proc.stdout and "x quoted" not in proc.stdout
    assert not any(key.startswith("reference") for key in figures)
    rows = {r["what"]: r for r in both if r["precision"] == "fp32"}
    # FLOPs per image are counted, not timed (and do not depend on the batch): CNN-F train (PGD-7 +
    # 2B batch with one feedback iteration) ~1.05 GFLOP, the plain CNN ~0.71, inference 0.092 / 0.036.
    assert rows["CNN-F train"]["gflop_per_image"] == pytest.approx(1.05, rel=0.02)
    assert rows["CNN train"]["gflop_per_image"] == pytest.approx(0.713, rel=0.02)
    assert rows["CNN-F infer"]["gflop_per_image"] == pytest.approx(0.092, rel=0.02)
    assert rows["CNN infer"]["gflop_per_image"] == pytest.approx(0.0357, rel=0.02)
    assert all(r["images_per_s"] > 0 for r in rows.values())
    assert (figures["train_batch"], figures["infer_batch"]) == (4, 8)


@pytest.mark.slow
def test_cnnf_throughput_skips_emulated_bf16(tmp_path: Path) -> None:
    """Where bf16 would be emulated (forced here with CNNF_NATIVE_BF16=0), asking for bf16 rows
    gives the fp32 rows only, the reason printed once and recorded, and no bf16 matmul peak."""
    out = tmp_path / "throughput.json"
    proc, seconds = run_script("cnnf_throughput.py", "--precision", "fp32", "bf16", *THROUGHPUT_SMOKE,
                               "--kernels", "eager", "--json", str(out), env={BF16_ENV: "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["host"]["native_bf16"] is False and figures["host"]["env"][BF16_ENV] == "0"
    reason = figures["skipped"]["bf16"]
    assert "no native bf16" in reason and "--force-bf16" in reason
    assert proc.stdout.count(reason) == 1
    assert {r["precision"] for r in figures["rows"]} == {"fp32"} and len(figures["rows"]) == 4
    assert set(figures["peak_gflops"]) == {"fp32"}
    # bf16 appears only in the host line (its flags) and the skip line: no bf16 row, peak or ratio.
    assert [line for line in proc.stdout.splitlines() if "bf16" in line and not line.startswith(("host: ", "skipped: "))] == []
    assert seconds < EMULATED_BF16_BOUND_S, f"{seconds:.0f} s: the emulated bf16 work was not skipped?"


@pytest.mark.slow
def test_bf16_accuracy_refuses_emulated_bf16(tmp_path: Path) -> None:
    """bf16 is that script's whole purpose: where it is emulated it exits at once with status 1,
    one line on stderr and the reason in the JSON, before loading any data."""
    out = tmp_path / "bf16.json"
    proc, seconds = run_script("bf16_accuracy.py", "--data-root", str(tmp_path / "nowhere"), "--json", str(out),
                               env={BF16_ENV: "0"})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    figures = json.loads(out.read_text())
    assert line == f"bf16_accuracy: nothing measured: {figures['skipped']['bf16']}"
    assert "no native bf16" in line and "--force-bf16" in line
    assert figures["host"]["native_bf16"] is False
    assert seconds < EMULATED_BF16_BOUND_S  # it trained nothing (three trainings would take many minutes)


@pytest.mark.slow
def test_cnnf_step_breakdown_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "breakdown.json"
    # Eager, bf16 requested where it is emulated (forced): the fp32 row only, the skip recorded.
    proc, seconds = run_script("cnnf_step_breakdown.py", "--precision", "fp32", "bf16", "--kernels", "eager",
                               *BREAKDOWN_SMOKE, "--json", str(out), env={BF16_ENV: "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GEMM ceiling" in proc.stdout
    figures = json.loads(out.read_text())
    reason = figures["skipped"]["bf16"]
    assert "no native bf16" in reason and proc.stdout.count(reason) == 1
    assert set(figures["peak_gflops"]) == {"fp32"}
    assert seconds < EMULATED_BF16_BOUND_S, f"{seconds:.0f} s: the emulated bf16 work was not skipped?"
    (row,) = figures["rows"]
    assert row["precision"] == "fp32" and row["batch"] == 4
    assert row["gflop_per_step"] == pytest.approx(1.05 * 4, rel=0.02)  # counted: the throughput row's FLOPs x batch 4
    ms = row["ms_per_step"]
    assert ms["GEMM"] > 0 and ms["rest"] > 0 and ms["fused kernels"] == 0  # eager: nothing compiled ran
    assert sum(ms.values()) == pytest.approx(row["profiled_step_ms"])
    assert row["ceiling_images_per_s"] == pytest.approx(4 / (ms["GEMM"] / 1e3))
    # Ratios of this run only: the ceilings over the measured step, the GEMMs over the measured peak.
    assert row["ceiling_x_step"] == pytest.approx(row["ceiling_images_per_s"] / row["images_per_s"])
    assert row["gemm_share_of_peak"] == pytest.approx(row["gemm_gflop_per_s"] / figures["peak_gflops"]["fp32"])
    assert row["ceiling_at_peak_images_per_s"] == pytest.approx(4 / (row["gflop_per_step"] / figures["peak_gflops"]["fp32"]))
    assert not any("x_ref" in key for key in row) and "x ref" not in proc.stdout  # no scaled reference figure
    # The fused path: the C kernels run inside cnnf's autograd functions, whose time the group takes;
    # bf16 too where this CPU runs it natively.
    proc, _ = run_script("cnnf_step_breakdown.py", "--precision", "fp32", "bf16", "--kernels", "fused", *BREAKDOWN_SMOKE,
                         "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert_host(proc.stdout, figures)
    precisions = ["fp32", "bf16"] if native_bf16("cpu") else ["fp32"]
    assert [r["precision"] for r in figures["rows"]] == precisions and set(figures["peak_gflops"]) == set(precisions)
    assert ("bf16" in figures["skipped"]) == (precisions == ["fp32"])
    for row in figures["rows"]:
        assert row["kernels"] == "fused" and row["ms_per_step"]["fused kernels"] > 0
        assert row["gflop_per_step"] == pytest.approx(1.05 * 4, rel=0.02)  # bf16 does the same FLOPs


@pytest.mark.slow
def test_attack_suite_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "attacks.json"
    # --seconds 0: one timed call per row; 2 images per call (the work per image is what is counted).
    proc, _ = run_script("attack_suite.py", "--attacks", "fgsm", "pgd_linf", "--batch", "2", "--seconds", "0", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every attack does its full work" in proc.stdout
    figures = json.loads(out.read_text())
    assert_host(proc.stdout, figures)
    assert figures["early_stop"] is False
    assert figures["weights"] == {"cnnf_fmnist_adv": None, "cnn_fmnist_adv": None}
    rows = {(r["model"], r["target"], r["attack"]): r for r in figures["rows"]}
    assert set(rows) == {
        ("cnnf_fmnist_adv", "first", "fgsm"), ("cnnf_fmnist_adv", "first", "pgd_linf"),
        ("cnnf_fmnist_adv", "e2e", "fgsm"), ("cnnf_fmnist_adv", "e2e", "pgd_linf"),
        ("cnnf_fmnist_adv", "e2e_bpda", "pgd_linf"),
        ("cnn_fmnist_adv", "first", "fgsm"), ("cnn_fmnist_adv", "first", "pgd_linf"),
    }
    # Work is counted, not timed: no example is ever fooled, so FGSM makes one
    # gradient forward per image and PGD-40 forty, plus one final scoring forward.
    for (_, _, attack), r in rows.items():
        steps = 1 if attack == "fgsm" else 40
        assert r["settings"] == f"steps={steps} restarts=1"
        assert r["grad_forward_per_image"] == steps
        assert r["forward_per_image"] == steps + (attack == "pgd_linf")
        assert (r["batch"], r["norm"], r["eps_pixels"], r["calls"]) == (2, "linf", 0.1, 1)
        assert r["images_per_s"] > 0 and r["forward_equivalents"] > 0
    assert {(f["model"], f["target"]) for f in figures["forward"]} == {
        ("cnnf_fmnist_adv", "first"), ("cnnf_fmnist_adv", "e2e"), ("cnnf_fmnist_adv", "e2e_bpda"),
        ("cnn_fmnist_adv", "first")}


def _mnist_root() -> Path | None:
    import os

    for c in (os.environ.get("CNNF_DATA_ROOT"), "/work/shared/datasets", str(REPO.parent / "shared" / "datasets")):
        if c and (Path(c) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            return Path(c)
    return None


@pytest.mark.slow
def test_boundary_search_script_runs(tmp_path: Path) -> None:
    missing, _ = run_script("boundary_search.py", "--data-root", str(tmp_path / "nowhere"))
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert "Traceback" not in missing.stderr and last.startswith("boundary_search: MNIST not found under root")
    assert str(tmp_path / "nowhere") in last
    root = _mnist_root()
    if root is None:
        pytest.skip("MNIST not found ($CNNF_DATA_ROOT or ../shared/datasets)")
    out = tmp_path / "boundary.json"
    s, d = 4, 4
    proc, _ = run_script("boundary_search.py", "--data-root", str(root), "--samples", str(s), "--directions", str(d),
                         "--naive-samples", "2", "--epochs", "1", "--n-train", "1000", "--reference-seconds", "0", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "bitwise identical" in proc.stdout
    figures = json.loads(out.read_text())
    assert_host(proc.stdout, figures)
    rows = {r["what"]: r for r in figures["rows"]}
    # The bf16 rows run where this CPU has native bf16; elsewhere they are skipped, with the reason.
    bf16 = native_bf16("cpu")
    assert list(rows) == (["naive", "exact fp32", "exact bf16", "c2f fp32", "c2f bf16"] if bf16 else ["naive", "exact fp32", "c2f fp32"])
    if bf16:
        assert figures["skipped"] == {}
    else:
        assert_bf16_skipped(proc.stdout, figures)
    searches, max_steps = s * 2 * d, figures["settings"]["max_steps"]
    assert max_steps == 25 and figures["settings"]["naive_samples"] == 2
    assert 0.0 < figures["model"]["test_accuracy"] <= 1.0
    # Work is counted, not timed: the exact scan does the naive loop's forward passes (1 to 25 per search).
    assert figures["exact_identical_to_naive"] is True
    assert figures["naive_mismatches"] == {"margin": 0, "adjacent": 0}
    assert figures["naive_forward_passes_match_exact"] and figures["exact_forward_passes_match_margins"]
    assert rows["naive"]["samples"] == 2 and 2 * 2 * d <= rows["naive"]["forward_passes"] <= 2 * 2 * d * max_steps
    exact = rows["exact fp32"]["forward_passes"]
    assert searches <= exact <= searches * max_steps
    assert figures["naive_on_all_samples"]["forward_passes"] == exact
    assert rows["exact fp32"]["agreement"]["adjacent_agreement"] == 1.0
    assert rows["exact fp32"]["agreement"]["margin_exact_share"] == 1.0
    if bf16:
        assert searches <= rows["exact bf16"]["forward_passes"] <= searches * max_steps
    for what in {"c2f fp32", "c2f bf16"} & set(rows):  # coarse points every 5th step, then at most 3 bisection steps
        assert searches <= rows[what]["forward_passes"] <= min(exact, searches * (5 + 3))
    assert rows["c2f fp32"]["agreement"]["searches"] == searches
    for what in {"exact bf16", "c2f fp32", "c2f bf16"} & set(rows):
        a = rows[what]["agreement"]
        assert 0.0 <= a["agreement_within_step"] <= a["adjacent_agreement"] <= 1.0
        assert a["missed_flips"] + a["extra_flips"] + a["other_class"] == a["adjacent_mismatches"]
    assert all(r["images_per_s"] > 0 and r["seconds_per_sample"] > 0 and r["speedup"] > 0 for r in rows.values())
    assert 0.0 <= figures["na_share"] <= 1.0 and sum(figures["adjacent_shares"].values()) == pytest.approx(1.0)
    assert figures["paper_scale"]["searches"] == 1500 * 784 * 2
    assert [(t["what"], t["speedup_target"]) for t in figures["targets"]] == [
        (what, target) for what, target in (("exact fp32", 2.0), ("exact bf16", 5.0), ("c2f fp32", 10.0), ("c2f bf16", 10.0))
        if what in rows]
    assert all(isinstance(t["passed"], bool) for t in figures["targets"])


# ---------------------------------------------------------------- the GPU check (issue #24)


def _gpu_wheels():
    """benchmarks/gpu_wheels.py as a module (it needs only packaging and the standard library)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_wheels
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return gpu_wheels


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal wheel: only its METADATA, which is all the closure reads."""
    import zipfile

    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_gpu_wheels_closure_follows_markers_extras_and_the_preinstalled_list(tmp_path: Path) -> None:
    """The closure takes a wheel for each requirement not preinstalled, follows `extra` requirements only
    for the extras asked, evaluates markers for CPython 3.12 on Linux, and the check reports a
    preinstalled package whose known version is outside a specifier, and one met by neither."""
    from packaging.requirements import Requirement

    g = _gpu_wheels()
    _fake_wheel(tmp_path, "alpha", "1.0", ["beta>=2", "gamma; extra == 'fast'", "delta; extra == 'docs'",
                                             "winonly; sys_platform == 'win32'", "old; python_version < '3.12'", "torch>=2.4"])
    _fake_wheel(tmp_path, "beta", "2.1", ["numpy<3"])
    _fake_wheel(tmp_path, "gamma", "0.5", [])
    pre = {"torch": "2.11.0", "numpy": None}
    roots = [Requirement("alpha[fast]==1.0")]
    wheels, notes = g.resolve(roots, pre, tmp_path, {"alpha": "1.0", "beta": "2.1", "gamma": "0.5"}, download=False, log=lambda *a: None)
    assert set(wheels) == {"alpha", "beta", "gamma"} and notes == []  # no delta (extra not asked), winonly, old; torch, numpy preinstalled
    assert wheels["alpha"].extras == {"fast"} and wheels["beta"].needed_by == {"alpha==1.0"}
    problems, unverified = g.check(roots, wheels, pre)
    assert problems == [] and unverified == ["beta==2.1 needs numpy<3 (preinstalled, version unknown here)"]
    problems, _ = g.check(roots + [Requirement("torch>=2.12"), Requirement("nowhere")], wheels, pre)
    assert problems == ["pyproject.toml needs torch>=2.12, the machine has 2.11.0 (carry a wheel: take torch off gpu_preinstalled.txt)",
                        "pyproject.toml needs nowhere: neither a wheel of the set nor preinstalled"]
    with pytest.raises(g.ClosureError, match=r"no wheel for delta==1\.0"):  # without --download nothing is fetched
        g.resolve([Requirement("delta")], pre, tmp_path, {"delta": "1.0"}, download=False, log=lambda *a: None)


def test_gpu_wheels_preinstalled_list_is_parsed_and_bad_input_is_one_line(tmp_path: Path) -> None:
    g = _gpu_wheels()
    pre = g.read_preinstalled(g.PREINSTALLED)
    # the device notes' list: torch and numpy there (with the versions KINDS.md gives), Ray, Optuna, MLflow, pydantic not
    assert pre["torch"] == "2.11.0" and pre["numpy"] == "2.5.2" and "pyyaml" in pre and "typer" in pre
    assert not {"ray", "optuna", "mlflow", "pydantic"} & set(pre)
    bad = tmp_path / "pre.txt"
    bad.write_text("torch\nnot a name!\n")
    with pytest.raises(g.ClosureError, match=r"pre\.txt:2: expected NAME or NAME==VERSION"):
        g.read_preinstalled(bad)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_wheels.py"), "--unpack", str(tmp_path / "site"),
                           "--parts-from", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gpu_wheels: --unpack") and f"no manifest.json in {tmp_path / 'nowhere'}" in line


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py --dry-run: the whole flow on the CPU, run from outside the repository with
    no PYTHONPATH (the script puts the repository there for the sweeps and their Ray workers). About
    45 s on 2 cores: two real 2-trial sweeps, each starting its own Ray."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | SMOKE_ENV | {"RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--work", str(work), "--budget-s", "300"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads((out / "gpu_check.json").read_text())
    assert proc.stdout.startswith("host: ") and figures["host"]["cpu"] in proc.stdout.splitlines()[0]
    assert figures["dry_run"] is True and figures["sizes"] == {"trials": 2, "epochs": 1, "n_train": 64, "replicates": 1}
    assert figures["requirements"]["unmet"] == [] and figures["requirements"]["requirements_checked"] > 50
    # The CUDA tests are found by their skip mark, run, and skip here for want of CUDA (saying so).
    t = figures["cuda_tests"]
    assert {"tests/cnnf/test_cuda.py", "tests/cnnf/attacks/test_cuda.py"} <= set(t["files"])
    assert t["failures"] == t["errors"] == 0 and t["returncode"] == 0
    import torch

    if not torch.cuda.is_available():
        assert t["skipped_for_cuda"] == t["skipped"] > 0 and "needs a CUDA device" in t["skip_reasons"]
        assert f"{t['skipped']} skipped of {t['tests']}" in proc.stdout
    if shutil.which("nvidia-smi") is None:
        assert "nvidia-smi: not found" in proc.stdout and "nvidia_smi" in figures["skipped"]
    # Two real sweeps, read back from their MLflow store: 1 parent and 2 finished children each, every child tagged.
    for label, concurrent in (("packed", 2), ("serial", 1)):
        s = figures["sweeps"][label]
        assert s["returncode"] == 0 and s["stopped"] is None, s["output_tail"]
        assert s["spec"]["resources"] == {"cpu": 1.0, "gpu": 0.0} and s["spec"]["search"]["max_concurrent"] == concurrent
        assert s["spec"]["scheduler"] == {"name": "fifo"} and s["spec"]["base"]["train"]["device"] == "cpu"
        assert (s["parent_runs"], s["child_runs"], s["finished_trials"]) == (1, 2, 2)
        assert s["children_with_gpu_ids_tag"] == s["children_with_trial_id_tag"] == 2 and s["gpu_ids_seen"] == [""]
        assert {tr["state"] for tr in s["trials"]} == {"COMPLETE"}
        assert 0 < s["trial_window_s"] <= s["wall_s"]
        assert s["trials_per_hour"] == pytest.approx(2 / s["trial_window_s"] * 3600)
        assert s["trials_per_hour_wall"] == pytest.approx(2 / s["wall_s"] * 3600)
        # no CUDA in the trials: no peak memory metric, no share to exceed
        assert s["gpu_mem_peak_mib_max"] is None and s["memory_share_mib"] is None and s["trials_over_share"] is None
        assert f"[{label}] 2/2 trials finished" in proc.stdout
    # Same seed and fifo: both sweeps trained the same configurations.
    params = {label: sorted(json.dumps(tr["params"], sort_keys=True) for tr in figures["sweeps"][label]["trials"])
              for label in ("packed", "serial")}
    assert params["packed"] == params["serial"] and all("train.clean_coef" in p for p in params["packed"])
    tg = figures["targets"]
    assert set(tg) == {"cuda_tests_pass", "packed_speedup", "no_trial_over_memory_share"}
    assert all(v["passed"] is None and v["why_none"].startswith("dry run") for v in tg.values())
    packed, serial = (figures["sweeps"][k]["trials_per_hour"] for k in ("packed", "serial"))
    assert tg["packed_speedup"]["value"] == pytest.approx(packed / serial) and tg["packed_speedup"]["threshold"] == 2.5
    assert 0 < figures["wall_s"] <= 300


@pytest.mark.slow
def test_robustness_tables_script_runs(tmp_path: Path) -> None:
    """Every table of the robustness page, at toy size: the AutoAttack rows with the Min without them and the
    gap, for the Fashion-MNIST models and the feedback-learning models (MNIST)."""
    out = tmp_path / "robustness"
    proc, _ = run_script("robustness_tables.py", "--n-train", "200", "--epochs", "1", "--n-eval", "8", "--pgd-steps", "2",
                         "--seeds", "0", "--apgd-steps", "3", "--square-queries", "10", "--fl-n-train", "1500",
                         "--fl-epochs", "2", "--fl-samples", "20", "--fl-directions", "4", "--fl-n-eval", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (out / "results.md").read_text()
    figures = json.loads((out / "reports.json").read_text())
    assert_host(proc.stdout, figures)
    fl_models = ("Ori (MNIST)", "FL (MNIST)", "Reduced FL (FL's total) (MNIST)")
    for name in ("CNN", "CNN-F (last)", "CNN-F (avg)", *fl_models):
        report = figures[name]
        labels = {a["label"] for a in report["attacks"]}
        assert {"apgd_ce/e2e", "apgd_t/e2e", "square/e2e"} <= labels, (name, labels)
        assert report["min_acc_no_aa"] is not None and report["min_acc"] <= report["min_acc_no_aa"], name
    assert {"apgd_ce/first", "apgd_t/e2e_bpda"} <= {a["label"] for a in figures["CNN-F (avg)"]["attacks"]}
    assert figures["FL CNN"]["min_acc_no_aa"] is None, "the FL suite runs none of AutoAttack's attacks"
    assert len(re.findall(r"^\| Min without APGD and Square +\|", page, re.M)) == 2
    assert len(re.findall(r"^\| Gap \(points\) +\|", page, re.M)) == 2
    assert "## The feedback-learning models: AutoAttack's attacks" in page and re.search(r"\| +Reduced FL \(FL's total\) \|", page)
    assert (out / "accuracy_vs_eps.png").stat().st_size > 0


@pytest.mark.slow
def test_fl_small_script_runs(tmp_path: Path) -> None:
    """The feedback-learning comparison end to end at toy size: every model, its searches (the original's
    directions, held-out, unclipped), the FL attack suite, the tables, figures and results.json."""
    out = tmp_path / "fl"
    proc, _ = run_script("fl_small.py", "--n-train", "1500", "--epochs", "2", "--retrain-epochs", "1", "--adv-epochs", "1",
                         "--samples", "20", "--directions", "4", "--n-eval", "16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads((out / "results.json").read_text())
    assert_host(proc.stdout, figures)
    models = ("original", "continued", "adv", "adv_light", "fl", "reduced_fl", "reduced_fl_paper")
    assert set(models) <= set(figures)
    for k in models:
        report = figures[k]["report"]
        assert report["n_examples"] == 16 and 0 <= report["min_acc"] <= report["clean_acc"] <= 1, k
        assert {"fgsm", "pgd_linf", "cw_l2"} <= {a["label"] for a in report["attacks"]}, k
        assert figures[k]["margins"] is not None, f"{k}: searched on the original's samples"
    for k in ("original", "fl", "reduced_fl", "adv"):
        assert figures[k]["margins_heldout"] is not None, f"{k}: held-out directions"
    for k in ("original", "fl"):
        assert figures[k]["margins_unclipped"] is not None, f"{k}: the unclipped ablation"
    assert figures["fl"]["n_generated"] > 0 and figures["reduced_fl_paper"]["n_generated"] >= figures["reduced_fl"]["n_generated"]
    page = (out / "results.md").read_text()
    for heading in ("## Accuracy under the FL attack suite", "## The paper's MNIST numbers beside these",
                    "## N/A share clipped and unclipped", "## Integrity checks: FL"):
        assert heading in page, heading
    for png in ("margin_heatmap", "class_robustness", "class_robustness_heldout", "class_centres", "fgsm_curve",
                "uniform_noise_curve", "gaussian_noise_curve"):
        assert (out / f"{png}.png").stat().st_size > 0, png
