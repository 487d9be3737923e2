# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""Image processor for PaCa-ViT, torchvision backend (the default one, as for every transformers model).

Settings, decoding, label maps, the processing steps and post-processing are shared with the PIL backend
(`image_processing_pil_pacavit.py`); this module adds torchvision's resize and crop. It imports without torchvision
(the class then refuses to instantiate, as transformers' own torchvision processors do), so the package works with
the PIL backend alone.
"""

from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import Unpack
from transformers.utils import auto_docstring, is_torch_available, requires_backends

from .image_processing_pil_pacavit import PaCaViTImageProcessingMixin, PaCaViTImageProcessorKwargs


if is_torch_available():
    import torch

# Optional: without torchvision the module still imports (the PIL backend works) and this class refuses to
# instantiate. A `try` rather than `if is_torchvision_available()`, so that transformers' remote-code loader does not
# list torchvision among the packages a Hub repo needs.
try:
    from torchvision.transforms.v2 import functional as tvF
except ImportError:
    tvF = None


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

    def resize(self, image: "torch.Tensor", size: SizeDict, resample=None, crop_pct=None, antialias=True, **kwargs):
        """Resize channels-first images to the size `size` and `crop_pct` give (see `_resize_output_size`):
        torchvision's antialiased resize, float data (in [0, 1]) clamped to [0, 1] afterwards (bicubic overshoots) as
        8-bit data is to [0, 255]; int64 label maps with `resize_labels`; `antialias=False` with `_interpolate`."""
        size = self._resize_output_size(image, size, crop_pct)
        if image.dtype == torch.int64:
            return self.resize_labels(image, size)
        if antialias is False:
            return self._interpolate(image, size, resample)
        resample = PILImageResampling.BICUBIC if resample is None else resample
        resized = super().resize(image, size, resample=resample, antialias=True, **kwargs)
        return resized if resized.dtype == torch.uint8 else resized.clamp_(0.0, 1.0)

    def resize_labels(self, labels: "torch.Tensor", size: SizeDict) -> "torch.Tensor":
        """Nearest-neighbour resize of `(..., H, W)` int64 label maps that picks the same source pixels as PIL's
        `NEAREST` (the PIL backend's and the authors' rule), so both backends give identical labels. PIL steps through
        the source in float64 increments of `in / out` starting at half a step and truncates; torchvision's
        `NEAREST_EXACT` multiplies instead, which lands one pixel further on exact ties (about 1 column in 200)."""
        indices = []
        for length, new_length in zip(labels.shape[-2:], (size.height, size.width)):
            steps = torch.full((new_length,), length / new_length, dtype=torch.float64)
            steps[0] *= 0.5
            indices.append(torch.cumsum(steps, 0).to(torch.int64).clamp_(max=length - 1).to(labels.device))
        return labels.index_select(-2, indices[0]).index_select(-1, indices[1])

    def center_crop(self, image: "torch.Tensor", size: SizeDict, fill=0, **kwargs) -> "torch.Tensor":
        """Center crop of channels-first images (see `_center_crop_box`), padded with `fill` where they are smaller."""
        (top, *rows), (left, *cols) = self._center_crop_box(image, size)
        cropped = image[..., top : top + size.height, left : left + size.width]
        return tvF.pad(cropped, [cols[0], rows[0], cols[1], rows[1]], fill=fill) if any(rows + cols) else cropped


__all__ = ["PaCaViTImageProcessor", "PaCaViTImageProcessorKwargs"]
