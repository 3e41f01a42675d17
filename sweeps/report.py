"""`sweep report`: a Markdown report of a sweep from its MLflow store.

The trials in the paper's table format (the evaluation toolkit's tables,
each configuration's replicates as mean +- std), the best configurations,
the Pareto front with its plot, and the trial states. Written next to the
sweep (`report.md`, `pareto.png`) and logged on the parent run under
`report/`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from cnnf.report import EvalReport
from cnnf.tables import cnnf_table, fl_table
from sweeps.spec import parse_sweep
from tuning.folder import SPEC_FILE, read_state
from tuning.status import TrialOutcome
from tuning.tracking import SweepTracker, TrialRecord, trial_counts

REPORT_FILE = "report.md"
TOP_K = 5


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _value(r: TrialRecord, metric: str) -> str:
    v = r.metrics.get(metric)
    if v is None:
        return "-"
    std = r.metrics.get(f"{metric}_std")
    return f"{v:.4f} ± {std:.4f}" if std is not None and math.isfinite(std) else f"{v:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _eval_reports(tracker: SweepTracker, run_id: str) -> Optional[list[list[EvalReport]]]:
    """[[val, test] per replicate] from the run's report/eval.json, if it has one."""
    text = tracker.run_file(run_id, "report/eval.json")
    return None if text is None else [[EvalReport.from_dict(d) for d in pair] for pair in json.loads(text)]


def build_report(sweep_dir: Path, log_to_mlflow: bool = True) -> Path:
    """Write <sweep>/report.md (and pareto.png for several objectives); returns its path."""
    from tuning.pareto import pareto_front, plot_pareto

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    sweep_dir = Path(sweep_dir)
    state = read_state(sweep_dir)
    cfg = parse_sweep((sweep_dir / SPEC_FILE).read_text(), str(sweep_dir / SPEC_FILE)).config
    tracker = SweepTracker(state["tracking_uri"], "", experiment_id=state["experiment_id"])
    tracker.parent_run_id = state["parent_run_id"]
    records = tracker.records()
    counts = trial_counts(records)
    s = cfg.search
    metrics, modes = s.metrics, s.modes
    params = list(cfg.space)
    complete = [r for r in records if r.complete and all(m in r.metrics for m in metrics)]
    text = [f"# Sweep {state['sweep_id']}\n",
            f"- experiment: `{cfg.experiment}`; objective: " + ", ".join(f"`{m}` ({d})" for m, d in zip(metrics, modes)),
            f"- sampler `{s.sampler}` (seed {state['seed']}), scheduler `{cfg.scheduler.name}`, "
            f"{s.replicates} replicate(s) per configuration, {s.num_trials} trials requested",
            f"- status: {state.get('status')}" + (f" ({state['stop_reason']})" if state.get("stop_reason") else ""),
            "- trials: " + ", ".join(f"{n} {label}" for label, n in (
                ("complete", counts[TrialOutcome.COMPLETE]),
                ("pruned (stopped early)", counts[TrialOutcome.PRUNED]),
                ("failed", counts[TrialOutcome.FAILED]),
                ("interrupted", counts[TrialOutcome.KILLED] + counts[TrialOutcome.RUNNING]))),
            f"- MLflow: `{state['tracking_uri']}`, experiment {state['experiment_id']}, parent run `{state['parent_run_id']}`\n"]
    artifacts: list[Path] = []
    if s.multi_objective:
        front = pareto_front(records, metrics, modes)
        text += [f"## Pareto front ({len(front)} of {len(complete)} complete trials)\n",
                 _table(["trial", *params, *metrics], [[r.trial_id, *(_fmt(r.params.get(p, "-")) for p in params),
                                                      *(_value(r, m) for m in metrics)] for r in front]), ""]
        if plot_pareto(records, front, metrics, modes, sweep_dir / "pareto.png"):
            text.append("![Pareto front](pareto.png)\n")
            artifacts.append(sweep_dir / "pareto.png")
    metric, mode = metrics[0], modes[0]
    ranked = sorted(complete, key=lambda r: r.metrics[metric], reverse=(mode == "max"))
    text += [f"## Best configurations by `{metric}`\n",
             _table(["rank", "trial", *params, *(m for m in metrics)],
                    [[str(i + 1), r.trial_id, *(_fmt(r.params.get(p, "-")) for p in params), *(_value(r, m) for m in metrics)]
                     for i, r in enumerate(ranked[:TOP_K])]), ""]
    rows_val: list[tuple[str, list[EvalReport]]] = []
    rows_test: list[tuple[str, list[EvalReport]]] = []
    for r in ranked:
        reports = _eval_reports(tracker, r.run_id)
        if reports:
            name = f"trial {r.trial_id}: " + ", ".join(f"{p.split('.')[-1]}={_fmt(r.params[p])}" for p in params if p in r.params)
            rows_val.append((name, [pair[0] for pair in reports]))
            rows_test.append((name, [pair[1] for pair in reports]))
    if rows_val:
        table = fl_table if cfg.experiment == "fl" else cnnf_table
        text += ["## Robustness of every complete trial (paper format)\n",
                 "Replicates of a configuration are shown as mean ± std over their seeds.\n",
                 "### Validation split (what the sweep optimised)\n", table(rows_val),
                 "\n### Test split (reporting only; never used for selection)\n", table(rows_test), ""]
    failed = [r for r in records if r.outcome == TrialOutcome.FAILED]
    if failed:
        errors = {r.run_id: tracker.run_tag(r.run_id, "error") for r in failed}
        text += ["## Failed trials\n", _table(["trial", *params, "error"],
                                              [[r.trial_id, *(_fmt(r.params.get(p, "-")) for p in params),
                                                errors[r.run_id].replace("|", "/")[:200]] for r in failed]), ""]
    path = sweep_dir / REPORT_FILE
    path.write_text("\n".join(text) + "\n")
    if log_to_mlflow:
        tracker.log_parent_files([path, *artifacts], "report")
    return path
