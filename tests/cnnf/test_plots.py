"""Accuracy-vs-eps figure: a real PNG of the right size, and a clear error without curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image
import pytest

from cnnf.plots import accuracy_vs_eps
from cnnf.report import Curve, EvalReport

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def report(curves: tuple[Curve, ...]) -> EvalReport:
    return EvalReport(split="test", n_examples=100, n_classes=10, n_iterations=1, prediction="avg", seeds=(0, 1),
                      clean_acc=0.9, clean_std=0.0, attacks=(), min_acc=0.5, min_std=0.0, curves=curves, checks=(),
                      seconds=1.0)


def curve(label: str, attack: str, std: float) -> Curve:
    eps = (0.0, 0.05, 0.1, 0.2)
    return Curve(label=label, attack=attack, target="first", norm="linf", eps=eps,
                 acc=(0.9, 0.7, 0.5, 0.2), std=tuple(std for _ in eps))


def test_accuracy_vs_eps_writes_a_png(tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    reports = [("CNN", report((curve("fgsm/first", "fgsm", 0.0),))),
               ("CNN-F", report((curve("fgsm/first", "fgsm", 0.02), curve("pgd_linf/first", "pgd_linf", 0.01))))]
    out = accuracy_vs_eps(reports, tmp_path / "figs" / "acc.png", title="Fashion-MNIST")
    assert out == tmp_path / "figs" / "acc.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(out)
    assert image.shape == (480, 640, 4)  # 6.4 x 4.8 in at 100 dpi, RGBA
    assert image[..., :3].min() < 0.5  # something was drawn on the white background
    assert matplotlib.get_backend() == backend  # no global backend switch


def test_accuracy_vs_eps_without_curves_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no accuracy-vs-eps curves .*\(CNN, CNN-F\)"):
        accuracy_vs_eps([("CNN", report(())), ("CNN-F", report(()))], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
