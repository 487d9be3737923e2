# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""Image processor for PaCa-ViT, torchvision backend (the default one, as for every transformers model).

Settings, decoding, label maps and post-processing are shared with the PIL backend (`image_processing_pil_pacavit.py`);
this module adds torchvision's resize, crop, rescale and normalize. It imports without torchvision (the class then
refuses to instantiate, as transformers' own torchvision processors do), so the package works with the PIL backend
alone.
"""

from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import Unpack
from transformers.utils import auto_docstring, is_torch_available, requires_backends

from .image_processing_pil_pacavit import LABEL_PAD_VALUE, PaCaViTImageProcessingMixin, PaCaViTImageProcessorKwargs


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

    def _preprocess(self, images: list["torch.Tensor"], do_resize, size, resample, crop_pct, do_center_crop,
                    crop_size, do_rescale, rescale_factor, do_normalize, image_mean, image_std, antialias,
                    disable_grouping=None, **kwargs) -> list["torch.Tensor"]:
        """Resize, crop, rescale (8-bit data only) and normalize channels-first images, those of one shape as one
        batch (transformers' grouping); int64 label maps get the geometry only. Returns the processed tensors (float32,
        or int64 for maps) in input order."""
        if len({image.dtype for image in images}) > 1:
            disable_grouping = True  # a batch shares one dtype: 8-bit data is rescaled, 16-bit and float data not
        grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {}
        for shape, batch in grouped.items():
            is_labels, rescale = batch.dtype == torch.int64, do_rescale and batch.dtype == torch.uint8
            if do_resize:
                crop = crop_pct if do_center_crop else None
                batch = self.resize(batch, size, resample, crop_pct=crop, antialias=antialias)
            if do_center_crop:
                batch = self.center_crop(batch, crop_size, fill=LABEL_PAD_VALUE if is_labels else 0)
            if not is_labels:
                # Never the caller's tensor (`process_image` copies): `rescale` and `normalize` work in place.
                batch = batch.to(torch.float32)
                batch = batch.mul_(rescale_factor) if rescale else batch
                if do_normalize:
                    mean, std = self._mean_std(image_mean, image_std, batch.shape[-3])
                    batch = self.normalize(batch, mean, std, inplace=True)
            processed[shape] = batch
        return reorder_images(processed, grouped_index)


__all__ = ["PaCaViTImageProcessor", "PaCaViTImageProcessorKwargs"]
