"""Sweep engine: the only package that imports Ray Tune, Optuna and MLflow.

Trainables rebuild a typed config from the sampled values, call `cnnf` /
`fl`, and report; MLflow writes happen in the driver (`tracking.py`).
"""
