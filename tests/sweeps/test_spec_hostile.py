"""Hostile and broken sweep files: every one gets exit code 2 and one
`error:` line per problem (FILE:LINE: KEY: what was expected), quickly, with
no traceback and nothing written or started.

The checked-in corpus is tests/sweeps/malformed/*.yaml; the first line of
each says what the error must contain (`# expect: ...`, FILE standing for the
file's path). Files that cannot carry that comment (binary, empty, huge,
not files at all) are made here in tmp_path.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from sweeps import spec
from sweeps.cli import EXIT_INVALID, app
from sweeps.spec import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, MAX_SHOWN, SpecError, load_sweep, parse_sweep
from tests.conftest import EXAMPLES, REPO, TINY_SWEEP
from tuning.kinds import experiment_names

MALFORMED = Path(__file__).parent / "malformed"
CORPUS = sorted(MALFORMED.glob("*.yaml"))
QUICK_S = 2.0  # in process; the real cost is milliseconds
CLI_S = 6.0  # a fresh interpreter (~0.5 s alone) on a loaded 2-core machine; the old loader hung for minutes

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _kinds_imported() -> None:
    """The first experiment-kind lookup builds the kind (imports torch, seconds);
    pay it once so the time limits below measure the loader."""
    experiment_names()


def expected(path: Path) -> str:
    first = path.read_text(encoding="utf-8").partition("\n")[0]
    assert first.startswith("# expect: "), f"{path.name}: the first line must say what the error contains"
    return first.removeprefix("# expect: ").replace("FILE", str(path))


def refused(path: Path | str, load: Callable[[], object] | None = None) -> SpecError:
    """The SpecError of loading `path`, checked for form: each shown line is one
    problem starting with the file's name, and the answer came quickly."""
    started = time.perf_counter()
    with pytest.raises(SpecError) as info:
        (load or (lambda: load_sweep(path)))()
    elapsed = time.perf_counter() - started
    assert elapsed < QUICK_S, f"{path}: took {elapsed:.2f} s"
    exc = info.value
    lines = str(exc).split("\n")
    assert lines == exc.lines() and 1 <= len(lines) <= MAX_SHOWN + 1
    for line in lines:
        assert line.startswith(f"{path}"), line
        assert len(line.splitlines()) == 1 and not any(ord(c) < 0x20 and c != "\t" for c in line), repr(line)
    assert (exc.file, exc.line, exc.key, exc.message) == tuple(getattr(exc.problems[0], a) for a in ("file", "line", "key", "message"))
    return exc


# --- the checked-in corpus ----------------------------------------------------------------


def test_the_corpus_is_broad() -> None:
    assert len(CORPUS) >= 100


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_file_is_refused_with_its_problem(path: Path) -> None:
    exc = refused(path)
    assert expected(path) in str(exc)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_validate_prints_each_problem_of_a_corpus_file_as_is(path: Path) -> None:
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == EXIT_INVALID and result.stdout == ""
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    assert result.stderr.splitlines() == [f"error: {line}" for line in info.value.lines()]


# --- made here: what cannot be checked in ---------------------------------------------------


def alias_bomb(tmp: Path) -> Path:
    # a0 holds 9 values, a1 nine a0s, ... a8 9^9 (387 million) values.
    lines = ["a0: &a0 [x,x,x,x,x,x,x,x,x]"] + [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return write(tmp / "bomb.yaml", "\n".join(lines) + "\n")


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def fifo(tmp: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    os.mkfifo(tmp / "pipe.yaml")
    return tmp / "pipe.yaml"


def sparse(tmp: Path, size: int) -> Path:
    with open(tmp / "big.yaml", "wb") as f:
        f.write(b"name: big\n")
        f.truncate(size)  # sparse: nothing to write, and the loader must not read it either
    return tmp / "big.yaml"


def symlink_loop(tmp: Path) -> Path:
    (tmp / "loop.yaml").symlink_to(tmp / "loop.yaml")
    return tmp / "loop.yaml"


def device_link(tmp: Path) -> Path:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    (tmp / "zero.yaml").symlink_to("/dev/zero")
    return tmp / "zero.yaml"


HEAD = "name: m\nexperiment: cnnf\n"
MADE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "alias_bomb": (alias_bomb, f":5: the document holds more than {MAX_NODES:,} values with its aliases expanded (limit sweeps.spec.MAX_NODES"),
    "alias_fan_out": (lambda t: write(t / "f.yaml", "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 30) + "]\n"),
                      "values with its aliases expanded"),
    "deep_flow_5000": (lambda t: write(t / "f.yaml", "[" * 5000 + "]" * 5000 + "\n"),
                       f":1: lists and mappings nest more than {MAX_DEPTH} deep here (limit sweeps.spec.MAX_DEPTH = {MAX_DEPTH}"),
    "deep_mapping_3000": (lambda t: write(t / "f.yaml", "a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n"), f"nest more than {MAX_DEPTH} deep"),
    "deep_block_300": (lambda t: write(t / "f.yaml", "".join(" " * i + f"k{i}:\n" for i in range(300)) + " " * 300 + "1\n"),
                       f"nest more than {MAX_DEPTH} deep"),
    "deep_alias_chain": (lambda t: write(t / "f.yaml", "a0: &a0 [[[[[[[[[[1]]]]]]]]]]\n" + "".join(
        f"a{i}: &a{i} [[[[[[[[[*a{i - 1}]]]]]]]]]\n" for i in range(1, 10))), "nests lists and mappings more than 64 deep"),
    "too_many_values": (lambda t: write(t / "f.yaml", "seed: [" + ",".join(["1"] * (MAX_NODES + 10)) + "]\n"),
                        f":1: the document holds more than {MAX_NODES:,} values"),
    "nul_bytes": (lambda t: write(t / "f.yaml", b"\0" * 100),
                  ":1: character U+0000 at column 1 is not allowed in YAML; a sweep file is plain text (is this a binary file?)"),
    "nul_after_content": (lambda t: write(t / "f.yaml", (HEAD + "seed: 1\x00\n").encode()), ":3: character U+0000 at column 8"),
    "escape_byte": (lambda t: write(t / "f.yaml", HEAD + "seed: \x1b[2J\n"), ":3: character U+001B at column 7"),
    "noncharacter": (lambda t: write(t / "f.yaml", HEAD + "seed: \ufffe\n"), ":3: character U+FFFE"),
    "elf_header": (lambda t: write(t / "f.yaml", b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 4), "not UTF-8 text: byte 0x80"),
    "latin1": (lambda t: write(t / "f.yaml", (HEAD + "seed: 1\n# caf\xe9\n").encode("latin-1")),
               ":4: not UTF-8 text: byte 0xe9 at offset 38 cannot be decoded"),
    "utf16_bom": (lambda t: write(t / "f.yaml", HEAD.encode("utf-16")), ":1: the file is UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8"),
    "utf32_bom": (lambda t: write(t / "f.yaml", HEAD.encode("utf-32")), "the file is UTF-32 text"),
    "utf16_without_bom": (lambda t: write(t / "f.yaml", HEAD.encode("utf-16-le")), "character U+0000 at column 2"),
    "empty": (lambda t: write(t / "f.yaml", b""), ": the file is empty; expected a mapping with at least name, experiment and space"),
    "bom_only": (lambda t: write(t / "f.yaml", "\ufeff"), ": the file is empty"),
    "crlf_line_numbers": (lambda t: write(t / "f.yaml", (HEAD + "seed: x\n").replace("\n", "\r\n")), ":3: seed: Input should be a valid integer, got 'x'"),
    "cr_only_line_numbers": (lambda t: write(t / "f.yaml", (HEAD + "seed: x\n").replace("\n", "\r")), ":3: seed: Input should be a valid integer"),
    "50_MB": (lambda t: sparse(t, 50 << 20), f": the file is 52,428,800 bytes, over the limit of {MAX_FILE_BYTES:,} bytes ({MAX_FILE_BYTES >> 10} KiB, sweeps.spec.MAX_FILE_BYTES)"),
    "one_byte_over": (lambda t: sparse(t, MAX_FILE_BYTES + 1), f"the file is {MAX_FILE_BYTES + 1:,} bytes, over the limit"),
    "directory": (lambda t: (t / "d.yaml").mkdir() or t / "d.yaml", ": is a directory; expected a sweep YAML file"),
    "fifo": (fifo, ": is a named pipe (FIFO), not a regular file; expected a sweep YAML file"),
    "char_device_link": (device_link, ": is a character device, not a regular file"),
    "symlink_loop": (symlink_loop, ": cannot read the file: Too many levels of symbolic links"),
    "missing": (lambda t: t / "nope.yaml", ": no such file"),
    "missing_folder": (lambda t: t / "no" / "such" / "f.yaml", ": no such file"),
    "below_a_file": (lambda t: write(t / "f.yaml", HEAD) / "x.yaml", ": cannot read the file: Not a directory"),
    "name_too_long": (lambda t: t / ("n" * 300 + ".yaml"), ": cannot read the file: File name too long"),
}


@pytest.mark.parametrize("name", MADE)
def test_made_file_is_refused_with_its_problem(name: str, tmp_path: Path) -> None:
    make, needle = MADE[name]
    path = make(tmp_path)
    exc = refused(path)
    assert f"{path}{needle}" in str(exc) if needle.startswith(":") else needle in str(exc)


def test_nul_in_the_path_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        load_sweep("a\0b.yaml")
    assert str(info.value) == "a\\x00b.yaml: cannot read the file: embedded null byte"  # the NUL shown escaped


def test_text_given_directly_is_bounded_too() -> None:
    exc = refused("s.yaml", lambda: parse_sweep("seed: 1\n" + "#" * MAX_FILE_BYTES, "s.yaml"))
    assert f"characters, over the limit of {MAX_FILE_BYTES:,} bytes" in str(exc)
    exc = refused("s.yaml", lambda: parse_sweep(HEAD + "seed: \ud800\n", "s.yaml"))  # a lone surrogate
    assert "s.yaml:3: character U+D800 at column 7 is not allowed" in str(exc)


@pytest.mark.parametrize("text", [
    '? "' + "k" * 100_000 + '"\n: 1\n',  # a key
    "seed: !" + "t" * 100_000 + " 1\n",  # a tag
    "name: " + "n" * 100_000 + "\nexperiment: " + "e" * 100_000 + "\n",  # values
], ids=["key", "tag", "values"])
def test_long_text_from_the_file_is_cut_in_messages(text: str) -> None:
    exc = refused("s.yaml", lambda: parse_sweep(text, "s.yaml"))
    assert max(len(line) for line in exc.lines()) < 2300


def test_a_recursion_error_anywhere_becomes_a_spec_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The limits keep recursion shallow; should something still recurse too deep, the answer is one line.
    def recurse(*_: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(spec, "_walk", recurse)
    exc = refused("s.yaml", lambda: parse_sweep(TINY_SWEEP, "s.yaml"))
    assert str(exc) == f"s.yaml: the document nests too deeply to read (limit sweeps.spec.MAX_DEPTH = {MAX_DEPTH})"


def test_within_the_limits_a_spec_still_loads() -> None:
    deep = "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1)  # in the top mapping: as deep as allowed
    exc = refused("s.yaml", lambda: parse_sweep(TINY_SWEEP.replace("seed: 3", f"seed: {deep}"), "s.yaml"))
    assert (exc.key, exc.line) == ("seed", 3) and "valid integer" in exc.message  # refused for its type, not a limit
    shared = TINY_SWEEP.replace("    epochs: 2\n", "    epochs: &e 2\n").replace("  num_trials: 2\n", "  num_trials: *e\n")
    assert parse_sweep(shared, "s.yaml").config.search.num_trials == 2


# --- several problems at once -----------------------------------------------------------------


def test_every_problem_is_listed_in_line_order(write_sweep) -> None:
    text = TINY_SWEEP.replace("  num_trials: 2", "  num_trails: 2").replace("    n_train: 256", "    n_train: lots") \
                     .replace("    pgd_steps: 2", "    pgd_stpes: 2").replace("resources:", "serach: {}\nresources:")
    path = write_sweep(text)
    exc = refused(path)
    shown = [(p.line, p.key) for p in exc.problems]
    assert shown == [(7, "base.data.n_train"), (12, "base.eval.pgd_stpes"), (19, "search.num_trails"), (21, "serach")]
    assert "did you mean 'pgd_steps'?" in exc.problems[1].message and "did you mean 'search'?" in exc.problems[3].message
    assert (exc.line, exc.key) == (7, "base.data.n_train") and exc.message.startswith("Input should be a valid integer")
    assert str(exc).split("\n")[2] == str(exc.problems[2])


def test_a_misspelled_key_keeps_its_hint_beside_a_missing_one() -> None:
    exc = refused("s.yaml", lambda: parse_sweep("name: m\nserach: {num_trials: 3}\n", "s.yaml"))
    assert str(exc) == ("s.yaml: experiment: required key is missing\n"
                        "s.yaml:2: serach: unknown key; did you mean 'search'? (valid keys here: name, experiment, base, "
                        "space, search, scheduler, budget, resources, tracking, output_dir, seed)")


def test_past_max_shown_the_rest_are_counted() -> None:
    text = HEAD + "".join(f"extra{i}: {i}\n" for i in range(MAX_SHOWN + 5)) + "space: {model.ind: {choice: [0]}}\n"
    exc = refused("s.yaml", lambda: parse_sweep(text, "s.yaml"))
    assert len(exc.problems) == MAX_SHOWN + 5
    assert str(exc).split("\n")[-1] == "s.yaml: ... and 5 more problems"
    assert [p.key for p in exc.problems] == [f"extra{i}" for i in range(MAX_SHOWN + 5)]


def test_thousands_of_problems_are_answered_quickly() -> None:
    # about half of MAX_NODES: unknown top-level keys and unknown parameters, each with a line of its own
    text = HEAD + "".join(f"extra{i}: {i}\n" for i in range(3000)) + "space:\n" + "".join(f"  p.{i}: {{choice: [0]}}\n" for i in range(1000))
    exc = refused("s.yaml", lambda: parse_sweep(text, "s.yaml"))
    assert len(exc.problems) == 4000 and str(exc).endswith(f"... and {4000 - MAX_SHOWN} more problems")


def test_spec_error_survives_pickling() -> None:
    with pytest.raises(SpecError) as info:
        parse_sweep("name: m\nserach: 1\n", "s.yaml")
    back = pickle.loads(pickle.dumps(info.value))
    assert back.problems == info.value.problems and str(back) == str(info.value)


# --- the command line ---------------------------------------------------------------------------


def sweep(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], capture_output=True, text=True, timeout=60,
                            cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    return result, time.perf_counter() - started


def assert_refused(result: subprocess.CompletedProcess[str], elapsed: float, needle: str) -> list[str]:
    assert result.returncode == EXIT_INVALID, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith(("error: ", "warning: ")) for line in lines), result.stderr
    assert needle in result.stderr
    assert elapsed < CLI_S, f"answered in {elapsed:.1f} s"
    return lines


# What fails before the experiment kind is looked up (that imports torch): the
# pathological files, in a fresh interpreter each.
CLI_CASES = ["alias_bomb", "deep_flow_5000", "deep_mapping_3000", "nul_bytes", "fifo", "50_MB", "directory", "latin1"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_validate_answers_a_hostile_file_in_one_line(name: str, tmp_path: Path) -> None:
    make, needle = MADE[name]
    path = make(tmp_path)
    result, elapsed = sweep("validate", str(path), cwd=tmp_path)
    lines = assert_refused(result, elapsed, needle.lstrip(":"))
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}")


@pytest.mark.parametrize("path", [MALFORMED / "python_object_tag.yaml", MALFORMED / "tab_indent.yaml",
                                  MALFORMED / "missing_name_and_experiment.yaml"], ids=lambda p: p.stem)
def test_validate_answers_a_corpus_file(path: Path, tmp_path: Path) -> None:
    result, elapsed = sweep("validate", str(path), cwd=tmp_path)
    assert_refused(result, elapsed, expected(path))


def test_validate_prints_one_error_line_per_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "s.yaml", "name: m\nserach:\n  num_trials: 3\nspace: {}\n")
    result, elapsed = sweep("validate", str(path), cwd=tmp_path)
    lines = assert_refused(result, elapsed, "did you mean 'search'?")
    assert lines == [f"error: {path}: experiment: required key is missing",
                     f"error: {path}:2: serach: unknown key; did you mean 'search'? (valid keys here: name, experiment, base, "
                     "space, search, scheduler, budget, resources, tracking, output_dir, seed)"]


def test_launch_of_a_hostile_file_writes_and_starts_nothing(tmp_path: Path) -> None:
    path = alias_bomb(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result, elapsed = sweep("launch", str(path), "-o", str(tmp_path / "runs"), cwd=tmp_path)
    assert_refused(result, elapsed, "values with its aliases expanded")
    assert not (tmp_path / "runs").exists()
    assert sorted(tmp_path.rglob("*")) == before  # no mlflow.db, mlruns/ or Ray session folder either


def test_cli_prints_file_text_as_is(tmp_path: Path) -> None:
    # rich would read [bold] as markup and :smile: as an emoji code
    result = runner.invoke(app, ["validate", str(MALFORMED / "rich_markup_and_emoji.yaml")])
    assert result.exit_code == EXIT_INVALID
    assert "error: " + expected(MALFORMED / "rich_markup_and_emoji.yaml") in result.stderr


def test_cli_turns_an_unexpected_failure_into_one_error_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(_: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(spec, "load_sweep", broken)
    result = runner.invoke(app, ["validate", str(tmp_path / "s.yaml")])
    assert result.exit_code == EXIT_INVALID
    assert result.stderr.strip() == (f"error: {tmp_path / 's.yaml'}: the spec could not be checked (KeyError: 'boom'); "
                                     "this is a bug in sweep, please report it with the file")


# --- mutation fuzz ----------------------------------------------------------------------------------

HOSTILE_VALUES = [".inf", "-.inf", ".nan", "1e999", "-1", "0", "1" + "0" * 30, "9" * 5000, "''", "null", "[]", "{}", "~",
                  "!!python/object/apply:os.system [ls]", "!!binary AAAA", "*nowhere", "&dup x", "yes", "2024-02-30",
                  "'5'", "[[[[1]]]]", "{a: {b: {c: 1}}}", "\"\\x00\"", "|\n  text", "- a", "? x", "%", "@", "`"]
PUNCTUATION = list(":-[]{},&*!|>'\"#%@`?\t") + ["\x00", "\u2028", "\x85", "---", "...", "<<: *a", "&a ", "*a"]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        op = rng.randrange(8)
        if op == 0 and len(lines) > 1:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            at = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:at] + rng.choice(PUNCTUATION) + lines[i][at:]
        elif op == 4:
            body = lines[i].lstrip(" ")
            indent = len(lines[i]) - len(body)
            lines[i] = rng.choice([" " * max(0, indent + rng.choice([-4, -2, -1, 1, 2, 4])) + body, "\t" + body, body])
        elif op == 5 and ": " in lines[i]:
            key = lines[i].partition(": ")[0]
            lines[i] = f"{key}: {rng.choice(HOSTILE_VALUES)}"
        elif op == 6:
            lines.insert(i, " " * rng.choice([0, 2, 4]) + rng.choice(["serach", "base", "choice", "x.y", "when", "<<"]) + ": 1")
        else:
            joined = "\n".join(lines)
            return joined[: rng.randint(0, len(joined))]
    return "\n".join(lines)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_mutated_examples_load_or_fail_cleanly(example: Path) -> None:
    # Whole-line comments only dilute the mutations; inline ones stay.
    text = "\n".join(line for line in example.read_text().split("\n") if not line.lstrip().startswith("#"))
    rng = random.Random(f"{example.name}-20")
    outcomes = {"loaded": 0, "refused": 0}
    for n in range(300):
        mutated = mutate(text, rng)
        started = time.perf_counter()
        try:
            parse_sweep(mutated, "m.yaml")
            outcomes["loaded"] += 1
        except SpecError as exc:
            outcomes["refused"] += 1
            assert all(line.startswith("m.yaml") and len(line.splitlines()) == 1 for line in exc.lines()), (n, mutated)
        except Exception as exc:  # noqa: BLE001  what the test is looking for
            pytest.fail(f"mutation {n} of {example.name} raised {type(exc).__name__}: {exc}\n---\n{mutated}")
        assert time.perf_counter() - started < QUICK_S, (n, mutated)
    assert outcomes["refused"] > 150, outcomes  # the mutations do reach the checks


# --- bf16 on a CPU without it ---------------------------------------------------------------------

TRAIN = "    batch_size: 64\n"
BF16 = TINY_SWEEP.replace(TRAIN, TRAIN + "    precision: bf16\n")
BF16_LINE = BF16.split("\n").index("    precision: bf16") + 1


def warnings_for(text: str, monkeypatch: pytest.MonkeyPatch, native: str | None) -> tuple[str, ...]:
    if native is None:
        monkeypatch.delenv("CNNF_NATIVE_BF16", raising=False)
    else:
        monkeypatch.setenv("CNNF_NATIVE_BF16", native)
    return parse_sweep(text, "s.yaml").warnings


def test_bf16_on_an_emulating_cpu_warns_on_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    (warning,) = warnings_for(BF16, monkeypatch, "0")
    assert warning.startswith(f"s.yaml:{BF16_LINE}: base.train.precision: trials compute in bf16 on the CPU, but this CPU (")
    assert "has no native bf16" in warning and "\n" not in warning


@pytest.mark.parametrize("text, native", [
    (BF16, "1"),  # native bf16
    (TINY_SWEEP.replace(TRAIN, TRAIN + "    precision: fp32\n"), "0"),  # fp32 never warns
    (BF16.replace("resources:\n  cpu: 1\n", "resources:\n  cpu: 1\n  gpu: 1\n"), "0"),  # on a GPU
    (BF16.replace("space:\n", "space:\n  train.precision: {choice: [fp32]}\n"), "0"),  # the space never samples the base's bf16
], ids=["native", "fp32", "gpu", "space-overrides-base"])
def test_no_bf16_warning(text: str, native: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert warnings_for(text, monkeypatch, native) == ()


@pytest.mark.parametrize("text, key", [
    (TINY_SWEEP.replace("space:\n", "space:\n  train.precision: {choice: [fp32, bf16]}\n"), "space.train.precision"),
    (BF16.replace(TRAIN, TRAIN + "    device: cpu\n").replace("resources:\n  cpu: 1\n", "resources:\n  cpu: 1\n  gpu: 1\n"),
     "base.train.precision"),  # a GPU is there but the trial is told to use the CPU
    (BF16.replace("space:\n", "space:\n  train.device: {choice: [auto, cpu]}\n").replace("resources:\n  cpu: 1\n",
                                                                                         "resources:\n  cpu: 1\n  gpu: 1\n"),
     "base.train.precision"),
], ids=["space-samples-bf16", "device-cpu-with-gpu", "space-samples-cpu"])
def test_bf16_warning_follows_the_space_and_device(text: str, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (warning,) = warnings_for(text, monkeypatch, "0")
    assert f": {key}: trials compute in bf16 on the CPU" in warning


@pytest.mark.parametrize("old, new, key", [
    ("    max_margin: 0.5 ", "    max_margin: 0.5\n    precision: bf16 ", "base.search.precision"),
    ("    batch_size: 128\n", "    batch_size: 128\n    precision: bf16\n", "base.train.precision"),
    ("\nspace:", "\nspace:\n  search.precision: {choice: [fp32, bf16]}", "space.search.precision"),
], ids=["search", "train", "space"])
def test_bf16_warning_covers_feedback_learning(old: str, new: str, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (EXAMPLES / "fl_quota_small.yaml").read_text()
    assert old in text and "precision" not in text
    (warning,) = warnings_for(text.replace(old, new, 1), monkeypatch, "0")
    assert f": {key}: trials compute in bf16 on the CPU" in warning


def test_onednn_capped_below_bf16_warns_without_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert len(warnings_for(BF16, monkeypatch, None)) == 1


@pytest.mark.parametrize("native, warns", [("0", True), ("1", False)])
def test_validate_prints_the_bf16_warning_and_still_succeeds(native: str, warns: bool, write_sweep,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNF_NATIVE_BF16", native)
    path = write_sweep(BF16)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {path}")
    if warns:
        assert re.fullmatch(rf"warning: {re.escape(str(path))}:{BF16_LINE}: base\.train\.precision: trials compute in bf16 .*\n",
                            result.stderr)
    else:
        assert result.stderr == ""


def test_launch_prints_the_bf16_warning_before_its_checks(write_sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNF_NATIVE_BF16", "0")
    text = BF16.replace("    dataset: fashion-mnist-sample", f"    dataset: mnist\n    root: {tmp_path / 'nodata'}")
    result = runner.invoke(app, ["launch", str(write_sweep(text)), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == EXIT_INVALID  # the data is missing: nothing starts
    warning, error = result.stderr.strip().split("\n")
    assert warning.startswith("warning: ") and "base.train.precision: trials compute in bf16" in warning
    assert error.startswith("error: ") and "not found under root" in error
    assert not (tmp_path / "out").exists()
