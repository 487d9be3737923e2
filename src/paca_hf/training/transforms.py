"""Image pieces both fine-tunes' augmentations use (`segmentation.augmentation`, `detection.augmentation`): decoding
to pixels, random draws from a given generator, mmcv's keep-ratio size, bilinear and nearest resizes as OpenCV's."""

import numpy as np
import torch
import torch.nn.functional as F

from ..images import image_to_array


def decode_image(image) -> torch.Tensor:
    """(3, H, W) pixels of one image input (PIL image of any mode, array, path, ...) decoded by
    `paca_hf.images.image_to_array` (EXIF orientation applied, grey repeated, alpha dropped): uint8 for 8-bit data,
    float32 on the 0..255 scale for 16-bit and float data (so nothing is rounded)."""
    array = image_to_array(image, num_channels=3)
    tensor = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)  # a writable copy
    return tensor if tensor.dtype == torch.uint8 else tensor * 255.0


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """An int in [low, high) (numpy's randint convention, as mmseg calls it)."""
    return int(torch.randint(low, high, (), generator=generator))


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv `imrescale` size: the largest (h, w) with the same aspect whose long edge <= max(scale) and
    short edge <= min(scale); rounded like mmcv (`int(x * factor + 0.5)`)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float (C, H, W) image (half-pixel centres, no antialias)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of a (..., H, W) label map or stack of masks: source index floor(dst * in / out), as OpenCV's
    INTER_NEAREST."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    h, w = label.shape[-2:]
    rows = torch.clamp(
        (torch.arange(size[0], device=label.device, dtype=torch.float64) * (h / size[0])).floor(), max=h - 1
    ).long()
    cols = torch.clamp(
        (torch.arange(size[1], device=label.device, dtype=torch.float64) * (w / size[1])).floor(), max=w - 1
    ).long()
    return label[..., rows, :][..., cols]
