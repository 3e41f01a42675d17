"""Names shared by the trials, the tracker, the searcher and the reports:
the keys a trial's config and reports carry, the report folder of its
checkpoint, and which metrics are the test split's.

The experiment kinds themselves are in `tuning.kinds`; this module imports
nothing, so whoever needs only these names imports no kind.
"""

from __future__ import annotations

# A trainable may write files (evaluation tables, plots) into this folder of
# its final checkpoint; the tracker logs them as the trial run's artifacts.
REPORT_DIR = "report"
TRIAL_KEY = "_trial"  # the Optuna trial number, in each Tune trial's config (not a config field)
FINAL_KEY = "final_report"  # true in the report of a trial that ran to its end (absent: stopped early)


def is_test_metric(name: str) -> bool:
    """Measured on the test split: reported, never optimised."""
    return name.startswith("test_")
