"""PaCa-ViT (Patch-to-Cluster Attention, CVPR 2023) for Hugging Face transformers.

Importing this package registers the PaCa-ViT classes with transformers' Auto classes.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
)

from .configuration_pacavit import PaCaViTConfig
from .image_processing_pacavit import PaCaViTImageProcessor
from .image_processing_pil_pacavit import PaCaViTImageProcessorPil
from .modeling_pacavit import (
    PaCaViTBackbone,
    PaCaViTForImageClassification,
    PaCaViTForSemanticSegmentation,
    PaCaViTModel,
    PaCaViTPreTrainedModel,
)


AutoConfig.register(PaCaViTConfig.model_type, PaCaViTConfig, exist_ok=True)
AutoModel.register(PaCaViTConfig, PaCaViTModel, exist_ok=True)
AutoModelForImageClassification.register(PaCaViTConfig, PaCaViTForImageClassification, exist_ok=True)
AutoModelForSemanticSegmentation.register(PaCaViTConfig, PaCaViTForSemanticSegmentation, exist_ok=True)
AutoBackbone.register(PaCaViTConfig, PaCaViTBackbone, exist_ok=True)
AutoImageProcessor.register(
    PaCaViTConfig,
    image_processor_classes={"torchvision": PaCaViTImageProcessor, "pil": PaCaViTImageProcessorPil},
    exist_ok=True,
)

__all__ = [
    "PaCaViTBackbone",
    "PaCaViTConfig",
    "PaCaViTForImageClassification",
    "PaCaViTForSemanticSegmentation",
    "PaCaViTImageProcessor",
    "PaCaViTImageProcessorPil",
    "PaCaViTModel",
    "PaCaViTPreTrainedModel",
]
