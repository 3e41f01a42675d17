"""Adversarial attacks, one registered attack per module; importing this
package registers every attack. Budgets are in [0, 1] pixel units, models
take inputs in cnnf.data.INPUT_RANGE; see `cnnf.attacks.base`."""

from cnnf.attacks.apgd import APGDAttack, APGDCEAttack, APGDDLRAttack, APGDTargetedAttack
from cnnf.attacks.base import ATTACKS, Attack, Predict, attack_names, create_attack
from cnnf.attacks.bim import BIMAttack
from cnnf.attacks.cw import CWL2Attack
from cnnf.attacks.deepfool import DeepFoolAttack
from cnnf.attacks.fgsm import FGSMAttack
from cnnf.attacks.mim import MIMAttack
from cnnf.attacks.gaussian_noise import GaussianNoiseAttack
from cnnf.attacks.pgd import LinfPGDAttack
from cnnf.attacks.pgd_l2 import L2PGDAttack
from cnnf.attacks.spsa import SPSAAttack
from cnnf.attacks.square import SquareAttack
from cnnf.attacks.transfer import TransferAttack
from cnnf.attacks.uniform_noise import UniformNoiseAttack

__all__ = [
    "APGDAttack",
    "APGDCEAttack",
    "APGDDLRAttack",
    "APGDTargetedAttack",
    "ATTACKS",
    "Attack",
    "BIMAttack",
    "CWL2Attack",
    "DeepFoolAttack",
    "FGSMAttack",
    "GaussianNoiseAttack",
    "L2PGDAttack",
    "LinfPGDAttack",
    "MIMAttack",
    "Predict",
    "SPSAAttack",
    "SquareAttack",
    "TransferAttack",
    "UniformNoiseAttack",
    "attack_names",
    "create_attack",
]
