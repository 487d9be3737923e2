"""PaCa-ViT (Patch-to-Cluster Attention, CVPR 2023) for Hugging Face transformers.

Importing this package registers the PaCa-ViT classes with transformers' Auto classes.
"""

__version__ = "0.1.0"  # the one version string: setup.cfg reads it

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageSegmentation,
    AutoModelForInstanceSegmentation,
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
    AutoVideoProcessor,
)
from transformers.utils import is_torchvision_available

from .configuration_pacavit import PaCaViTConfig
from .configuration_pacavit_mask_rcnn import PaCaViTMaskRCNNConfig
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
AutoConfig.register(PaCaViTMaskRCNNConfig.model_type, PaCaViTMaskRCNNConfig, exist_ok=True)
AutoImageProcessor.register(
    PaCaViTConfig,
    image_processor_classes={"torchvision": PaCaViTImageProcessor, "pil": PaCaViTImageProcessorPil},
    exist_ok=True,
)
# PaCa-ViT has no video processor. Saying so locally keeps pipelines, which try every kind of processor, from offering to
# run a Hub-ready folder's remote code for one (transformers derives a video `auto_map` entry from the image
# processor's and would ask "Do you wish to run the custom code?" on standard input).
# (AutoVideoProcessor exists only with torchvision; without it there is no video processor to look for.)
if is_torchvision_available():
    AutoVideoProcessor.register(PaCaViTConfig, video_processor_classes={}, exist_ok=True)

__all__ = [
    "PaCaViTBackbone",
    "PaCaViTConfig",
    "PaCaViTForImageClassification",
    "PaCaViTForSemanticSegmentation",
    "PaCaViTImageProcessor",
    "PaCaViTImageProcessorPil",
    "PaCaViTMaskRCNNConfig",
    "PaCaViTModel",
    "PaCaViTPreTrainedModel",
]

# The Mask R-CNN detector is built from torchvision's detection parts (the `vision` extra).
if is_torchvision_available():
    from .image_processing_pacavit_mask_rcnn import PaCaViTMaskRCNNImageProcessor
    from .modeling_pacavit_mask_rcnn import (
        PaCaViTMaskRCNNForInstanceSegmentation,
        PaCaViTMaskRCNNOutput,
        PaCaViTMaskRCNNPreTrainedModel,
    )

    AutoModelForInstanceSegmentation.register(
        PaCaViTMaskRCNNConfig, PaCaViTMaskRCNNForInstanceSegmentation, exist_ok=True
    )
    AutoModelForObjectDetection.register(PaCaViTMaskRCNNConfig, PaCaViTMaskRCNNForInstanceSegmentation, exist_ok=True)
    # what the image-segmentation pipeline loads a model with (besides AutoModelForSemanticSegmentation)
    AutoModelForImageSegmentation.register(
        PaCaViTMaskRCNNConfig, PaCaViTMaskRCNNForInstanceSegmentation, exist_ok=True
    )
    # The detector's processor has only the torchvision backend (the detector needs torchvision anyway).
    AutoImageProcessor.register(
        PaCaViTMaskRCNNConfig, image_processor_classes={"torchvision": PaCaViTMaskRCNNImageProcessor}, exist_ok=True
    )
    AutoVideoProcessor.register(PaCaViTMaskRCNNConfig, video_processor_classes={}, exist_ok=True)
    __all__ += [
        "PaCaViTMaskRCNNForInstanceSegmentation",
        "PaCaViTMaskRCNNImageProcessor",
        "PaCaViTMaskRCNNOutput",
        "PaCaViTMaskRCNNPreTrainedModel",
    ]
