"""CNN-F (Huang et al. 2020): models with recurrent generative feedback,
their training and robustness evaluation. Imports only torch, torchvision,
numpy and the standard library (matplotlib lazily)."""
