"""CNN-F architectures. Importing this package registers every model."""

from cnnf.catalog import ModelInfo, model_info
from cnnf.models import fmnist, mnist, wrn  # noqa: F401  (registers models)
from cnnf.models.base import GATES, PREDICTIONS, CNNFOutput, FeedbackNet, InferenceModel, adversarial_cnnf_loss, cnnf_loss
from cnnf.models.registry import create_model, model_entry, model_names, register_model

__all__ = [
    "GATES",
    "PREDICTIONS",
    "CNNFOutput",
    "FeedbackNet",
    "InferenceModel",
    "ModelInfo",
    "adversarial_cnnf_loss",
    "cnnf_loss",
    "create_model",
    "model_entry",
    "model_info",
    "model_names",
    "register_model",
]
