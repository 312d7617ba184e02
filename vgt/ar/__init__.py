"""VGT-AR: position queries, the flow-matching head, `VGTModel` and the parallel KV-cache sampler."""
from .flow_head import FlowHead
from .model import VGTModel
from .sampling import image_generator, sample_latents, teacher_forced_conditions

__all__ = ["FlowHead", "VGTModel", "image_generator", "sample_latents", "teacher_forced_conditions"]
