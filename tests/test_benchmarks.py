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
        [sys.executable, str(REPO / "benchmarks" / "cnnf_throughput.py"), "--precision", "fp32", "--seconds", "0.1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CNN-F/CNN time ratio" in proc.stdout
    figures = json.loads(out.read_text())
    rows = {r["what"]: r for r in figures["rows"]}
    assert set(rows) == {"CNN-F train", "CNN train", "CNN-F infer", "CNN infer"}
    # FLOPs per image are counted, not timed: CNN-F train (PGD-7 + 2B batch with
    # one feedback iteration) ~1.05 GFLOP, the plain CNN ~0.71, inference 0.092 / 0.036.
    assert rows["CNN-F train"]["gflop_per_image"] == pytest.approx(1.05, rel=0.02)
    assert rows["CNN train"]["gflop_per_image"] == pytest.approx(0.713, rel=0.02)
    assert rows["CNN-F infer"]["gflop_per_image"] == pytest.approx(0.092, rel=0.02)
    assert rows["CNN infer"]["gflop_per_image"] == pytest.approx(0.0357, rel=0.02)
    assert all(r["images_per_s"] > 0 for r in rows.values())


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
