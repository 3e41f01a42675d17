"""The benchmark scripts still run end to end (their figures are not asserted:
timings belong to benchmarks run alone, not to a test suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cnnf_throughput_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cnnf_throughput.py"), "--precision", "fp32", "--seconds", "0.1", "--peak-seconds", "0.2",
         "--kernels", "fused", "eager", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CNN-F/CNN time ratio" in proc.stdout
    figures = json.loads(out.read_text())
    both = figures["rows"]
    assert {(r["what"], r["precision"]) for r in both} == {
        (what, prec) for what in ("CNN-F train", "CNN train", "CNN-F infer", "CNN infer") for prec in ("fp32", "fp32+fused")}
    # x eager: each CNN-F row over this run's fp32 eager CNN-F row (1 for that row itself).
    by = {(r["what"], r["precision"]): r["images_per_s"] for r in both}
    assert figures["x_fp32_eager"] == pytest.approx({
        f"CNN-F {kind} {prec}": by[(f"CNN-F {kind}", prec)] / by[(f"CNN-F {kind}", "fp32")]
        for kind in ("train", "infer") for prec in ("fp32", "fp32+fused")})
    assert figures["x_fp32_eager"]["CNN-F train fp32"] == 1.0
    assert "x eager" in proc.stdout
    rows = {r["what"]: r for r in both if r["precision"] == "fp32"}
    # FLOPs per image are counted, not timed: CNN-F train (PGD-7 + 2B batch with
    # one feedback iteration) ~1.05 GFLOP, the plain CNN ~0.71, inference 0.092 / 0.036.
    assert rows["CNN-F train"]["gflop_per_image"] == pytest.approx(1.05, rel=0.02)
    assert rows["CNN train"]["gflop_per_image"] == pytest.approx(0.713, rel=0.02)
    assert rows["CNN-F infer"]["gflop_per_image"] == pytest.approx(0.092, rel=0.02)
    assert rows["CNN infer"]["gflop_per_image"] == pytest.approx(0.0357, rel=0.02)
    assert all(r["images_per_s"] > 0 for r in rows.values())


@pytest.mark.slow
def test_cnnf_step_breakdown_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "breakdown.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cnnf_step_breakdown.py"), "--precision", "fp32", "--kernels", "eager",
         "--steps", "1", "--peak-seconds", "0.2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GEMM ceiling" in proc.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["gflop_per_step"] == pytest.approx(1.05 * 64, rel=0.02)  # counted: the throughput row's FLOPs x batch 64
    ms = row["ms_per_step"]
    assert ms["GEMM"] > 0 and ms["rest"] > 0 and ms["fused kernels"] == 0  # eager: nothing compiled ran
    assert sum(ms.values()) == pytest.approx(row["profiled_step_ms"])
    assert row["ceiling_images_per_s"] == pytest.approx(64 / (ms["GEMM"] / 1e3))
    # The fused path: the C kernels run inside cnnf's autograd functions, whose time the group takes.
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cnnf_step_breakdown.py"), "--precision", "fp32", "--kernels", "fused",
         "--steps", "1", "--peak-seconds", "0.2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["kernels"] == "fused" and row["ms_per_step"]["fused kernels"] > 0


@pytest.mark.slow
def test_attack_suite_script_runs(tmp_path: Path) -> None:
    out = tmp_path / "attacks.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "attack_suite.py"), "--attacks", "fgsm", "pgd_linf",
         "--batch", "8", "--seconds", "0.1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every attack does its full work" in proc.stdout
    figures = json.loads(out.read_text())
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
        assert (r["batch"], r["norm"], r["eps_pixels"]) == (8, "linf", 0.1)
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
    script = str(REPO / "benchmarks" / "boundary_search.py")
    missing = subprocess.run([sys.executable, script, "--data-root", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, timeout=600, cwd=REPO)
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert "Traceback" not in missing.stderr and last.startswith("boundary_search: MNIST not found under root")
    assert str(tmp_path / "nowhere") in last
    root = _mnist_root()
    if root is None:
        pytest.skip("MNIST not found ($CNNF_DATA_ROOT or ../shared/datasets)")
    out = tmp_path / "boundary.json"
    s, d = 4, 4
    proc = subprocess.run(
        [sys.executable, script, "--data-root", str(root), "--samples", str(s), "--directions", str(d), "--naive-samples", "2",
         "--epochs", "1", "--n-train", "1000", "--reference-seconds", "0.1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "bitwise identical" in proc.stdout
    figures = json.loads(out.read_text())
    rows = {r["what"]: r for r in figures["rows"]}
    assert list(rows) == ["naive", "exact fp32", "exact bf16", "c2f fp32", "c2f bf16"]
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
    assert searches <= rows["exact bf16"]["forward_passes"] <= searches * max_steps
    for what in ("c2f fp32", "c2f bf16"):  # coarse points every 5th step, then at most 3 bisection steps
        assert searches <= rows[what]["forward_passes"] <= min(exact, searches * (5 + 3))
    assert rows["c2f fp32"]["agreement"]["searches"] == searches
    for what in ("exact bf16", "c2f fp32", "c2f bf16"):
        a = rows[what]["agreement"]
        assert 0.0 <= a["agreement_within_step"] <= a["adjacent_agreement"] <= 1.0
        assert a["missed_flips"] + a["extra_flips"] + a["other_class"] == a["adjacent_mismatches"]
    assert all(r["images_per_s"] > 0 and r["seconds_per_sample"] > 0 and r["speedup"] > 0 for r in rows.values())
    assert 0.0 <= figures["na_share"] <= 1.0 and sum(figures["adjacent_shares"].values()) == pytest.approx(1.0)
    assert figures["paper_scale"]["searches"] == 1500 * 784 * 2
    assert [(t["what"], t["speedup_target"]) for t in figures["targets"]] == [
        ("exact fp32", 2.0), ("exact bf16", 5.0), ("c2f fp32", 10.0), ("c2f bf16", 10.0)]
    assert all(isinstance(t["passed"], bool) for t in figures["targets"])
