"""Markdown tables of evaluation reports: pure functions returning text.

`cnnf_table` renders the CNN-F paper's Tables 2-5, `fl_table` the feedback
learning paper's Table III, `autoattack_table` the APGD / Square results
and the Min, `checks_table` one report's integrity checks.
Accuracies are printed in percent as "mean ± std": across the reports of a
row (training seeds) when it has several, else the report's own figures
(across attack seeds). Budgets are quoted in [0, 1] pixel units.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Optional, Sequence

from cnnf.report import AUTOATTACK_ATTACKS, AttackResult, Check, EvalReport, mean_std

MISSING = "–"
STATUS_MARK = {"pass": "✓ pass", "flag": "⚠ flag", "skipped": "– skipped"}
NORM_NAME = {"linf": "L∞", "l2": "L2", "none": "no norm"}

# How to read a column's (acc, std) from a report; None if the report lacks it.
Lookup = Callable[[EvalReport], Optional[tuple[float, float]]]

CNNF_ATTACKS = ("pgd_linf", "spsa", "transfer")  # the attacks of the CNN-F table's columns
# The FL paper's Table III rows, in its order: (registry name, row name).
FL_ROWS = (
    ("fgsm", "FGSM"),
    ("cw_l2", "CW-L2"),
    ("pgd_linf", "PGD"),
    ("pgd_l2", "PGD-L2"),
    ("bim", "BIM"),
    ("mim", "MIM"),
    ("deepfool", "DeepFool"),
    ("uniform_noise", "Uniform noise"),
    ("gaussian_noise", "Gaussian noise"),
    # The worst-of-k noise metric (fl_paper_suite's noise_worst_of), found by its label.
    ("uniform_noise_worst", "Uniform noise (worst of k draws)"),
    ("gaussian_noise_worst", "Gaussian noise (worst of k draws)"),
)


def cnnf_table(rows: Sequence[tuple[str, Sequence[EvalReport]]]) -> str:
    """Clean, PGD/SPSA against the first pass and end to end, transfer and the
    per-example worst case (Min), one row per (model name, its reports); then
    a legend (budget, examples, seeds) and a line per flagged integrity check.
    A plain CNN (scored prediction "first") shows its one result in both the
    first and the e2e column."""
    columns: list[tuple[str, Lookup]] = [
        ("Clean", _clean),
        ("PGD (first)", _acc(lambda r: _find(r, "pgd_linf", "first"))),
        ("PGD (e2e)", _acc(lambda r: _find(r, "pgd_linf", r.prediction, "exact"))),
        ("SPSA (first)", _acc(lambda r: _find(r, "spsa", "first"))),
        ("SPSA (e2e)", _acc(lambda r: _find(r, "spsa", r.prediction, "exact"))),
        ("Transfer", _acc(lambda r: _find(r, "transfer"))),
        ("Min", lambda r: (r.min_acc, r.min_std)),
    ]
    body = [[name] + [_cell(reports, lookup) for _, lookup in columns] for name, reports in rows]
    lines = [_markdown(["Model"] + [c for c, _ in columns], body)]
    budgets = _budgets(a for _, reports in rows for r in reports for a in r.attacks if a.attack in CNNF_ATTACKS)
    lines.append("")
    lines.append(f"Budget {budgets or 'none'} (ε in [0, 1] pixel units); {_sample_legend(rows)}. "
                 "first: attack the first forward pass; e2e: attack the scored prediction end to end (exact gates).")
    lines += _flag_lines(rows)
    return "\n".join(lines) + "\n"


def fl_table(models: Sequence[tuple[str, Sequence[EvalReport]]]) -> str:
    """One row per attack or noise type (Clean first; attacks no model has are
    left out), one column per model; then a legend with each attack's budget."""
    table_rows: list[list[str]] = [["Clean"] + [_cell(reports, _clean) for _, reports in models]]
    legend: list[str] = []
    for attack, row_name in FL_ROWS:
        results = [a for _, reports in models for r in reports if (a := _find_row(r, attack)) is not None]
        if not results:
            continue
        lookup = _acc(partial(_find_row, key=attack))
        table_rows.append([row_name] + [_cell(reports, lookup) for _, reports in models])
        legend.append(f"{row_name} {_budgets(results)}")
    lines = [_markdown(["Attack"] + [name for name, _ in models], table_rows), ""]
    lines.append(f"Budgets (ε in [0, 1] pixel units): {'; '.join(legend) or 'no attacks'}. {_sample_legend(models)}.")
    lines += _flag_lines(models)
    return "\n".join(lines) + "\n"


# The AutoAttack table's attacks (Croce & Hein 2020; Andriushchenko et al. 2020), in AutoAttack's order.
AUTOATTACK_ROWS = tuple(zip(AUTOATTACK_ATTACKS, ("APGD-CE", "APGD-DLR", "APGD-T", "Square")))


def has_autoattack(report: EvalReport) -> bool:
    return any(a.attack in AUTOATTACK_ATTACKS for a in report.attacks)


def _gap_cell(reports: Sequence[EvalReport]) -> str:
    """AutoAttack's gap in points: the Min without APGD / Square minus the Min with them
    (mean over the reports that have both; ± their std when there are several)."""
    gaps = [r.autoattack_gap for r in reports if r.autoattack_gap is not None]
    if not gaps:
        return MISSING
    mean, std = mean_std(gaps) if len(gaps) > 1 else (gaps[0], None)
    text = f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")
    return text if len(gaps) == len(reports) else f"{text} ({len(gaps)} of {len(reports)})"


def autoattack_table(models: Sequence[tuple[str, Sequence[EvalReport]]]) -> str:
    """One row per APGD / Square result (by label: "APGD-CE (first)",
    "APGD-T (e2e_bpda)", ...; in AutoAttack's order), one column per model,
    then the per-example Min over every attack of the report. A cascade
    stage (marked †) reports the accuracy after it and every attack before it."""
    pretty = dict(AUTOATTACK_ROWS)
    labels: list[tuple[str, str, bool]] = []  # (label, row name, cascade)
    for attack, name in AUTOATTACK_ROWS:
        for _, reports in models:
            for r in reports:
                for a in r.attacks:
                    if a.attack == attack and a.label not in [lab for lab, _, _ in labels]:
                        where = a.label.split("/", 1)[1] if "/" in a.label else ""
                        labels.append((a.label, f"{pretty[attack]}{f' ({where})' if where else ''}{' †' if a.cascade else ''}",
                                       a.cascade))
    rows = [["Clean"] + [_cell(reports, _clean) for _, reports in models]]
    for label, row_name, _ in labels:
        lookup = _acc(lambda r, label=label: next((a for a in r.attacks if a.label == label), None))
        rows.append([row_name] + [_cell(reports, lookup) for _, reports in models])
    rows.append(["Min (all attacks)"] + [_cell(reports, lambda r: (r.min_acc, r.min_std)) for _, reports in models])
    no_aa = lambda r: None if r.min_acc_no_aa is None else (r.min_acc_no_aa, r.min_std_no_aa)  # noqa: E731
    if any(no_aa(r) is not None for _, reports in models for r in reports):
        rows.append(["Min without APGD and Square"] + [_cell(reports, no_aa) for _, reports in models])
        rows.append(["Gap (points)"] + [_gap_cell(reports) for _, reports in models])
    results = [a for _, reports in models for r in reports for a in r.attacks if a.attack in pretty]
    lines = [_markdown(["Attack"] + [name for name, _ in models], rows), ""]
    legend = (f"Budget {_budgets(results) or 'none'} (ε in [0, 1] pixel units); {_sample_legend(models)}. first: the first "
              "forward pass; e2e: the scored prediction end to end; _bpda: with straight-through feedback gates. "
              "FAB-T (AutoAttack's third attack) is not run.")
    if any(r.min_acc_no_aa is not None for _, reports in models for r in reports):
        legend += (" Min without APGD and Square: the per-example Min over the report's other attacks (what the suite "
                   "reported before AutoAttack's attacks joined it); Gap: how many points they take off it, on the same images.")
    if any(c for _, _, c in labels):
        legend += " † accuracy after this attack and every attack above it in the suite (each runs on the survivors)."
    lines.append(legend)
    return "\n".join(lines) + "\n"


def checks_table(report: EvalReport) -> str:
    """The report's integrity checks: id, name, status, detail and the numbers behind it."""
    rows = [[str(c.id), c.name, STATUS_MARK[c.status], c.detail, _numbers(c)] for c in report.checks]
    return _markdown(["#", "Check", "Status", "Detail", "Numbers"], rows, right=(0,)) + "\n"


def _clean(report: EvalReport) -> tuple[float, float]:
    return report.clean_acc, report.clean_std


def _find(report: EvalReport, attack: str, target: Optional[str] = None, gates: Optional[str] = None) -> Optional[AttackResult]:
    """The first result of `attack` (with that target and gates, if given)."""
    for a in report.attacks:
        if a.attack == attack and target in (None, a.target) and gates in (None, a.gates):
            return a
    return None


def _find_scored(report: EvalReport, attack: str) -> Optional[AttackResult]:
    """The attack on the scored prediction with exact gates, else against any target."""
    return _find(report, attack, report.prediction, "exact") or _find(report, attack)


def _find_row(report: EvalReport, key: str) -> Optional[AttackResult]:
    """The result labelled `key`, else the scored attack of that registry name."""
    return next((a for a in report.attacks if a.label == key), None) or _find_scored(report, key)


def _acc(find: Callable[[EvalReport], Optional[AttackResult]]) -> Lookup:
    def lookup(report: EvalReport) -> Optional[tuple[float, float]]:
        result = find(report)
        return None if result is None else (result.acc, result.std)

    return lookup


def _cell(reports: Sequence[EvalReport], lookup: Lookup) -> str:
    """"mean ± std" in percent: across reports if several, else the report's own std.
    Reports lacking the figure are left out and the cell says how many had it."""
    found = [v for v in map(lookup, reports) if v is not None]
    if not found:
        return MISSING
    mean, std = found[0] if len(found) == 1 else mean_std([acc for acc, _ in found])
    text = f"{100 * mean:.2f} ± {100 * std:.2f}"
    return text if len(found) == len(reports) else f"{text} ({len(found)} of {len(reports)})"


def _fmt_eps(eps: float) -> str:
    """0.1 -> "0.1"; 8/255 -> "8/255"."""
    short = f"{eps:.4g}"
    k = eps * 255
    return f"{round(k)}/255" if float(short) != eps and abs(k - round(k)) < 1e-6 else short


def _budgets(results: Iterable[AttackResult]) -> str:
    """Distinct budgets of these results, e.g. "L∞ ε = 0.1" or "L2 unbounded"."""
    seen: dict[str, None] = {}
    for a in results:
        norm = NORM_NAME.get(a.norm, a.norm)
        seen[f"{norm} ε = {_fmt_eps(a.eps)}" if a.eps is not None else f"{norm} unbounded"] = None
    return ", ".join(seen)


def _sample_legend(rows: Sequence[tuple[str, Sequence[EvalReport]]]) -> str:
    """Examples, split and what the ± is taken over, e.g. "1000 test examples; mean ± std over 3 training seeds"
    (per row, "CNN: 1 attack seed, CNN-F: 3 training seeds", when the rows differ)."""
    examples = ", ".join(dict.fromkeys(f"{r.n_examples} {r.split}" for _, rs in rows for r in rs)) or "no"
    spread = {name: _spread(rs) for name, rs in rows if rs}
    if len(set(spread.values())) == 1:
        return f"{examples} examples; mean ± std over {next(iter(spread.values()))}"
    return f"{examples} examples; mean ± std over " + ", ".join(f"{name}: {s}" for name, s in spread.items())


def _spread(reports: Sequence[EvalReport]) -> str:
    if len(reports) > 1:
        return f"{len(reports)} training seeds"
    n = len(reports[0].seeds)
    return f"{n} attack seed{'s' if n != 1 else ''}"


def _flag_lines(rows: Sequence[tuple[str, Sequence[EvalReport]]]) -> list[str]:
    """One "⚠ <row>: check <id> <name>: <detail>" line per flagged check (duplicates once)."""
    lines: dict[str, None] = {}
    for name, reports in rows:
        for i, report in enumerate(reports):
            where = f"{name} (report {i + 1} of {len(reports)})" if len(reports) > 1 else name
            for c in report.flagged:
                lines[f"⚠ {where}: check {c.id} {c.name}: {c.detail}"] = None
    return [""] + list(lines) if lines else []


def _numbers(check: Check) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in check.numbers)


def _markdown(header: list[str], rows: list[list[str]], right: Optional[Sequence[int]] = None) -> str:
    """A padded Markdown table; the columns `right` (default: all but the first) are right-aligned."""
    right = range(1, len(header)) if right is None else right
    cells = [[c.replace("|", "\\|") for c in row] for row in [header] + rows]
    widths = [max(3, *(len(row[j]) for row in cells)) for j in range(len(header))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if j in right else "-" * w for j, w in enumerate(widths)) + " |"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
