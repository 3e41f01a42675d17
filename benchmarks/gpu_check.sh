#!/usr/bin/env bash
# The GPU check in one command on a bare GPU machine (docs/cluster/gpu-check.md).
#
#   bash benchmarks/gpu_check.sh [run] [gpu_check.py options]   install what is missing, then run the check
#   bash benchmarks/gpu_check.sh install                          install only, then import ray, optuna, mlflow, pydantic
#   bash benchmarks/gpu_check.sh stage                            copy the carried parts to $GPU_STAGE for a later call
#
# Install: the packed site that `make gpu-wheels` wrote to .gpu-wheels/carry (its parts may be split over
# this folder and $GPU_STAGE, filled by an earlier `stage` call) is checked and unpacked into $GPU_SITE;
# else the wheels in .gpu-wheels/wheels are installed there with pip (no index, no dependencies); else,
# if ray, optuna, mlflow and pydantic already import, nothing is installed. The repository is not
# installed: it goes on PYTHONPATH after $GPU_SITE (gpu_check.py passes it on to the sweeps and Ray).
#
# Environment: PYTHON (default python3), GPU_SITE (default /tmp/site), GPU_STAGE (default
# /tmp/gpu-check-stage), OUT (the output folder, default ./gpu-check-out; the device tool sets it).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/site}
STAGE=${GPU_STAGE:-/tmp/gpu-check-stage}
CARRY=.gpu-wheels/carry
WHEELS=.gpu-wheels/wheels
OUT=${OUT:-$PWD/gpu-check-out}
mode=run
if [[ $# -gt 0 && $1 != -* ]]; then mode=$1; shift; fi

imports() {  # the packages the check needs beyond the machine's own, with their versions and places
    PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c '
import sys, ray, optuna, mlflow, pydantic
print(f"python {sys.version.split()[0]}: ray {ray.__version__}, optuna {optuna.__version__}, mlflow {mlflow.__version__}, "
      f"pydantic {pydantic.__version__} (ray from {ray.__path__[0]})")'
}

install() {
    local t0=$SECONDS
    if [[ -f $CARRY/manifest.json || -f $STAGE/manifest.json ]]; then
        "$PYTHON" benchmarks/gpu_wheels.py --unpack "$SITE" --parts-from "$CARRY" "$STAGE"
    elif compgen -G "$WHEELS/*.whl" >/dev/null; then
        rm -rf "$SITE"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl
        echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
    elif imports >/dev/null 2>&1; then
        echo "nothing to install: ray, optuna, mlflow and pydantic import already"
    else
        echo "gpu_check.sh: nothing to install from: no $CARRY/manifest.json, no $STAGE/manifest.json, no $WHEELS/*.whl, and ray/optuna/mlflow/pydantic do not import; run 'make gpu-wheels' where pip works and bring .gpu-wheels/carry" >&2
        exit 2
    fi
    imports
    echo "install: $((SECONDS - t0)) s"
}

case $mode in
    stage)
        if [[ ! -f $CARRY/manifest.json ]]; then
            echo "gpu_check.sh stage: $CARRY/manifest.json: not here; carry .gpu-wheels/carry (make gpu-wheels writes it)" >&2
            exit 2
        fi
        mkdir -p "$STAGE"
        cp "$CARRY"/* "$STAGE"/
        echo "staged in $STAGE: $(ls "$STAGE" | tr '\n' ' ')"
        ;;
    install)
        install
        ;;
    run)
        install
        mkdir -p "$OUT"
        export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
        "$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
        exit "${PIPESTATUS[0]}"
        ;;
    *)
        echo "gpu_check.sh: unknown mode '$mode': run, install or stage" >&2
        exit 2
        ;;
esac
