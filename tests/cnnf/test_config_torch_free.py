"""Configs are the ground floor: building and validating `cnnf.config` and
`fl.config` objects reads `cnnf.catalog` and imports no torch, nor does the
data-availability preflight (`cnnf.datafiles`), and the catalog describes
exactly what the torch side registers."""

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
    from dataclasses import replace

    from cnnf import catalog
    from cnnf.config import ConfigError, DataConfig, EvalConfig, ExperimentConfig, ModelConfig, TrainConfig
    from fl.config import FLConfig, SearchConfig
    from cnnf.datafiles import DataNotFoundError, check_available

    def error(build):
        try:
            build()
        except ConfigError as exc:
            return [exc.field, str(exc)]
        return None

    out = {"built": 0, "errors": {}}
    for ds in catalog.dataset_names():
        DataConfig(dataset=ds).__post_init__()  # validate() again on the frozen instance
        out["built"] += 1
    for arch in catalog.model_names():
        info = catalog.model_info(arch)
        for ind in info.legal_inds:
            ModelConfig(arch=arch, ind=ind, recon_levels=tuple(k for k in info.recon_levels if k > ind) or None)
            out["built"] += 1
        train = TrainConfig(n_iterations=1 if info.feedback else 0, init_from_cnn=info.feedback)
        for ds in catalog.dataset_names():
            shape = catalog.dataset_info(ds).input_shape
            data, model = DataConfig(dataset=ds), ModelConfig(arch=arch)
            if shape[1:] == info.input_shape[1:]:
                exp = ExperimentConfig(data=data, model=model, train=train, eval=EvalConfig())
                replace(exp, train=replace(train, epochs=2))  # what a trial does with its sampled values
                fl = FLConfig(data=data, model=model, train=train, search=SearchConfig(n_samples=2000))
                assert fl.n_directions == shape[0] * shape[1] * shape[2]
                fl.base_experiment(), fl.retrain_experiment()
                out["built"] += 3
            else:
                out["errors"][f"shape {arch} {ds}"] = error(lambda: ExperimentConfig(data=data, model=model, train=train))
        out["errors"][f"ind {arch}"] = error(lambda: ModelConfig(arch=arch, ind=info.n_levels))
        out["errors"][f"recon {arch}"] = error(lambda: ModelConfig(arch=arch, recon_levels=(0,)))
        if not info.feedback:
            out["errors"][f"plain {arch}"] = error(lambda: ExperimentConfig(model=ModelConfig(arch=arch), data=DataConfig(
                dataset=[d for d in catalog.dataset_names() if catalog.dataset_info(d).input_shape == info.input_shape][0])))
    out["errors"]["arch"] = error(lambda: ModelConfig(arch="resnet"))
    out["errors"]["dataset"] = error(lambda: DataConfig(dataset="svhn"))
    check_available(DataConfig(dataset="fashion-mnist-sample", root="/nonexistent"))
    try:
        check_available(DataConfig(dataset="mnist", root="/nonexistent"))
    except DataNotFoundError as exc:
        out["missing"] = str(exc)
    out["torch"] = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print(json.dumps(out))
    """
)


def run_isolated() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_configs_validate_without_torch() -> None:
    from cnnf import catalog

    out = run_isolated()
    assert out["torch"] == [], f"validating configs imported {out['torch']}"
    assert out["built"] > len(catalog.model_names())
    errors = out["errors"]
    # the same ConfigErrors (field and message) as when validation read the torch registries
    assert errors["ind cnnf_wrn40_2"] == ["ind", "ind: ind=9 is not legal for cnnf_wrn40_2; expected one of [0, 1, 2, 3, 4, 5, 6]"]
    assert errors["ind cnn_fmnist_std"] == ["ind", "ind: ind=4 is not legal for cnn_fmnist_std; expected one of [0]"]
    assert errors["recon cnnf_fmnist_adv"] == [
        "recon_levels", "recon_levels: [0] is not allowed for cnnf_fmnist_adv with ind=0; expected distinct levels in 1..6"]
    assert errors["shape cnnf_wrn40_2 mnist"] == [
        "model.arch", "model.arch: cnnf_wrn40_2 expects 32x32 images but mnist has 28x28"]
    assert errors["plain cnn_mnist_small"] == [
        "train.n_iterations", "train.n_iterations: must be 0 for the plain CNN cnn_mnist_small"]
    names = ", ".join(catalog.model_names())
    assert errors["arch"] == ["arch", f"arch: unknown model 'resnet'; expected one of: {names}"]
    assert errors["dataset"] == [
        "dataset", "dataset: unknown dataset 'svhn'; expected one of: cifar10, fashion-mnist, fashion-mnist-sample, mnist"]
    assert all(v is not None for v in errors.values()), [k for k, v in errors.items() if v is None]
    assert out["missing"] == (
        "dataset 'mnist' not found under root '/nonexistent' (missing and data.download is false); expected the files "
        "MNIST/raw/train-images-idx3-ubyte, MNIST/raw/train-labels-idx1-ubyte, MNIST/raw/t10k-images-idx3-ubyte, "
        "MNIST/raw/t10k-labels-idx1-ubyte there (set data.root or $CNNF_DATA_ROOT)")


def test_catalog_is_what_the_torch_side_registers() -> None:
    from cnnf import catalog, data, datafiles, models

    assert models.model_names() == catalog.model_names()
    for name in catalog.model_names():
        assert models.model_entry(name).meta is catalog.model_info(name)
    assert sorted(data._SOURCES) == catalog.dataset_names()
    for name in catalog.dataset_names():
        assert data._SOURCES[name].info is catalog.dataset_info(name) is data.dataset_info(name)
    assert data.check_available is datafiles.check_available and data.DataNotFoundError is datafiles.DataNotFoundError


def test_unknown_names_list_the_known_ones() -> None:
    import pytest

    from cnnf import catalog

    with pytest.raises(ValueError, match="unknown model 'x'; expected one of: cnn_fmnist_adv, "):
        catalog.model_info("x")
    with pytest.raises(ValueError, match="unknown dataset 'x'; expected one of: cifar10, "):
        catalog.dataset_info("x")
    with pytest.raises(ValueError, match="unknown model 'x'"):
        from cnnf.models import register_model

        register_model("x")
