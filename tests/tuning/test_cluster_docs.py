"""The cluster walk-through's files are valid as written."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO

CLUSTER_YAML = REPO / "docs" / "cluster" / "ray-cluster.yaml"


def test_ray_up_file_passes_rays_cluster_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(config)  # raises jsonschema.ValidationError on an unknown or mistyped key
    prepared = prepare_config(config)  # fills the local provider's defaults, as `ray up` does
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local" and len(prepared["provider"]["worker_ips"]) == prepared["max_workers"]
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") >= 4  # every `ray` command keeps token authentication on
    assert "mlflow server" in starts and "--dashboard-host=0.0.0.0" in starts
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_documented_sweep_commands_exist():
    """Every `sweep <command> --option` the walk-through shows is one the CLI has."""
    from typer.main import get_command

    from sweeps.cli import app

    cli = get_command(app)
    text = (REPO / "docs" / "cluster" / "README.md").read_text() + (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S)).replace("\\\n", " ")
    shown = re.findall(r"^\s*sweep (\w+) ([^\n#]*)", blocks, flags=re.M)
    assert len(shown) >= 10
    for command, rest in shown:
        assert command in cli.commands, command
        options = {o for p in cli.commands[command].params for o in getattr(p, "opts", [])}
        for flag in re.findall(r"(?<!\S)(--?[a-z][\w-]*)", rest):
            assert flag in options, f"sweep {command} has no {flag}"
