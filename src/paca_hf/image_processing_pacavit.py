"""Image processor for PaCa-ViT, torchvision backend (the default one, as for every transformers model).

Settings, input decoding and post-processing are shared with the PIL backend and live in
`image_processing_pil_pacavit.py`; this module adds the torchvision implementations of the resize, crop, rescale and
normalize steps. It imports without torchvision (the class then refuses to instantiate, as transformers' own
torchvision processors do) so that the package keeps working with the PIL backend alone.
"""

import numpy as np
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import Unpack
from transformers.utils import is_torch_available, requires_backends

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


class PaCaViTImageProcessor(PaCaViTImageProcessingMixin, TorchvisionBackend):
    r"""
    Image processor for PaCa-ViT, torchvision backend (the default one): the same settings, inputs and outputs as
    [`PaCaViTImageProcessorPil`] (see [`PaCaViTImageProcessingMixin`]), computed with torchvision and able to run on
    a GPU (`device=...`). Its bicubic resize is torchvision's antialiased one, which differs from PIL's (the authors'
    transform) by at most one grey level on some pixels of 8-bit images; use [`PaCaViTImageProcessorPil`] to
    reproduce the authors' numbers bit for bit.
    """

    valid_kwargs = PaCaViTImageProcessorKwargs

    def __init__(self, **kwargs: Unpack[PaCaViTImageProcessorKwargs]):
        requires_backends(self, ["torch", "torchvision"])
        super().__init__(**kwargs)

    @staticmethod
    def _from_channels_last(array: np.ndarray, device=None) -> "torch.Tensor":
        if not array.flags.writeable:  # arrays viewing a PIL image's buffer are read-only
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
        return tensor if device is None else tensor.to(device)

    @staticmethod
    def _batches(images: list["torch.Tensor"]) -> list[list[int]]:
        """Images of the same shape, dtype and device, processed as one batch (as transformers' torchvision
        processors group them)."""
        groups = {}
        for index, image in enumerate(images):
            groups.setdefault((tuple(image.shape), image.dtype, image.device), []).append(index)
        return list(groups.values())

    @staticmethod
    def _stack(images: list["torch.Tensor"]) -> "torch.Tensor":
        return torch.stack(images)

    @staticmethod
    def _unstack(batch: "torch.Tensor", count: int) -> list["torch.Tensor"]:
        return list(batch.unbind(0))

    @staticmethod
    def _to_float(image: "torch.Tensor") -> "torch.Tensor":
        return image.to(torch.float32)

    _return_batch_as_is = True

    # The batch comes from `torch.stack` (then resize / crop / dtype conversion), so it is never the caller's tensor:
    # the same arithmetic as `rescale` and `normalize` (x * factor, then (x - mean) / std), in place, saves a
    # full-size tensor per step (each one faulted in afresh on a CPU when it is large).
    def _rescale_owned(self, batch: "torch.Tensor", factor: float) -> "torch.Tensor":
        return batch.mul_(factor)

    def _normalize_owned(self, batch: "torch.Tensor", mean: list[float], std: list[float]) -> "torch.Tensor":
        return self.normalize(batch, mean, std, inplace=True)

    @staticmethod
    def _labels_output(seg: "torch.Tensor") -> "torch.Tensor":
        return seg[0].to(torch.int64)

    def resize(self, image: "torch.Tensor", size: SizeDict, resample=None, **kwargs) -> "torch.Tensor":
        """Antialiased torchvision resize of a channels-first image; float data (in [0, 1]) is clamped to [0, 1]
        afterwards (bicubic overshoots), as 8-bit data is clamped to [0, 255] by torchvision."""
        resample = PILImageResampling.BICUBIC if resample is None else resample
        resized = super().resize(image, size, resample=resample, antialias=True, **kwargs)
        return resized if resized.dtype == torch.uint8 else resized.clamp_(0.0, 1.0)

    def resize_labels(self, labels: "torch.Tensor", size: SizeDict) -> "torch.Tensor":
        """Nearest-neighbour resize of a `(1, H, W)` int64 label map that picks the same source pixels as PIL's
        `NEAREST` (the PIL backend's and the authors' rule), so both backends give identical labels. PIL steps through
        the source in float64 increments of `in / out` starting at half a step and truncates; torchvision's
        `NEAREST_EXACT` multiplies instead, which lands one pixel further on exact ties (about 1 column in 200)."""
        rows = self._nearest_source_indices(labels.shape[-2], size.height).to(labels.device)
        cols = self._nearest_source_indices(labels.shape[-1], size.width).to(labels.device)
        return labels.index_select(-2, rows).index_select(-1, cols)

    @staticmethod
    def _nearest_source_indices(length: int, new_length: int) -> "torch.Tensor":
        step = length / new_length
        steps = torch.full((new_length,), step, dtype=torch.float64)
        steps[0] = 0.5 * step
        return torch.cumsum(steps, 0).to(torch.int64).clamp_(max=length - 1)

    def center_crop(self, image: "torch.Tensor", size: SizeDict, fill=0, **kwargs) -> "torch.Tensor":
        """torchvision's `center_crop` (offsets rounded as timm's eval transform does), padding with `fill` instead
        of 0 where the image is smaller than the crop (255 for label maps)."""
        if size.height is None or size.width is None:
            raise ValueError(f"`crop_size` must be {{'height': int, 'width': int}}, got {size}")
        (_, pad_top, pad_bottom), (_, pad_left, pad_right) = (
            self._center_crop_box(image.shape[-2], size.height),
            self._center_crop_box(image.shape[-1], size.width),
        )
        if pad_top or pad_bottom or pad_left or pad_right:
            image = tvF.pad(image, [pad_left, pad_top, pad_right, pad_bottom], fill=fill)
        return tvF.center_crop(image, [size.height, size.width])


__all__ = ["PaCaViTImageProcessor", "PaCaViTImageProcessorKwargs"]
