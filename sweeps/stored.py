"""The spec a sweep was launched with, read back from its folder for
`sweep resume` and `sweep report`.

The folder keeps the spec as launched (`sweep.yaml`) and its hash
(`sweep.json`); a spec edited since is refused, and so is a spec given on
the command line that differs from it (naming the fields that changed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from sweeps.spec import parse_sweep
from tuning.config import SweepConfig
from tuning.folder import SPEC_FILE, LaunchError, read_state, spec_sha


def stored_config(sweep_dir: Path, spec_text: Optional[str] = None, spec_file: str = "<spec>") -> SweepConfig:
    """The config of the sweep in `sweep_dir`, from the spec stored with it.

    spec_text: the spec the user means to resume; refused unless it equals
    (field by field, output_dir aside) the one the sweep was launched with.
    """
    out = Path(sweep_dir)
    state = read_state(out)
    stored = (out / SPEC_FILE).read_text()
    if spec_sha(stored) != state["spec_sha256"]:
        raise LaunchError(f"{out / SPEC_FILE}: edited after launch; a sweep resumes only with the spec it was launched with")
    cfg = parse_sweep(stored, str(out / SPEC_FILE)).config
    if spec_text is not None:
        changed = _changed_fields(cfg, parse_sweep(spec_text, spec_file).config)
        if changed:
            raise LaunchError(f"{spec_file}: differs from the spec sweep {state['sweep_id']} was launched with "
                              f"({'; '.join(changed[:5])}); resume refuses a changed spec: launch a new sweep instead")
    return cfg


def _changed_fields(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted fields whose values differ between two configs (output_dir aside)."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
        out = []
        for f in dataclasses.fields(a):
            if prefix == "" and f.name == "output_dir":
                continue
            out += _changed_fields(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}.")
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{prefix}{k}: {'added' if k in b else 'removed'}")
            else:
                out += _changed_fields(a[k], b[k], f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
