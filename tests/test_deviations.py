"""docs/deviations.md cannot rot: every switch its tables name must exist.

The document has one table per family under a heading ("CNN-F", "Feedback
learning"), with the columns of COLUMNS. In the Switch column, every
backticked name is a switch:
- `section.field`: a field of the section's dataclass, the section being a
  field of cnnf.config.ExperimentConfig (CNN-F table) or of
  fl.config.FLConfig (feedback-learning table);
- `benchmarks/<script>.py --flag`: the script exists and declares the flag
  in an add_argument call (read as text, not imported).
A cell without a switch starts with "none" and gives a reason, and then
names nothing in backticks. Only the config modules are imported (no torch).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deviations.md"
COLUMNS = ("Topic", "Paper", "Reference code", "This implementation (default)", "Why", "Switch")
FIELD = re.compile(r"^([A-Za-z_]\w*)\.([A-Za-z_]\w*)$")
FLAG = re.compile(r"^(benchmarks/[\w./-]+\.py) (--[A-Za-z0-9][\w-]*)$")
BACKTICKED = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Row:
    family: str  # "cnnf" or "fl"
    line: int  # 1-based line in the document
    cells: dict[str, str]

    @property
    def topic(self) -> str:
        return self.cells.get("Topic", "?")


def split_cells(line: str) -> list[str]:
    """Cells of a Markdown table line (an escaped \\| stays inside its cell)."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def family_of(heading: str) -> str:
    return "fl" if "feedback learning" in heading.lower() else "cnnf"


def parse_tables(text: str) -> tuple[list[tuple[str, tuple[str, ...]]], list[Row]]:
    """(header of each table with its family, every data row)."""
    headers: list[tuple[str, tuple[str, ...]]] = []
    rows: list[Row] = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        is_table = line.lstrip().startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", lines[i + 1])
        if not is_table:
            i += 1
            continue
        header = tuple(split_cells(line))
        family = family_of(heading)
        headers.append((family, header))
        i += 2
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            cells = split_cells(lines[i])
            rows.append(Row(family, i + 1, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
            i += 1
    return headers, rows


def _root(family: str) -> type:
    if family == "fl":
        from fl.config import FLConfig

        return FLConfig
    from cnnf.config import ExperimentConfig

    return ExperimentConfig


def _sections(family: str) -> dict[str, type]:
    """Section name -> its dataclass (the root config's dataclass-typed fields)."""
    root = _root(family)
    hints = typing.get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root) if dataclasses.is_dataclass(hints[f.name])}


def check_switch(name: str, family: str) -> Optional[str]:
    """None if the switch `name` exists for this family, else what is wrong."""
    m = FIELD.match(name)
    if m:
        section, field_name = m.groups()
        sections = _sections(family)
        root = _root(family).__name__
        if section not in sections:
            return f"{name}: {root} has no section {section!r} (sections: {', '.join(sections)})"
        cls = sections[section]
        if field_name not in {f.name for f in dataclasses.fields(cls)}:
            return f"{name}: {cls.__name__} ({root}.{section}) has no field {field_name!r}"
        return None
    m = FLAG.match(name)
    if m:
        script, flag = m.groups()
        path = REPO / script
        if not path.is_file():
            return f"{name}: no script {script}"
        # The flag as a whole quoted string among add_argument's leading names:
        # --pgd-step must not be satisfied by --pgd-steps.
        declared = re.compile(r"add_argument\(\s*(?:[\"'][^\"']*[\"']\s*,\s*)*[\"']" + re.escape(flag) + r"[\"']")
        if not declared.search(path.read_text()):
            return f"{name}: {script} declares no {flag} in an add_argument call"
        return None
    return f"{name!r} is neither `section.field` nor `benchmarks/<script>.py --flag`"


def row_problems(row: Row) -> list[str]:
    """What is wrong with the Switch cell of one row (empty list: nothing)."""
    cell = row.cells.get("Switch", "")
    where = f"line {row.line} ({row.topic!r})"
    if not cell:
        return [f"{where}: empty Switch cell"]
    names = BACKTICKED.findall(cell)
    if cell.lower().startswith("none"):
        problems = []
        if len(cell.rstrip(".")) <= len("none") + 2:
            problems.append(f"{where}: 'none' needs a reason")
        if names:
            problems.append(f"{where}: a 'none' cell names {names} in backticks; write them without backticks or make them the switch")
        return problems
    if not names:
        return [f"{where}: Switch cell {cell!r} names no `switch` and does not say 'none'"]
    return [f"{where}: {p}" for p in (check_switch(n, row.family) for n in names) if p]


def document() -> tuple[list[tuple[str, tuple[str, ...]]], list[Row]]:
    assert DOC.is_file(), f"{DOC} is missing"
    return parse_tables(DOC.read_text())


def test_tables_have_the_expected_columns_and_rows():
    headers, rows = document()
    assert headers, "docs/deviations.md has no table"
    for family, header in headers:
        assert header == COLUMNS, f"a {family} table has columns {header}, expected {COLUMNS}"
    assert {family for family, _ in headers} == {"cnnf", "fl"}, "expected a CNN-F and a Feedback learning table"
    assert len([r for r in rows if r.family == "cnnf"]) >= 10
    assert len([r for r in rows if r.family == "fl"]) >= 5
    for row in rows:
        assert len(row.cells) == len(COLUMNS) and all(row.cells[c] for c in COLUMNS), \
            f"line {row.line} ({row.topic!r}): every cell must be filled"


def test_every_switch_exists():
    _, rows = document()
    problems = [p for row in rows for p in row_problems(row)]
    assert not problems, "docs/deviations.md names switches that do not exist:\n" + "\n".join(problems)


def test_the_test_names_the_switches_it_checks():
    """The doc points here, so readers know the switches are checked."""
    assert "tests/test_deviations.py" in DOC.read_text()


# -- the checker itself: it must catch what it is meant to catch ----------------

SYNTHETIC = """\
## CNN-F

| Topic | Paper | Reference code | This implementation (default) | Why | Switch |
|---|---|---|---|---|---|
| good | a | b | c | d | `train.epochs`, `benchmarks/fig5_small.py --pgd-steps` |
| bogus field | a | b | c | d | `train.no_such_field` |
| bogus section | a | b | c | d | `nosection.epochs` |
| flag prefix | a | b | c | d | `benchmarks/fig5_small.py --pgd-ste` |
| no script | a | b | c | d | `benchmarks/no_such_script.py --x` |
| free text | a | b | c | d | `some text` |
| empty | a | b | c | d | |
| bare none | a | b | c | d | none |
| none naming | a | b | c | d | none: see `train.epochs` |

## Feedback learning

| Topic | Paper | Reference code | This implementation (default) | Why | Switch |
|---|---|---|---|---|---|
| fl good | a | b | c | d | `search.clip`, `eval.fgsm_grid` |
| cnnf eval field in fl | a | b | c | d | `eval.pgd_steps` |
"""


def test_checker_reports_bogus_switches():
    headers, rows = parse_tables(SYNTHETIC)
    assert [f for f, _ in headers] == ["cnnf", "fl"]
    by_topic = {r.topic: row_problems(r) for r in rows}
    assert by_topic["good"] == []
    assert by_topic["fl good"] == []
    for topic, needle in (("bogus field", "no_such_field"), ("bogus section", "nosection"), ("flag prefix", "--pgd-ste"),
                          ("no script", "no_such_script"), ("free text", "some text"), ("empty", "empty"),
                          ("bare none", "reason"), ("none naming", "backticks"),
                          ("cnnf eval field in fl", "FLEvalConfig")):
        assert any(needle in p and repr(topic) in p for p in by_topic[topic]), (topic, by_topic[topic])


@pytest.mark.parametrize("name,family", [("model.arch", "cnnf"), ("eval.pgd_step_linf", "cnnf"), ("data.val_fraction", "cnnf"),
                                         ("search.clip", "fl"), ("selection.equal_quota", "fl"), ("retrain.epochs", "fl"),
                                         ("eval.fgsm_grid", "fl"), ("benchmarks/robustness_tables.py --pgd-steps", "cnnf")])
def test_checker_accepts_existing_switches(name, family):
    assert check_switch(name, family) is None


def test_checker_rejects_a_field_of_the_other_family():
    assert check_switch("search.clip", "cnnf") is not None
    assert check_switch("eval.pgd_steps", "fl") is not None
