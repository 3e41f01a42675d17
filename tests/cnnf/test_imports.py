"""House style 4: cnnf imports only torch, torchvision, numpy and the stdlib."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cnnf.conftest import REPO

MODULES = ["cnnf", "cnnf.config", "cnnf.data", "cnnf.models", "cnnf.train", "cnnf.evaluate", "cnnf.attacks", "cnnf.functional", "cnnf.layers"]
FORBIDDEN = ["ray", "optuna", "mlflow", "tuning", "sweeps", "typer", "pydantic", "yaml"]


def test_cnnf_does_not_import_the_tuning_stack() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))\n"
        "print(json.dumps('cnnf.models.fmnist' in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded, registered = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert loaded == [], f"cnnf pulled in {loaded}"
    assert registered is True  # the import did happen (a vacuous run would pass the check above)
