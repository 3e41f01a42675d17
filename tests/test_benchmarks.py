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
