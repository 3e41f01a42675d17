"""The user-facing edge: the sweep YAML schema (`spec.py`), the `sweep`
command line (`cli.py`) and the example sweeps (`examples/`)."""
