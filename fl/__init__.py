"""Feedback learning (Song, Wang, Li): boundary search, margin statistics,
tiered selection quotas, generation and retraining.

Not implemented yet: this package is reserved by the project layout and is
filled in by the feedback-learning issue (#5). Like `cnnf`, it will import
only torch, torchvision, numpy and the standard library.
"""
