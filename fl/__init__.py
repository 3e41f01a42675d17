"""Feedback learning (Song, Wang, Li): decision-boundary search along random
orthogonal directions, margin statistics, robustness tiers with per-class
sample quotas, boundary-crossing example generation and retraining.

Works on any classifier of `cnnf` (a plain CNN or a CNN-F). Like `cnnf`, it
imports only torch, torchvision, numpy, matplotlib and the standard library.

    config.py     typed settings (FLConfig: search, selection, retrain, eval)
    directions.py random orthogonal directions
    search.py     the batched boundary search (exact and coarse-to-fine), margins cache
    stats.py      M, N, R, R_i, adjacent-class shares, class centres
    select.py     tiers, quotas, generation
    pipeline.py   the five steps as stages, run_feedback_learning
    stages.py     results computed once and shared (file-locked)
    plots.py      margin heat maps, R_i bars        tables.py  Markdown tables
"""
