"""Adversarial attacks. Importing this package registers every attack."""

from cnnf.attacks import pgd  # noqa: F401  (registers attacks)
from cnnf.attacks.base import ATTACKS, Attack, Predict, attack_names, create_attack
from cnnf.attacks.pgd import LinfPGDAttack

__all__ = ["ATTACKS", "Attack", "LinfPGDAttack", "Predict", "attack_names", "create_attack"]
