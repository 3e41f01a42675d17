"""Fault tolerance end to end: a driver killed with SIGKILL and resumed, a
sweep stopped with `sweep stop` and resumed, a trial retried from its last
checkpoint, a trial whose loss becomes NaN. The sweeps run as `sweep`
subprocesses (as a user runs them) except the retried one, whose fault-injecting
experiment kind exists only in this process (tests/tuning/faulty.py).

After each, the MLflow store and the Optuna journal must hold exactly one
run / one trial per configuration, no run left RUNNING, and no epoch logged twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from sweeps.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID
from tests.conftest import REPO, TINY_SWEEP
from tuning.runner import JOURNAL, MLFLOW_DB, STATE_FILE, TUNE_DIR, read_state

pytestmark = pytest.mark.slow

SWEEP = Path(sys.executable).with_name("sweep")
EPOCHS = 4


def _spec(num_trials: int, max_concurrent: int, epochs: int = EPOCHS) -> str:
    text = (TINY_SWEEP.replace("num_trials: 2", f"num_trials: {num_trials}")
            .replace("max_concurrent: 2", f"max_concurrent: {max_concurrent}")
            .replace("epochs: 2", f"epochs: {epochs}")
            .replace("n_examples: 32", "n_examples: 32\n    check_examples: 16"))
    assert f"num_trials: {num_trials}" in text and "check_examples: 16" in text
    return text


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CNNF_DATA_ROOT", str(REPO.parent / "shared" / "datasets"))
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(SWEEP), *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _launch(spec: Path, out: Path, log: Path) -> subprocess.Popen:
    # Output to a file: a pipe nobody reads while the sweep runs could fill up and block the driver.
    with log.open("w") as f:
        return subprocess.Popen([str(SWEEP), "launch", str(spec), "-o", str(out)], cwd=REPO, env=_env(),
                                stdout=f, stderr=subprocess.STDOUT, text=True)


def _wait(what: str, ready: Callable[[], Any], proc: Optional[subprocess.Popen], log: Optional[Path], timeout: float = 300) -> Any:
    """Poll until ready() returns something truthy; fail if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = ready()
        except Exception:  # noqa: BLE001 - the store may be mid-write (SQLite busy): poll again
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before: {what}\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for: {what}\n{log.read_text()[-3000:] if log else ''}")


def _sweep_dir(out: Path) -> Optional[Path]:
    # sweep.json is written after the MLflow store and just before the first trial:
    # opening the store earlier would race its schema migration.
    found = [p.parent for p in out.glob(f"tiny-*/{STATE_FILE}")]
    return found[0] if found and read_state(found[0]).get("driver_pid") else None


def _client(out: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{out / MLFLOW_DB}")


def _runs(out: Path) -> tuple[list, list]:
    """(parent runs, child runs) of experiment `tiny`."""
    client = _client(out)
    experiment = client.get_experiment_by_name("tiny")
    runs = [] if experiment is None else client.search_runs([experiment.experiment_id])
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def _history(out: Path, run_id: str, key: str = "val_acc") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client(out).get_metric_history(run_id, key))


def _study_states(sweep_dir: Path) -> list[str]:
    from tuning.searchers import open_study

    state = read_state(sweep_dir)
    study = open_study(sweep_dir / JOURNAL, state["sweep_id"], state["modes"])
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def _proc_stat(pid: int) -> Optional[tuple[int, str, int]]:
    """(parent pid, state, start time) of a process, from /proc; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(pid: int) -> dict[tuple[int, int], str]:
    """Processes started (directly or not) by pid: (pid, start time) -> command line."""
    stats = {int(p.name): _proc_stat(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    stats = {p: s for p, s in stats.items() if s is not None}
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, s in stats.items() if s[0] in frontier} - found
        found |= frontier
    out = {}
    for p in found:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[(p, stats[p][2])] = cmd
    return out


def _alive(processes: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    """Those of processes still running (the same pid and start time, not a zombie)."""
    alive = {}
    for (pid, start), cmd in processes.items():
        stat = _proc_stat(pid)
        if stat is not None and stat[2] == start and stat[1] != "Z":
            alive[(pid, start)] = cmd
    return alive


# Ray's dashboard and runtime-env agents outlive a SIGKILLed driver by a minute
# or two (they notice the raylet is gone on a timeout) and then exit; they hold
# no sweep state and the resume starts its own local Ray.
LINGERING_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _assert_distinct_configs(children: list) -> None:
    """Every trial ran its own configuration (the space is continuous: a repeat is no coincidence)."""
    configs = {r.data.tags["optuna.trial"]: tuple(sorted(r.data.params.items())) for r in children}
    repeats = {n: c for n, c in configs.items() if list(configs.values()).count(c) > 1}
    assert not repeats, f"trials ran the same configuration: {repeats}"


def _assert_complete(out: Path, sweep_dir: Path, num_trials: int, epochs: int) -> list:
    """Exactly one FINISHED child per Optuna trial, every epoch logged once, the
    parent FINISHED, nothing RUNNING; the journal has num_trials COMPLETE trials."""
    parents, children = _runs(out)
    statuses = sorted((r.data.tags.get("optuna.trial"), r.info.status) for r in children)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.status for p in parents]
    assert statuses == [(str(i), "FINISHED") for i in range(num_trials)], statuses
    for run in children:
        assert run.data.tags.get("trial.state") == "COMPLETE", run.data.tags
        steps = [step for step, _ in _history(out, run.info.run_id)]
        assert steps == list(range(1, epochs + 1)), (run.data.tags["optuna.trial"], steps)
        assert "val_pgd_first_acc" in run.data.metrics
    assert _study_states(sweep_dir) == ["COMPLETE"] * num_trials
    assert read_state(sweep_dir)["status"] == "FINISHED"
    return children


# --- 1 and 2: SIGKILL the driver, resume ------------------------------------------------


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-trial sweep whose driver got SIGKILL once a trial had finished and
    another had logged at least two epochs but not finished.

    Two, not one: Tune hands a result to the callbacks (our MLflow logging)
    first and saves its experiment state (which records the trial's latest
    checkpoint) at the end of the same controller step, so a kill right after
    MLflow shows epoch 1 can precede the first save; the trial then restarts
    from scratch, losing that one epoch (CI hit this once). After epoch 2 the
    saved state names a checkpoint, possibly one Tune has just deleted (CI hit
    that too): the trial then resumes from its successor."""
    tmp = tmp_path_factory.mktemp("killed")
    out, spec, log = tmp / "out", tmp / "tiny.yaml", tmp / "launch.log"
    spec.write_text(_spec(num_trials=4, max_concurrent=2))
    proc = _launch(spec, out, log)
    try:
        sweep_dir = _wait("sweep.json with the driver's pid", lambda: _sweep_dir(out), proc, log)
        state = read_state(sweep_dir)
        assert state["driver_pid"] == proc.pid and state["status"] == "RUNNING"

        def ready() -> Optional[dict]:
            _, children = _runs(out)
            finished = [r for r in children if r.info.status == "FINISHED"]
            partial = {r.info.run_id: _history(out, r.info.run_id) for r in children if r.info.status == "RUNNING"}
            partial = {k: h for k, h in partial.items() if 2 <= len(h) < EPOCHS}
            return {"finished": finished, "partial": partial} if finished and partial else None

        before = _wait("a finished trial and another one mid-training", ready, proc, log)
        ray_processes = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)  # reaped: a zombie would still look alive to `sweep status`
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The local Ray the driver started (GCS, raylet, the trial's worker) dies
    # with it, so no trial of the killed session writes on while the resume runs.
    deadline, leftovers = time.time() + 30, ray_processes
    while time.time() < deadline:
        leftovers = {k: c for k, c in _alive(ray_processes).items() if not c.startswith(LINGERING_AGENTS)}
        if not leftovers:
            break
        time.sleep(1)
    # What the kill left: runs still RUNNING, the journal with unfinished trials.
    _, children = _runs(out)
    return {"out": out, "spec": spec, "sweep_dir": sweep_dir, "log": log, "before": before,
            "running_after_kill": {r.info.run_id for r in children if r.info.status == "RUNNING"},
            "ray_leftovers": leftovers, "n_ray_processes": len(ray_processes)}


@pytest.fixture(scope="module")
def resumed(killed: dict[str, Any]) -> dict[str, Any]:
    sweep_id = killed["sweep_dir"].name
    # --spec with the spec as launched is accepted (output_dir is not compared).
    proc = _cli("resume", sweep_id, "--spec", str(killed["spec"]), "-o", str(killed["out"]))
    (killed["log"].parent / "resume.log").write_text(proc.stdout + proc.stderr)
    return {**killed, "resume": proc}


def test_killed_driver_shows_dead_and_leaves_no_ray_behind(killed: dict[str, Any]) -> None:
    sweep_dir = killed["sweep_dir"]
    proc = _cli("status", sweep_dir.name, "-o", str(killed["out"]))
    assert proc.returncode == 0, proc.stderr
    assert f"sweep {sweep_dir.name}: DEAD" in proc.stdout, proc.stdout
    assert f"continue with: sweep resume {sweep_dir.name}" in proc.stdout, proc.stdout
    assert killed["running_after_kill"], "the kill should leave the unfinished trial's run RUNNING"
    assert killed["n_ray_processes"] > 0
    assert not killed["ray_leftovers"], f"processes of the killed driver's Ray still running: {killed['ray_leftovers']}"


def test_resume_refuses_a_changed_spec(killed: dict[str, Any], tmp_path: Path) -> None:
    """Runs on the DEAD sweep (before the `resumed` fixture finishes it)."""
    changed = tmp_path / "changed.yaml"
    changed.write_text(killed["spec"].read_text().replace("num_trials: 4", "num_trials: 5"))
    proc = _cli("resume", killed["sweep_dir"].name, "--spec", str(changed), "-o", str(killed["out"]))
    assert proc.returncode == EXIT_INVALID, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {changed}: differs from the spec sweep {killed['sweep_dir'].name} was launched with")
    assert "search.num_trials: 4 -> 5" in lines[0], lines[0]

    nosuch = _cli("resume", "nosuch", "-o", str(killed["out"]))
    assert nosuch.returncode == EXIT_INVALID, nosuch.stdout + nosuch.stderr
    assert f"no sweep 'nosuch' under {killed['out']}; there are: {killed['sweep_dir'].name}" in nosuch.stderr, nosuch.stderr


def test_resume_after_sigkill_finishes_every_trial_once(resumed: dict[str, Any]) -> None:
    proc, out, sweep_dir = resumed["resume"], resumed["out"], resumed["sweep_dir"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "4 of 4 trials finished, 0 failed" in proc.stdout, proc.stdout[-3000:]
    children = _assert_complete(out, sweep_dir, num_trials=4, epochs=EPOCHS)
    by_id = {r.info.run_id: r for r in children}

    # Trials finished before the kill are kept as they were.
    for run in resumed["before"]["finished"]:
        assert by_id[run.info.run_id].data.metrics == run.data.metrics
    # The runs the kill left RUNNING were re-attached, not duplicated; epochs
    # logged before the kill kept their values.
    assert resumed["running_after_kill"] <= set(by_id)
    for run_id, history in resumed["before"]["partial"].items():
        assert _history(out, run_id)[: len(history)] == history
    _assert_distinct_configs(children)


def test_resumed_trial_continued_from_its_checkpoint(resumed: dict[str, Any]) -> None:
    """Tune restored the interrupted trial from its checkpoint: the resumed
    session's first report is a later iteration than its first since restore,
    and the epochs go on from the checkpoint's."""
    assert resumed["resume"].returncode == 0
    _, children = _runs(resumed["out"])
    numbers = {r.data.tags["optuna.trial"] for r in children if r.info.run_id in resumed["before"]["partial"]}
    assert numbers
    restored = []
    for result_file in (resumed["sweep_dir"] / TUNE_DIR).glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if str(rows[0]["config"]["_trial"]) not in numbers:
            continue
        resumes = [r for r in rows if r["iterations_since_restore"] == 1 and r["training_iteration"] > 1]
        assert resumes, f"{result_file}: no report after a restore from a checkpoint"
        # No epoch trained twice, none after the last, and the restore went on from a checkpoint, not from scratch.
        # (Not epoch == training_iteration: a trial resumed from the successor of a checkpoint Tune
        # deleted before saving its state, replicates._successor_states, has Tune's count one behind.)
        epochs = [r["epoch"] for r in rows]
        assert epochs == sorted(set(epochs)) and epochs[-1] == EPOCHS, [(r["epoch"], r["training_iteration"]) for r in rows]
        assert all(r["epoch"] > 1 for r in resumes), [(r["epoch"], r["training_iteration"]) for r in rows]
        restored.append(result_file)
    assert len(restored) == len(numbers)
    assert "from checkpoint" in resumed["resume"].stdout + resumed["resume"].stderr  # Tune's "Restored on ... from checkpoint: ..."


def test_resume_of_a_finished_sweep_is_refused(resumed: dict[str, Any]) -> None:
    assert resumed["resume"].returncode == 0
    proc = _cli("resume", resumed["sweep_dir"].name, "-o", str(resumed["out"]))
    assert proc.returncode == EXIT_INVALID, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"error: sweep {resumed['sweep_dir'].name} has finished; nothing to resume", proc.stderr


# --- 3: sweep stop, resume --------------------------------------------------------------


def test_sweep_stop_then_resume(tmp_path: Path) -> None:
    out, spec, log = tmp_path / "out", tmp_path / "tiny.yaml", tmp_path / "launch.log"
    epochs = 3
    spec.write_text(_spec(num_trials=3, max_concurrent=1, epochs=epochs))
    proc = _launch(spec, out, log)
    try:
        sweep_dir = _wait("sweep.json with the driver's pid", lambda: _sweep_dir(out), proc, log)

        def ready() -> bool:
            _, children = _runs(out)
            return any(r.info.status == "FINISHED" for r in children) and any(r.info.status == "RUNNING" for r in children)

        _wait("a finished trial and a running one", ready, proc, log)
        stop = _cli("stop", sweep_dir.name, "-o", str(out))
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert f"sent SIGINT to the driver of {sweep_dir.name} (pid {proc.pid})" in stop.stdout
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, log.read_text()[-3000:]
    parents, children = _runs(out)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children), [r.info.status for r in children]
    killed_runs = {r.info.run_id for r in children if r.info.status == "KILLED"}
    assert killed_runs
    status = _cli("status", sweep_dir.name, "-o", str(out))
    assert f"sweep {sweep_dir.name}: KILLED" in status.stdout, status.stdout

    resume = _cli("resume", sweep_dir.name, "-o", str(out))
    assert resume.returncode == 0, (resume.stdout + resume.stderr)[-5000:]
    children = _assert_complete(out, sweep_dir, num_trials=3, epochs=epochs)
    assert killed_runs <= {r.info.run_id for r in children}  # re-attached, not duplicated
    # The trial asked after the resume is a new configuration (fails: the
    # resumed sampler is re-seeded with the launch's seed and draws trial 0's values again).
    _assert_distinct_configs(children)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_resumed_searcher_draws_new_configurations(tmp_path: Path, sampler: str) -> None:
    """The searcher as Tune restores it on resume (unpickled, the study reopened
    from the journal) must not draw the configurations of trials already run."""
    import pickle

    from tuning.experiments import FINAL_KEY
    from tuning.searchers import OptunaSweepSearcher
    from tuning.space import Choice, LogUniform

    space = {"model.ind": Choice((0, 2)), "model.step_size": LogUniform(0.05, 0.2)}
    searcher = OptunaSweepSearcher(space, ["val_acc"], ["max"], sampler, 3, tmp_path / JOURNAL, "study")
    before = [searcher.suggest(f"t{i}") for i in range(2)]
    for i, config in enumerate(before):
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5, FINAL_KEY: True, "config": config})
    resumed = pickle.loads(pickle.dumps(searcher))
    after = resumed.suggest("t2")
    assert after["_trial"] == 2
    drawn = [{k: v for k, v in c.items() if k != "_trial"} for c in before]
    assert {k: v for k, v in after.items() if k != "_trial"} not in drawn, (after, before)


# --- 4: a trial retried from its last checkpoint ----------------------------------------


@pytest.fixture(scope="module")
def retried(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-trial sweep with max_failures 1 in process: trial 0 raises once at
    epoch 2, trial 1 once right after its final report (tests/tuning/faulty.py)."""
    from sweeps.spec import parse_sweep
    from tests.tuning import faulty
    from tuning.runner import launch_sweep

    faulty.register()
    out = tmp_path_factory.mktemp("retried")
    epochs = 3
    text = (_spec(num_trials=2, max_concurrent=2, epochs=epochs)
            .replace("experiment: cnnf", f"experiment: {faulty.KIND}")
            .replace("max_concurrent: 2", "max_concurrent: 2\n  max_failures: 1")
            .replace("resources:", f"output_dir: {out}\nresources:"))
    loaded = parse_sweep(text, "tiny.yaml")
    assert loaded.config.search.max_failures == 1
    outcome = launch_sweep(loaded.config, loaded.text)
    _, children = _runs(out)
    starts = [json.loads(line) for line in (outcome.output_dir / faulty.START_LOG).read_text().splitlines()]
    return {"out": out, "outcome": outcome, "epochs": epochs, "starts": starts,
            "runs": {r.data.tags["optuna.trial"]: r for r in children}}


def test_failed_trial_is_retried_from_its_last_checkpoint(retried: dict[str, Any]) -> None:
    from tests.tuning import faulty

    outcome, out = retried["outcome"], retried["out"]
    assert (outcome.status, outcome.n_finished, outcome.n_failed) == ("FINISHED", 2, 0)
    assert sorted(retried["runs"]) == ["0", "1"]  # one run per trial, retries included
    run = retried["runs"]["0"]
    assert (run.info.status, run.data.tags.get("trial.state")) == ("FINISHED", "COMPLETE")
    assert run.data.tags.get("retries") == "1", run.data.tags
    assert f"{faulty.MESSAGE} in trial 0 at epoch {faulty.FAIL_AT_EPOCH}" in run.data.tags.get("retry_1_error", "")
    assert "error" not in run.data.tags
    assert [s for s, _ in _history(out, run.info.run_id)] == list(range(1, retried["epochs"] + 1))
    # First start from scratch; the retry from the checkpoint of the last epoch reported before the fault.
    starts = [(s["checkpoint"], s["epoch"]) for s in retried["starts"] if s["trial"] == 0]
    assert starts == [(False, None), (True, faulty.FAIL_AT_EPOCH - 1)], retried["starts"]
    assert _study_states(outcome.output_dir) == ["COMPLETE", "COMPLETE"]


def test_trial_failing_after_its_final_report_logs_each_epoch_once(retried: dict[str, Any]) -> None:
    """A worker that dies after the final report (or a driver killed while the
    trial's run is being closed) restarts the trial from its final checkpoint:
    it evaluates again and reports the last epoch a second time. MLflow must
    still hold each epoch once, and one model."""
    from mlflow import MlflowClient

    from tests.tuning import faulty

    out, epochs = retried["out"], retried["epochs"]
    run = retried["runs"][str(faulty.FAIL_AFTER_FINAL)]
    assert (run.info.status, run.data.tags.get("trial.state"), run.data.tags.get("retries")) == ("FINISHED", "COMPLETE", "1")
    starts = [(s["checkpoint"], s["epoch"]) for s in retried["starts"] if s["trial"] == faulty.FAIL_AFTER_FINAL]
    assert starts == [(False, None), (True, epochs)], retried["starts"]
    client = MlflowClient(f"sqlite:///{out / MLFLOW_DB}")
    models = [m for m in client.search_logged_models([retried["outcome"].experiment_id]) if m.source_run_id == run.info.run_id]
    assert len(models) == 1
    for key in ("val_acc", "train_loss"):
        assert [s for s, _ in _history(out, run.info.run_id, key)] == list(range(1, epochs + 1)), key


# --- 5: a NaN loss fails its trial only -----------------------------------------------


# TINY_SWEEP with a grid over a sane and an exploding learning rate: both trials run.
NAN_SWEEP = (TINY_SWEEP.replace("    n_examples: 32\n", "    n_examples: 32\n    check_examples: 16\n")
             .replace("  model.ind: {choice: [0, 2]}\n  model.step_size: {loguniform: [0.05, 0.2]}\n",
                      "  train.lr: {choice: [1.0e-3, 1.0e+30]}\n")
             .replace("  metric: val_acc\n", "  metric: val_acc\n  sampler: grid\n"))


def test_nan_loss_fails_only_its_trial(tmp_path: Path) -> None:
    out, spec = tmp_path / "out", tmp_path / "nan.yaml"
    spec.write_text(NAN_SWEEP)
    proc = _cli("launch", str(spec), "-o", str(out))
    output = proc.stdout + proc.stderr
    parents, children = _runs(out)
    assert [p.info.status for p in parents] == ["FINISHED"], output[-3000:]
    by_lr = {float(r.data.params["train.lr"]): r for r in children}
    assert sorted(by_lr) == [1.0e-3, 1.0e30]
    good, bad = by_lr[1.0e-3], by_lr[1.0e30]
    assert (bad.info.status, bad.data.tags.get("trial.state")) == ("FAILED", "FAILED")
    assert "training loss became nan" in bad.data.tags["error"], bad.data.tags["error"]
    # The grid is exhausted when the second trial is told to Optuna: the
    # sampler must not turn that trial into a failure.
    assert (good.info.status, good.data.tags.get("trial.state")) == ("FINISHED", "COMPLETE"), good.data.tags.get("error")
    sweep_dir = next(out.glob("tiny-*"))
    assert sorted(_study_states(sweep_dir)) == ["COMPLETE", "FAIL"]
    assert proc.returncode == EXIT_FAILED, output[-5000:]
    assert "1 of 2 trials finished, 1 failed" in output, output[-3000:]
