"""Markdown tables of evaluation reports, on hand-built reports with known numbers."""

from __future__ import annotations

from typing import Optional

import pytest

from cnnf.report import AttackResult, Check, EvalReport
from cnnf.tables import checks_table, cnnf_table, fl_table


def result(attack: str, target: str, acc: float, std: float = 0.0, gates: str = "exact",
           eps: Optional[float] = 0.1, norm: str = "linf") -> AttackResult:
    return AttackResult(label=f"{attack}/{target}" + ("_bpda" if gates == "bpda" else ""), attack=attack, target=target,
                        gates=gates, eps=eps, norm=norm, acc=acc, std=std, per_seed=(acc,), seconds=1.0, images_per_s=100.0)


def report(prediction: str, clean: float, attacks: tuple[AttackResult, ...], min_acc: float, *, clean_std: float = 0.0,
           min_std: float = 0.0, checks: tuple[Check, ...] = (), seeds: tuple[int, ...] = (0,)) -> EvalReport:
    return EvalReport(split="test", n_examples=1000, n_classes=10, n_iterations=0 if prediction == "first" else 1,
                      prediction=prediction, seeds=seeds, clean_acc=clean, clean_std=clean_std, attacks=attacks,
                      min_acc=min_acc, min_std=min_std, curves=(), checks=checks, seconds=10.0)


def cnnf_avg(clean: float, pgd_first: float, pgd_e2e: float, checks: tuple[Check, ...] = ()) -> EvalReport:
    return report("avg", clean, (
        result("pgd_linf", "first", pgd_first),
        result("pgd_linf", "avg", 0.10, gates="bpda"),  # must not be taken for the exact e2e column
        result("pgd_linf", "avg", pgd_e2e),
        result("spsa", "first", 0.88),
        result("spsa", "avg", 0.89),
        result("transfer", "first", 0.83),
    ), min(pgd_first, pgd_e2e), checks=checks)


def row_cells(table: str, name: str) -> list[str]:
    """The cells of the table row starting with `name`, stripped."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r} in\n{table}")


def test_cnnf_table_mean_and_std_across_training_seeds() -> None:
    reports = [cnnf_avg(0.90, 0.79, 0.80), cnnf_avg(0.89, 0.80, 0.81), cnnf_avg(0.88, 0.81, 0.79)]
    table = cnnf_table([("CNN-F (avg)", reports)])
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Model", "Clean", "PGD (first)", "PGD (e2e)", "SPSA (first)", "SPSA (e2e)", "Transfer", "Min"]
    assert set(lines[1]) <= {"|", "-", ":", " "}
    # Clean 0.90, 0.89, 0.88: mean 89.00, sample std 1.00; PGD e2e 0.80 0.81 0.79: the bpda result is ignored.
    assert row_cells(table, "CNN-F (avg)") == [
        "89.00 ± 1.00", "80.00 ± 1.00", "80.00 ± 1.00", "88.00 ± 0.00", "89.00 ± 0.00", "83.00 ± 0.00", "79.33 ± 0.58"]


def test_cnnf_table_single_report_uses_its_own_std_and_marks_missing_columns() -> None:
    r = report("last", 0.8977, (result("pgd_linf", "first", 0.7955, 0.0031), result("pgd_linf", "last", 0.7989, 0.0012)),
               0.7901, clean_std=0.0025, min_std=0.004, seeds=(0, 1, 2))
    cells = row_cells(cnnf_table([("CNN-F (last)", [r])]), "CNN-F (last)")
    assert cells == ["89.77 ± 0.25", "79.55 ± 0.31", "79.89 ± 0.12", "–", "–", "–", "79.01 ± 0.40"]


def test_cnnf_table_plain_cnn_shows_the_first_pass_result_in_both_columns() -> None:
    cnn = report("first", 0.8997, (result("pgd_linf", "first", 0.7709), result("spsa", "first", 0.8733)), 0.7709)
    cells = row_cells(cnnf_table([("CNN", [cnn])]), "CNN")
    assert cells[1] == cells[2] == "77.09 ± 0.00"
    assert cells[3] == cells[4] == "87.33 ± 0.00"
    assert cells[5] == "–"


def test_cnnf_table_e2e_matches_the_scored_prediction() -> None:
    """A report scoring "avg" whose e2e attack targeted "last" has no e2e column (the reference's mismatch)."""
    r = report("avg", 0.9, (result("pgd_linf", "first", 0.8), result("pgd_linf", "last", 0.7)), 0.7)
    assert row_cells(cnnf_table([("CNN-F (avg)", [r])]), "CNN-F (avg)")[1:3] == ["80.00 ± 0.00", "–"]


def test_cnnf_table_partial_rows_say_how_many_reports_had_the_attack() -> None:
    with_spsa = cnnf_avg(0.9, 0.8, 0.8)
    without = report("avg", 0.9, (result("pgd_linf", "first", 0.78),), 0.78)
    cells = row_cells(cnnf_table([("CNN-F", [with_spsa, without])]), "CNN-F")
    assert cells[1] == "79.00 ± 1.41"
    assert cells[3] == "88.00 ± 0.00 (1 of 2)"


def test_cnnf_table_legend_and_flagged_checks() -> None:
    flag = Check(8, "e2e vs first", "flag", "e2e 80.0 % > first 79.0 %: gradient masking?", (("gap", 0.01),))
    ok = Check(1, "large budget", "pass", "acc 0.0 % at eps 0.5")
    rows = [("CNN", [report("first", 0.9, (result("pgd_linf", "first", 0.77),), 0.77, checks=(ok,))]),
            ("CNN-F (avg)", [cnnf_avg(0.9, 0.79, 0.80, checks=(ok, flag)), cnnf_avg(0.9, 0.79, 0.80)])]
    table = cnnf_table(rows)
    assert "Budget L∞ ε = 0.1 (ε in [0, 1] pixel units)" in table
    assert "1000 test examples; mean ± std over CNN: 1 attack seed, CNN-F (avg): 2 training seeds" in table
    flagged = [line for line in table.splitlines() if line.startswith("⚠")]
    assert flagged == ["⚠ CNN-F (avg) (report 1 of 2): check 8 e2e vs first: e2e 80.0 % > first 79.0 %: gradient masking?"]


def test_cnnf_table_legend_quotes_cifar_budget_as_fraction_and_only_table_attacks() -> None:
    r = report("avg", 0.8, (result("pgd_linf", "first", 0.48, eps=8 / 255), result("cw_l2", "avg", 0.1, eps=None, norm="l2")), 0.1)
    table = cnnf_table([("CNN-F", [r])])
    assert "⚠" not in table
    assert "Budget L∞ ε = 8/255 (ε in [0, 1] pixel units)" in table  # CW is no column here: not in the legend


def fl_report(clean: float, accs: dict[str, float]) -> EvalReport:
    norms = {"cw_l2": ("l2", None), "deepfool": ("l2", None), "gaussian_noise": ("l2", 2.0)}
    attacks = tuple(result(a, "first", acc, eps=norms.get(a, ("linf", 0.1))[1], norm=norms.get(a, ("linf", 0.1))[0])
                    for a, acc in accs.items())
    return report("first", clean, attacks, min(accs.values()))


def test_fl_table_rows_and_columns() -> None:
    ori = fl_report(0.99, {"fgsm": 0.505, "pgd_linf": 0.1862, "cw_l2": 0.05, "gaussian_noise": 0.7731})
    adv = fl_report(0.98, {"fgsm": 0.9757, "pgd_linf": 0.9803, "gaussian_noise": 0.3477})
    fl = [fl_report(0.97, {"fgsm": 0.76, "pgd_linf": 0.64}), fl_report(0.99, {"fgsm": 0.78, "pgd_linf": 0.65})]
    table = fl_table([("Ori", [ori]), ("Adv", [adv]), ("FL", fl)])
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["Attack", "Ori", "Adv", "FL"]
    names = [line.strip("|").split("|")[0].strip() for line in lines[2:] if line.startswith("|")]
    assert names == ["Clean", "FGSM", "CW-L2", "PGD", "Gaussian noise"]  # table order; absent attacks omitted
    assert row_cells(table, "Clean") == ["99.00 ± 0.00", "98.00 ± 0.00", "98.00 ± 1.41"]
    assert row_cells(table, "FGSM") == ["50.50 ± 0.00", "97.57 ± 0.00", "77.00 ± 1.41"]
    assert row_cells(table, "CW-L2") == ["5.00 ± 0.00", "–", "–"]
    assert row_cells(table, "Gaussian noise") == ["77.31 ± 0.00", "34.77 ± 0.00", "–"]
    legend = "Budgets (ε in [0, 1] pixel units): FGSM L∞ ε = 0.1; CW-L2 L2 unbounded; PGD L∞ ε = 0.1; Gaussian noise L2 ε = 2."
    assert legend in table


def test_fl_table_prefers_the_scored_prediction_then_falls_back() -> None:
    scored = report("avg", 0.9, (result("fgsm", "first", 0.5), result("fgsm", "avg", 0.6)), 0.5)
    other = report("avg", 0.9, (result("bim", "first", 0.4),), 0.4)
    table = fl_table([("A", [scored]), ("B", [other])])
    assert row_cells(table, "FGSM") == ["60.00 ± 0.00", "–"]
    assert row_cells(table, "BIM") == ["–", "40.00 ± 0.00"]


def test_checks_table() -> None:
    checks = (
        Check(1, "large budget", "pass", "acc 0.0 % at eps 0.5", (("acc", 0.0), ("chance", 0.1))),
        Check(5, "white-box beats black-box", "flag", "SPSA | PGD: 3 examples", (("violations", 3.0),)),
        Check(7, "gradients", "skipped", "no gradient attack"),
    )
    table = checks_table(report("first", 0.9, (), 0.9, checks=checks))
    lines = table.splitlines()
    assert len(lines) == 5
    assert lines[1].startswith("| --: | ")  # a valid Markdown rule even for a one-character column
    assert row_cells(table, "1") == ["large budget", "✓ pass", "acc 0.0 % at eps 0.5", "acc=0, chance=0.1"]
    assert "⚠ flag" in lines[3] and "SPSA \\| PGD: 3 examples" in lines[3] and "violations=3" in lines[3]
    assert row_cells(table, "7")[1:3] == ["– skipped", "no gradient attack"]


@pytest.mark.parametrize("table", [cnnf_table, fl_table])
def test_tables_return_text_and_print_nothing(table, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    out = table([("CNN", [report("first", 0.9, (result("fgsm", "first", 0.5),), 0.5)])])
    assert isinstance(out, str) and out.endswith("\n")
    assert capsys.readouterr().out == ""
