"""The files of a CNN-F evaluation's report, from hand-built reports."""

from __future__ import annotations

from pathlib import Path

from cnnf.report import AttackResult, Check, Curve, EvalReport
from cnnf.report_files import write_eval_report


def report(split: str, curves: bool) -> EvalReport:
    return EvalReport(
        split=split, n_examples=32, n_classes=10, n_iterations=2, prediction="avg", seeds=(0,),
        clean_acc=0.75, clean_std=0.0,
        attacks=(AttackResult("pgd_first", "pgd_linf", "first", "exact", 0.1, "linf", 0.25, 0.0, (0.25,), 1.5, 40.0),),
        min_acc=0.25, min_std=0.0,
        curves=(Curve("pgd_e2e", "pgd_linf", "avg", "linf", (0.0, 0.05, 0.1), (0.75, 0.5, 0.25), (0.0, 0.0, 0.0)),) if curves else (),
        checks=(Check(1, "gradients", "pass", "fine", (("ratio", 0.5),)),) if split == "val" else (),
        seconds=3.5,
    )


def test_evaluation_md_and_the_eps_curve(tmp_path: Path) -> None:
    write_eval_report(tmp_path, report("val", True), report("test", True), "cnnf ind=1")
    text = (tmp_path / "evaluation.md").read_text()
    assert text.startswith("# Robustness evaluation of cnnf ind=1\n")
    assert text.index("## Validation split") < text.index("### Integrity checks") < text.index("## Test split (reporting only)")
    assert (tmp_path / "accuracy_vs_eps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_curve_no_figure(tmp_path: Path) -> None:
    write_eval_report(tmp_path, report("val", False), report("test", False), "cnn")
    assert (tmp_path / "evaluation.md").exists() and not (tmp_path / "accuracy_vs_eps.png").exists()
