"""`sweep`: the command line, thin typed functions over library calls.

Ray, Optuna and MLflow are imported inside `launch` only, so `--help` and
`sweep validate` stay fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Ablation sweeps of feedback-based robustness defenses (CNN-F, feedback learning) on Ray Tune + Optuna + MLflow.",
)
# Messages carry text from the user's file, such as [low, high] or :name:, printed as is.
out = Console(highlight=False, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, markup=False, emoji=False)

EXIT_INVALID = 2  # the input is wrong: nothing was started or written
EXIT_FAILED = 1  # the sweep ran but a trial failed or none finished
EXIT_INTERRUPTED = 130  # stopped with Ctrl-C; finished trials are kept


def _load(file: Path, *, warn: bool = False):  # -> LoadedSweep
    """The validated spec, or exit 2 with one `error:` line per problem;
    `warn`: print its warnings (what this host makes slow) too."""
    from sweeps.spec import SpecError, load_sweep

    try:
        loaded = load_sweep(file)
    except SpecError as exc:
        _fail(exc)
    except Exception as exc:  # noqa: BLE001  a bug in the checks must not show the user a traceback for their file
        err.print(f"error: {file}: the spec could not be checked ({type(exc).__name__}: {exc}); "
                  "this is a bug in sweep, please report it with the file", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    if warn:
        for warning in loaded.warnings:
            err.print(f"warning: {warning}", soft_wrap=True)
    return loaded


@app.command()
def validate(file: Path = typer.Argument(..., help="sweep YAML file")) -> None:
    """Check a sweep file (and that its data is there) without running anything."""
    loaded = _load(file, warn=True)
    c = loaded.config
    from cnnf.datafiles import DataNotFoundError
    from tuning.kinds import experiment_kind

    try:
        experiment_kind(c.experiment).preflight(c.base)
    except DataNotFoundError as exc:
        err.print(f"error: {file}: base.data: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    params = ", ".join(c.space)
    objective = ", ".join(f"{m} ({d})" for m, d in zip(c.search.metrics, c.search.modes))
    extras = [f"{c.search.replicates} seeds each"] if c.search.replicates > 1 else []
    extras += [f"scheduler {c.scheduler.name}"] if c.scheduler.name != "fifo" else []
    out.print(f"ok: {file}: sweep {c.name!r}, {c.search.num_trials} {c.experiment} trials "
              f"({c.search.max_concurrent} at a time{''.join(', ' + e for e in extras)}) over {params}; "
              f"objective {objective}; sampler {c.search.sampler}", soft_wrap=True)


ROOT_HELP = "folder holding the sweeps (the spec's output_dir)"


def _outcome(outcome) -> None:  # SweepOutcome -> exit code
    out.print()
    from tuning.status import SweepStatus

    state = "interrupted" if outcome.status == SweepStatus.KILLED else outcome.status.lower()
    pruned = f", {outcome.n_pruned} stopped early" if outcome.n_pruned else ""
    out.print(f"sweep {outcome.sweep_id} {state}: {outcome.n_finished} of {outcome.n_requested} trials finished{pruned}, "
              f"{outcome.n_failed} failed; outputs in {outcome.output_dir}", style="bold", soft_wrap=True)
    if outcome.stop_reason:
        out.print(f"stopped early: {outcome.stop_reason}", soft_wrap=True)
    if outcome.best is not None:
        std = outcome.best.metrics.get(f"{outcome.metric}_std")
        value = f"{outcome.best.value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
        out.print(f"best trial {outcome.best.trial_id}: {outcome.metric}={value} ({outcome.mode}) with {_params(outcome.best.params)}",
                  soft_wrap=True)
    if outcome.pareto:
        metrics = outcome.metric.split(",")
        out.print(f"Pareto front ({outcome.metric}; {outcome.mode}): {len(outcome.pareto)} trials", soft_wrap=True)
        for t in outcome.pareto:
            values = ", ".join(f"{m}={t.metrics[m]:.4f}" for m in metrics)
            out.print(f"  trial {t.trial_id}: {values} with {_params(t.params)}", soft_wrap=True)
    if outcome.best is not None or outcome.pareto:
        out.print("open it in the MLflow UI:", soft_wrap=True)
        out.print(f"  {outcome.ui_command}", soft_wrap=True)
        if outcome.experiment_url:
            out.print(f"  then browse {outcome.experiment_url} (the sweep's runs)", soft_wrap=True)
        if outcome.best_url:
            out.print(f"  or {outcome.best_url} (the best trial)", soft_wrap=True)
    if outcome.status == SweepStatus.KILLED:
        from tuning.folder import JOBS_ADDRESS_ENV

        jobs = os.environ.get(JOBS_ADDRESS_ENV)  # running as a Ray job: resume as one
        where = f"--address {jobs}" if jobs else f"-o {outcome.output_dir.parent}"
        out.print(f"the finished trials are recorded; continue with: sweep resume {outcome.sweep_id} {where}", soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if outcome.best is None and not outcome.pareto:
        err.print("error: no trial finished with the objective; see the trial errors above")
        raise typer.Exit(EXIT_FAILED)
    if outcome.n_failed:
        raise typer.Exit(EXIT_FAILED)


TRACKING_HELP = "override the spec's tracking.uri, e.g. http://HEAD:5000 (an mlflow server)"


def _override(config, output_dir: Optional[Path], tracking_uri: Optional[str]):  # -> SweepConfig
    import dataclasses

    if output_dir is not None:
        config = dataclasses.replace(config, output_dir=str(output_dir))
    if tracking_uri is not None:
        config = dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, uri=tracking_uri))
    return config


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _fail(exc: Exception) -> NoReturn:
    """Exit 2 after one `error:` line per problem of a SpecError (or the one line of another error)."""
    from sweeps.spec import SpecError

    for line in exc.lines() if isinstance(exc, SpecError) else [str(exc)]:
        err.print(f"error: {line}", soft_wrap=True)
    raise typer.Exit(EXIT_INVALID) from None


@app.command()
def launch(
    file: Path = typer.Argument(..., help="sweep YAML file"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="override the spec's output_dir"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: a local Ray"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    sweep_id: Optional[str] = typer.Option(None, "--sweep-id", hidden=True, help="the sweep folder's name (set by sweep submit)"),
) -> None:
    """Run a sweep (Ray Tune + Optuna) here and record it in MLflow; `--address` joins an existing Ray cluster."""
    loaded = _load(file, warn=True)
    config = _override(loaded.config, output_dir, tracking_uri)

    from cnnf.datafiles import DataNotFoundError
    from tuning.runner import LaunchError, launch_sweep

    try:
        outcome = launch_sweep(config, loaded.text, spec_path=file.resolve(), address=address, sweep_id=sweep_id)
    except (DataNotFoundError, LaunchError) as exc:
        _fail(exc)
    _outcome(outcome)


def _env(pairs: list[str]) -> dict[str, str]:
    out_env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            err.print(f"error: --env {pair!r}: expected KEY=VALUE")
            raise typer.Exit(EXIT_INVALID)
        out_env[key] = value
    return out_env


def _submitted(job, client, address: str, *, wait: bool, start_timeout_s: float) -> None:
    from tuning.jobs import follow_logs, wait_started
    from tuning.runner import LaunchError

    out.print(f"submitted sweep {job.sweep_id} as Ray job {job.job_id} to {address}", style="bold", soft_wrap=True)
    try:
        if wait:
            final = follow_logs(client, address, job.job_id)
            out.print(f"Ray job {job.job_id}: {final.status}", soft_wrap=True)
            if final.status != "SUCCEEDED":
                raise typer.Exit(EXIT_INTERRUPTED if final.status == "STOPPED" else EXIT_FAILED)
            return
        started = wait_started(client, address, job, start_timeout_s)
    except LaunchError as exc:
        _fail(exc)
    if started.status == "PENDING":
        out.print(f"the job is still PENDING after {start_timeout_s:g} s (its runtime environment is being set up, "
                  "or the cluster is busy)", soft_wrap=True)
    else:
        out.print(f"running: trials go to MLflow at {job.tracking_uri}, the sweep folder is {job.output_root}/{job.sweep_id}",
                  soft_wrap=True)
    out.print(f"  sweep status {job.sweep_id} --address {address}", soft_wrap=True)
    out.print(f"  sweep logs {job.sweep_id} --address {address} --follow", soft_wrap=True)
    out.print(f"  sweep stop {job.sweep_id} --address {address}", soft_wrap=True)


@app.command()
def submit(
    file: Path = typer.Argument(..., help="sweep YAML file (inside the working directory)"),
    address: str = typer.Option(..., "--address", help="the cluster's dashboard (Ray Jobs) address, http://HEAD:8265"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o",
                                              help="override the spec's output_dir: an absolute path on storage every node mounts"),
    working_dir: Path = typer.Option(Path("."), "--working-dir", help="folder uploaded with the job (outputs, .venv, .git left out)"),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the job's environment, e.g. CNNF_DATA_ROOT=/shared/data (repeatable)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    wait: bool = typer.Option(False, "--wait", help="stream the job's logs until it ends; exit with its outcome"),
    start_timeout: float = typer.Option(300.0, "--start-timeout", help="seconds to wait for the sweep to start"),
) -> None:
    """Run a sweep on a Ray cluster as a Ray job; prints the job id (the sweep id)."""
    config = _override(_load(file).config, output_dir, tracking_uri)

    from sweeps.submit import submit_sweep
    from tuning.runner import LaunchError

    try:
        job, client = submit_sweep(config, file, address=address, working_dir=working_dir, env=_env(env))
    except LaunchError as exc:
        _fail(exc)
    _submitted(job, client, address, wait=wait, start_timeout_s=start_timeout)


@app.command()
def resume(
    name: str = typer.Argument(..., help="sweep id (<name>-<timestamp>), name (its latest launch) or folder"),
    spec: Optional[Path] = typer.Option(None, "--spec", help="refuse unless this spec equals the one the sweep was launched with"),
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help=ROOT_HELP),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (auto, HOST:6379, ray://...), "
                                          "or a dashboard http://HEAD:8265 to resume a submitted sweep as a new Ray job"),
    working_dir: Path = typer.Option(Path("."), "--working-dir", help="with a dashboard address: the folder uploaded with the job"),
    env: list[str] = typer.Option([], "--env", help="with a dashboard address: KEY=VALUE for the job's environment (repeatable)"),
) -> None:
    """Finish an interrupted sweep: exactly the requested trials, none twice, unfinished ones from their checkpoints."""
    from cnnf.datafiles import DataNotFoundError
    from sweeps.spec import SpecError
    from sweeps.stored import stored_config
    from tuning.runner import LaunchError, find_sweep, resume_sweep

    from tuning.cluster import is_dashboard

    if is_dashboard(address):
        from sweeps.submit import submit_resume

        try:
            job, client = submit_resume(name, address=address, working_dir=working_dir, env=_env(env))
        except LaunchError as exc:
            _fail(exc)
        _submitted(job, client, address, wait=False, start_timeout_s=300)
        return
    try:
        folder = find_sweep(name, output_dir)
        text = spec.read_text() if spec is not None else None
        outcome = resume_sweep(folder, stored_config(folder, text, str(spec)), address=address)
    except (DataNotFoundError, LaunchError, SpecError, OSError) as exc:
        _fail(exc)
    _outcome(outcome)


JOB_ADDRESS_HELP = "a cluster's dashboard, http://HEAD:8265: the sweep's Ray job"


@app.command()
def stop(
    name: str = typer.Argument(..., help="sweep id, name or folder"),
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help=ROOT_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=JOB_ADDRESS_HELP),
    wait: float = typer.Option(0.0, "--wait", help="with --address: seconds to wait for the job to end"),
) -> None:
    """Stop a running sweep gracefully (it can be resumed)."""
    from tuning.folder import LaunchError, find_sweep, stop_sweep

    try:
        if address is not None:
            from tuning.jobs import TERMINAL, stop_job

            job = stop_job(address, name, wait_s=wait)
            ended = f"; the job is {job.status}" if job.status in TERMINAL else ""
            out.print(f"asked Ray to stop job {job.job_id} of sweep {job.sweep_id}: SIGINT to its driver, which saves Tune's "
                      f"state and closes the MLflow runs{ended}; continue with: sweep resume {job.sweep_id} --address {address}",
                      soft_wrap=True)
            return
        out.print(stop_sweep(find_sweep(name, output_dir)), soft_wrap=True)
    except LaunchError as exc:
        _fail(exc)


def _counts(c: dict) -> str:  # TrialOutcome -> n
    from tuning.status import TrialOutcome as T

    return f"{c[T.COMPLETE]} complete, {c[T.PRUNED]} pruned, {c[T.FAILED]} failed, {c[T.RUNNING]} running"


@app.command()
def status(
    name: str = typer.Argument(..., help="sweep id, name or folder"),
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help=ROOT_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=JOB_ADDRESS_HELP),
) -> None:
    """Trials by state and the best so far (and, with --address, the sweep's Ray job)."""
    from tuning.folder import LaunchError, find_sweep, sweep_info
    from tuning.status import SweepStatus, TrialOutcome

    try:
        if address is not None:
            from tuning.jobs import latest_job, local_folder

            job = latest_job(address, name)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time)) if job.start_time else "-"
            out.print(f"sweep {job.sweep_id}: Ray job {job.job_id} ({job.kind}) {job.status}, started {when}, at {address}",
                      style="bold", soft_wrap=True)
            if job.message and job.status != "RUNNING":
                out.print(f"job: {job.message.splitlines()[0]}", soft_wrap=True)
            folder = local_folder(job)
            if folder is None:
                out.print(f"the sweep's folder {job.output_root}/{job.sweep_id} is not visible from here; "
                          f"its trials are in MLflow at {job.tracking_uri}", soft_wrap=True)
                if job.tracking_uri.startswith(("http://", "https://")):
                    from tuning.tracking import sweep_counts

                    c = sweep_counts(job.tracking_uri, job.sweep_id)
                    out.print(f"trials in MLflow: {_counts(c)}, {c[TrialOutcome.KILLED]} interrupted", soft_wrap=True)
                return
            info = sweep_info(folder)
        else:
            info = sweep_info(find_sweep(name, output_dir))
    except LaunchError as exc:
        _fail(exc)
    driver = f", driver pid {info.driver_pid}" if info.driver_pid else ""
    out.print(f"sweep {info.sweep_id}: {info.status}{driver}; folder {info.path}", style="bold", soft_wrap=True)
    out.print(f"trials: {_counts(info.counts)}, of {info.n_requested} requested", soft_wrap=True)
    if info.best is not None:
        number, values, params = info.best
        shown = ", ".join(f"{m}={v:.4f} ({d})" for m, v, d in zip(info.metrics, values, info.modes))
        label = "best so far" if len(info.metrics) == 1 else "a Pareto-optimal trial"
        out.print(f"{label}: trial {number}: {shown} with {_params(params)}", soft_wrap=True)
    if info.status == SweepStatus.DEAD:
        out.print(f"the driver died; continue with: sweep resume {info.sweep_id} -o {info.path.parent}", soft_wrap=True)


@app.command()
def logs(
    name: str = typer.Argument(..., help="sweep id or name"),
    address: str = typer.Option(..., "--address", help=JOB_ADDRESS_HELP),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream until the job ends"),
) -> None:
    """The driver's output (Tune's table, the summary) of a submitted sweep's latest Ray job."""
    from tuning.jobs import print_logs
    from tuning.runner import LaunchError

    try:
        print_logs(address, name, follow)
    except LaunchError as exc:
        _fail(exc)


@app.command("ls")
def list_(output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help=ROOT_HELP)) -> None:
    """The sweeps under the output folder."""
    from rich.table import Table

    from tuning.folder import list_sweeps
    from tuning.status import TrialOutcome

    infos = list_sweeps(output_dir)
    if not infos:
        out.print(f"no sweeps under {output_dir}")
        return
    table = Table("sweep", "status", "complete", "pruned", "failed", "requested", "objective", "best")
    for i in infos:
        best = "-" if i.best is None else ", ".join(f"{v:.4f}" for v in i.best[1]) + f" (trial {i.best[0]})"
        table.add_row(i.sweep_id, i.status, str(i.counts[TrialOutcome.COMPLETE]), str(i.counts[TrialOutcome.PRUNED]),
                      str(i.counts[TrialOutcome.FAILED]), str(i.n_requested), ",".join(i.metrics), best)
    out.print(table)


@app.command()
def report(
    name: str = typer.Argument(..., help="sweep id, name or folder"),
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help=ROOT_HELP),
) -> None:
    """Write the sweep's Markdown report (paper-format tables, best configurations, Pareto front) and log it to MLflow."""
    from sweeps.report import build_report
    from tuning.runner import LaunchError, find_sweep

    try:
        path = build_report(find_sweep(name, output_dir))
    except LaunchError as exc:
        _fail(exc)
    out.print(f"report: {path} (also on the sweep's MLflow parent run under report/)", soft_wrap=True)


if __name__ == "__main__":
    app()
