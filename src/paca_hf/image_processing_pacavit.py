# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""Image processor for PaCa-ViT, torchvision backend (the default one, as for every transformers model); the rest lives in
`image_processing_pil_pacavit.py`. Imports without torchvision (the class then refuses to instantiate, as transformers')."""

import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import SizeDict
from transformers.processing_utils import Unpack
from transformers.utils import auto_docstring, requires_backends

from .image_processing_pil_pacavit import PaCaViTImageProcessingMixin, PaCaViTImageProcessorKwargs


@auto_docstring(
    custom_intro="""
    PaCa-ViT image processor, torchvision backend (the default one): the settings, inputs and outputs of
    [`PaCaViTImageProcessingMixin`], computed with torchvision and able to run on a GPU (`device=...`). Its bicubic
    resize is torchvision's antialiased one, which differs from PIL's (the authors' transform) by at most one grey
    level on some pixels of 8-bit images; [`PaCaViTImageProcessorPil`] reproduces the authors' numbers bit for bit.
    """
)
class PaCaViTImageProcessor(PaCaViTImageProcessingMixin, TorchvisionBackend):
    def __init__(self, **kwargs: Unpack[PaCaViTImageProcessorKwargs]):
        requires_backends(self, ["torch", "torchvision"])
        super().__init__(**kwargs)

    def _antialiased_resize(self, image: torch.Tensor, size: SizeDict, resample) -> torch.Tensor:
        """torchvision's antialiased resize; float data (in [0, 1]) clamped to [0, 1] (bicubic overshoots) as 8-bit
        data is to [0, 255]."""
        resized = TorchvisionBackend.resize(self, image, size, resample=resample, antialias=True)
        return resized if resized.dtype == torch.uint8 else resized.clamp_(0.0, 1.0)


__all__ = ["PaCaViTImageProcessor", "PaCaViTImageProcessorKwargs"]
