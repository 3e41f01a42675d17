"""`sweep`: the command line, thin typed functions over library calls.

Ray, Optuna and MLflow are imported inside `launch` only, so `--help` and
`sweep validate` stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False, no_args_is_help=True,
    help="Ablation sweeps of feedback-based robustness defenses (CNN-F, feedback learning) on Ray Tune + Optuna + MLflow.",
)
out = Console(highlight=False, markup=False)  # messages carry user text such as [low, high]
err = Console(stderr=True, highlight=False, markup=False)

EXIT_INVALID = 2  # the input is wrong: nothing was started or written
EXIT_FAILED = 1  # the sweep ran but a trial failed or none finished
EXIT_INTERRUPTED = 130  # stopped with Ctrl-C; finished trials are kept


def _load(file: Path):  # -> LoadedSweep
    from sweeps.spec import SpecError, load_sweep

    try:
        return load_sweep(file)
    except SpecError as exc:
        err.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None


@app.command()
def validate(file: Path = typer.Argument(..., help="sweep YAML file")) -> None:
    """Check a sweep file (and that its data is there) without running anything."""
    loaded = _load(file)
    c = loaded.config
    from cnnf.data import DataNotFoundError
    from tuning.experiments import experiment_kind

    try:
        experiment_kind(c.experiment).preflight(c.base)
    except DataNotFoundError as exc:
        err.print(f"error: {file}: base.data: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None
    params = ", ".join(c.space)
    out.print(f"ok: {file}: sweep {c.name!r}, {c.search.num_trials} {c.experiment} trials "
              f"({c.search.max_concurrent} at a time) over {params}; objective {c.search.metric} ({c.search.mode})", soft_wrap=True)


@app.command()
def launch(
    file: Path = typer.Argument(..., help="sweep YAML file"),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="override the spec's output_dir"),
) -> None:
    """Run a sweep on a local Ray instance and record it in MLflow."""
    import dataclasses

    loaded = _load(file)
    config = loaded.config
    if output_dir is not None:
        config = dataclasses.replace(config, output_dir=str(output_dir))

    from cnnf.data import DataNotFoundError
    from tuning.runner import LaunchError, launch_sweep

    try:
        outcome = launch_sweep(config, loaded.text, spec_path=file.resolve())
    except (DataNotFoundError, LaunchError) as exc:
        err.print(f"error: {exc}", soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None

    out.print()
    state = "interrupted" if outcome.status == "KILLED" else outcome.status.lower()
    out.print(f"sweep {outcome.sweep_id} {state}: {outcome.n_finished} of {outcome.n_requested} trials finished, "
              f"{outcome.n_failed} failed; outputs in {outcome.output_dir}", style="bold", soft_wrap=True)
    if outcome.best is not None:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in outcome.best.params.items())
        out.print(f"best trial {outcome.best.trial_id}: {outcome.metric}={outcome.best.value:.4f} ({outcome.mode}) with {params}", soft_wrap=True)
        out.print("open it in the MLflow UI:", soft_wrap=True)
        out.print(f"  {outcome.ui_command}", soft_wrap=True)
        out.print(f"  then browse {outcome.best_url}", soft_wrap=True)
    if outcome.status == "KILLED":
        out.print("the finished trials are recorded; an interrupted sweep cannot be resumed yet, launch it again", soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if outcome.best is None:
        err.print("error: no trial finished with the objective; see the trial errors above")
        raise typer.Exit(EXIT_FAILED)
    if outcome.n_failed:
        raise typer.Exit(EXIT_FAILED)


if __name__ == "__main__":
    app()
