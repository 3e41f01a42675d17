"""The experiment kinds as a package: importing `tuning.kinds` registers every
kind without importing torch or Ray (the spec loader and `sweep --help`
import it); looking a kind up builds it once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tuning.kinds as kinds

    out = {"names": kinds.experiment_names(), "heavy": sorted(m for m in ("torch", "ray", "optuna", "mlflow") if m in sys.modules)}
    kind = kinds.experiment_kind("fl")
    out["same"] = kind is kinds.experiment_kind("fl")
    out["ray_after_lookup"] = "ray" in sys.modules
    print(json.dumps(out))
    """
)


def test_registering_the_kinds_imports_neither_torch_nor_ray() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["names"] == ["cnnf", "fl"]
    assert out["heavy"] == []
    assert out["same"] and not out["ray_after_lookup"]


def test_a_replicates_seed_is_the_kinds() -> None:
    from cnnf.config import ExperimentConfig
    from fl.config import FLConfig
    from tuning.kinds import experiment_kind
    from tuning.kinds.cnnf import _seeded_cnnf
    from tuning.kinds.fl import _seeded_fl

    cnnf, fl = experiment_kind("cnnf"), experiment_kind("fl")
    assert [cnnf.replicate_seed(_seeded_cnnf(ExperimentConfig(), i)) for i in range(3)] == [0, 1, 2]
    base = FLConfig()
    assert [fl.replicate_seed(_seeded_fl(base, i)) for i in range(3)] == [base.retrain.seed + i for i in range(3)]
