"""VGT-AE: VLM-feature autoencoder (inference model, training wrapper, losses, discriminator)."""
from .model import VGTAutoencoder
from .training import AEForward, AETrainingModule, apply_stage

__all__ = ["AEForward", "AETrainingModule", "VGTAutoencoder", "apply_stage"]
