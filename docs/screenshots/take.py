"""Regenerate the README's screenshot: MLflow's run-comparison page of a sweep.

Runs the quickstart sweep (`make demo`'s) into a temporary folder, or takes
the folder of one already run (`--runs`, the folder holding `mlflow.db`),
starts the MLflow UI on it the way a user does (`mlflow ui
--backend-store-uri sqlite:///...`), opens the *Compare* page of the sweep's
trial runs in headless Chromium and saves what it shows.

    .venv/bin/python docs/screenshots/take.py                 # runs the quickstart first (~3 min)
    .venv/bin/python docs/screenshots/take.py --runs runs      # an existing output folder

Needs Chromium (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "mlflow-compare.png"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: the MLflow UI did not answer at {url} within {seconds:.0f} s")


def compare_url(base: str, tracking_uri: str, max_runs: int) -> str:
    """The Compare page of the latest sweep's finished trial runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`sweep.id` != ''", order_by=["attributes.start_time DESC"], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # a sweep's parent run has no parent
    if not parents:
        raise SystemExit(f"error: {tracking_uri}: no sweep's parent run found")
    parent = parents[0]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time ASC"], max_results=max_runs)
    if len(children) < 2:
        raise SystemExit(f"error: sweep {parent.info.run_name!r} has {len(children)} finished trial runs; Compare needs two")
    query = {"runs": json.dumps([r.info.run_id for r in children]), "experiments": json.dumps([parent.info.experiment_id])}
    return f"{base}/#/compare-runs?{urllib.parse.urlencode(query)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, help="a sweep output folder holding mlflow.db (default: run the quickstart)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--max-runs", type=int, default=6)
    parser.add_argument("--size", default="1600,1100", help="window width,height in pixels")
    args = parser.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise SystemExit(f"error: no Chromium found (looked for {', '.join(BROWSERS)}); Debian: apt-get install chromium")
    work = Path(tempfile.mkdtemp(prefix="cnnf-screenshot-"))
    runs = args.runs
    if runs is None:
        runs = work / "runs"
        print(f"running the quickstart into {runs} ...", flush=True)
        subprocess.run([sys.executable, "-m", "sweeps.cli", "launch", str(REPO / "sweeps/examples/quickstart.yaml"),
                        "--output-dir", str(runs)], cwd=REPO, check=True)
    db = runs / "mlflow.db"
    if not db.is_file():
        raise SystemExit(f"error: {db}: no MLflow store (expected the output folder of a sweep)")
    tracking_uri = f"sqlite:///{db.resolve()}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=(work / "mlflow-ui.log").open("w"))
    try:
        wait_for(f"{base}/health", 60)
        url = compare_url(base, tracking_uri, args.max_runs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={args.size}", "--virtual-time-budget=30000", f"--screenshot={args.out.resolve()}", url],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out} from {url}")


if __name__ == "__main__":
    main()
