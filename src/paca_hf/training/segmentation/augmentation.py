"""Batched segmentation augmentation in plain torch (CPU or GPU): mmseg's ADE20k pipeline, which no library
provides (random resize by a ratio range, crop with `cat_max_ratio`, photometric distortion in OpenCV units).

`SegmentationTrainAugment` reproduces, per sample, mmseg 1.x's ADE20k training pipeline

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()          # brightness 32, contrast 0.5-1.5, saturation 0.5-1.5, hue 18; each p=0.5
    + SegDataPreProcessor            # normalise, then pad to the crop size: 0 for images, 255 for labels

Images are resized bilinearly (half-pixel centres, no antialias: OpenCV's INTER_LINEAR, which mmcv uses),
labels by nearest neighbour (OpenCV's INTER_NEAREST = torch's "nearest"), with the same output size, so
masks stay aligned. Samples may have different sizes (pass lists). All randomness comes from one
`torch.Generator` (drawn on the CPU, so a seed gives the same parameters on any device).

Differences from mmseg, on purpose: pixel values stay float between steps (mmseg rounds to uint8 after each
photometric step), and saturation and hue share one RGB->HSV->RGB round trip (the same maths, in float).
"""

from collections.abc import Sequence
from typing import Optional, Union

import torch
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ...images import load_label_map, reduce_labels
from ..transforms import (  # noqa: F401  (decode_image, rescale_size, resize_*: their home is paca_hf.training.transforms)
    _randint,
    _uniform,
    decode_image,
    rescale_size,
    resize_image,
    resize_label,
)


# ImageNet mean / std on the 0..255 scale (mmseg's ADE20k data_preprocessor; = HF's rescale 1/255 + normalise).
IMAGENET_MEAN_255 = tuple(255 * value for value in IMAGENET_DEFAULT_MEAN)
IMAGENET_STD_255 = tuple(255 * value for value in IMAGENET_DEFAULT_STD)

ImagesIn = Union[torch.Tensor, Sequence]
LabelsIn = Union[torch.Tensor, Sequence]


# ----------------------------------------------------------------------------------------------------------
# inputs


def decode_label_map(annotation, image=None) -> torch.Tensor:
    """(H, W) int64 label map of one annotation input, decoded by `paca_hf.images.load_label_map` (values kept;
    the EXIF orientation of `image`, the PIL image it annotates, applied when the map has none of its own)."""
    return torch.from_numpy(load_label_map(annotation, image=image))


def _to_image_tensor(image, device=None) -> torch.Tensor:
    """(3, H, W) float tensor in 0..255: a tensor (3, H, W) / (1, H, W) is taken as decoded pixels (uint8, or float in
    0..255); anything else goes through [`decode_image`]."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"image tensors must be (3, H, W), got {tuple(image.shape)}")
        tensor = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    else:
        tensor = decode_image(image)
    if device is not None:
        tensor = tensor.to(device)
    return tensor.float()


def _to_label_tensor(label, device=None, image=None) -> torch.Tensor:
    """(H, W) long tensor from a tensor (H, W) (or (1, H, W)), or any annotation input through
    [`decode_label_map`]."""
    if isinstance(label, torch.Tensor):
        tensor = label[0] if label.ndim == 3 and label.shape[0] == 1 else label
        if tensor.ndim != 2:
            raise ValueError(f"label maps must be (H, W), got {tuple(label.shape)}")
    else:
        tensor = decode_label_map(label, image=image)
    if device is not None:
        tensor = tensor.to(device)
    return tensor.long()


def _as_list(batch) -> list:
    if isinstance(batch, torch.Tensor):
        return list(batch.unbind(0))
    return list(batch)


# ----------------------------------------------------------------------------------------------------------
# geometry (random numbers always from a CPU generator; None = torch's global one)


def random_resize_size(
    height: int, width: int, scale: tuple[int, int], ratio_range: tuple[float, float], generator=None
) -> tuple[int, int]:
    """mmseg `RandomResize(scale, ratio_range, keep_ratio=True)`: scale * U(ratio_range), then `rescale_size`."""
    ratio = _uniform(generator, ratio_range[0], ratio_range[1])
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    return rescale_size(height, width, target)


def _crop_box(height: int, width: int, crop_size: tuple[int, int], generator) -> tuple[int, int, int, int]:
    margin_h = max(height - crop_size[0], 0)
    margin_w = max(width - crop_size[1], 0)
    top = _randint(generator, 0, margin_h + 1)
    left = _randint(generator, 0, margin_w + 1)
    return top, min(top + crop_size[0], height), left, min(left + crop_size[1], width)


def random_crop_box(
    label: torch.Tensor,
    crop_size: tuple[int, int],
    cat_max_ratio: float = 1.0,
    ignore_index: int = 255,
    generator=None,
    max_tries: int = 10,
) -> tuple[int, int, int, int]:
    """mmseg `RandomCrop.crop_bbox`: (top, bottom, left, right). With cat_max_ratio < 1 a box is redrawn (up
    to `max_tries` times) until the crop holds at least two classes and none covers `cat_max_ratio` or more of
    its non-ignored pixels; after `max_tries` failures the next draw is kept as it is (as mmseg does)."""
    height, width = label.shape
    box = _crop_box(height, width, crop_size, generator)
    if cat_max_ratio < 1.0:
        for _ in range(max_tries):
            top, bottom, left, right = box
            crop = label[top:bottom, left:right].reshape(-1)
            crop = crop[crop != ignore_index]
            if crop.numel() > 0:
                counts = torch.unique(crop, return_counts=True)[1]
                if counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < cat_max_ratio:
                    break
            box = _crop_box(height, width, crop_size, generator)
    return box


# ----------------------------------------------------------------------------------------------------------
# colour


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1) (fraction of a turn), s and v in [0, 1]."""
    r, g, b = rgb.unbind(-3)
    maxc, _ = rgb.max(dim=-3)
    minc, _ = rgb.min(dim=-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], dim=-3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv` (hue taken modulo 1)."""
    h, s, v = hsv.unbind(-3)
    h6 = torch.remainder(h, 1.0) * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long() % 6
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    # sector 0..5 -> r: v q p p t v, g: t v v q p p, b: p p t v v q (selected, not computed: the values are exact)
    r = torch.where((sector == 0) | (sector == 5), v, torch.where(sector == 1, q, torch.where(sector == 4, t, p)))
    g = torch.where((sector == 1) | (sector == 2), v, torch.where(sector == 0, t, torch.where(sector == 3, q, p)))
    b = torch.where((sector == 3) | (sector == 4), v, torch.where(sector == 2, t, torch.where(sector == 5, q, p)))
    return torch.stack([r, g, b], dim=-3)


def photometric_distortion(
    images: torch.Tensor,
    generator=None,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> torch.Tensor:
    """mmseg `PhotoMetricDistortion` on a float batch (B, 3, H, W) in 0..255, parameters drawn per sample.

    Order: brightness (+U(-32, 32)); contrast (x U(0.5, 1.5)) either now or last (coin flip); saturation
    (S x U(0.5, 1.5) in HSV); hue (+randint(-18, 18) in OpenCV's 2-degree units, i.e. -36..34 degrees);
    each of the four applied with probability 0.5; values clipped to 0..255 after each step.
    """
    b = images.shape[0]
    device = images.device
    params = torch.rand((b, 9), generator=generator, dtype=torch.float64)  # one fixed draw per sample
    hue_steps = torch.randint(-hue_delta, hue_delta, (b,), generator=generator)
    on = params[:, :4] < 0.5  # brightness, contrast, saturation, hue
    contrast_first = params[:, 4] < 0.5
    beta = (params[:, 5] * 2 - 1) * brightness_delta
    alpha_c = contrast_range[0] + params[:, 6] * (contrast_range[1] - contrast_range[0])
    alpha_s = saturation_range[0] + params[:, 7] * (saturation_range[1] - saturation_range[0])

    def col(x):  # per-sample scalar -> (B, 1, 1, 1) on the images' device
        return x.to(device=device, dtype=images.dtype).view(b, 1, 1, 1)

    out = (images + col(torch.where(on[:, 0], beta, torch.zeros_like(beta)))).clamp(0, 255)
    contrast = torch.where(on[:, 1], alpha_c, torch.ones_like(alpha_c))
    out = (out * col(torch.where(contrast_first, contrast, torch.ones_like(contrast)))).clamp(0, 255)
    sat = torch.where(on[:, 2], alpha_s, torch.ones_like(alpha_s))
    shift = torch.where(on[:, 3], hue_steps.double() * 2.0 / 360.0, torch.zeros(b, dtype=torch.float64))
    needs_hsv = on[:, 2] | on[:, 3]
    if bool(needs_hsv.any()):
        # Only the samples that change colour make the HSV round trip (per pixel, so the others are unaffected).
        chosen = needs_hsv.nonzero()[:, 0]
        hsv = rgb_to_hsv(out[chosen.to(device)] / 255.0)
        h, s, v = hsv.unbind(1)
        shift_col = shift[chosen].to(device=device, dtype=images.dtype).view(-1, 1, 1)
        sat_col = sat[chosen].to(device=device, dtype=images.dtype).view(-1, 1, 1)
        hsv = torch.stack([h + shift_col, (s * sat_col).clamp(0, 1), v], dim=1)
        out = out.index_copy(0, chosen.to(device), (hsv_to_rgb(hsv) * 255.0).clamp(0, 255))
    out = (out * col(torch.where(contrast_first, torch.ones_like(contrast), contrast))).clamp(0, 255)
    return out


# ----------------------------------------------------------------------------------------------------------
# pipelines


def _normalise(image: torch.Tensor, mean, std) -> torch.Tensor:
    if mean is None and std is None:
        return image
    m = torch.as_tensor(mean if mean is not None else (0.0, 0.0, 0.0), dtype=image.dtype, device=image.device)
    s = torch.as_tensor(std if std is not None else (1.0, 1.0, 1.0), dtype=image.dtype, device=image.device)
    return (image - m.view(-1, 1, 1)) / s.view(-1, 1, 1)


class SegmentationTrainAugment:
    """mmseg's ADE20k training augmentation on batches of torch tensors.

    Call with `(images, labels)`: images a (B, 3, H, W) tensor (uint8, or float in 0..255) or a list of
    per-sample (3, H, W) tensors / (H, W, 3) arrays / PIL images of any sizes; labels likewise a (B, H, W)
    tensor or a list of (H, W) maps. Returns `(images, labels)`: float32 (B, 3, *crop_size) and long
    (B, *crop_size). Padding (bottom / right, where a resized image is smaller than the crop) is 0 in the
    image (after normalisation, as mmseg's data preprocessor pads) and `ignore_index` in the labels.

    Args:
        crop_size: (height, width) of the output.
        scale, ratio_range: `RandomResize` (keep ratio): the image is rescaled to fit scale * U(ratio_range).
        cat_max_ratio: `RandomCrop`'s limit on the share of the crop's largest class (1.0 disables it).
        flip_prob: probability of a horizontal flip.
        photometric: apply `PhotoMetricDistortion`.
        mean, std: per-channel normalisation on the 0..255 scale (ImageNet by default); both None = none,
            the output then stays in 0..255.
        reduce_zero_label: map ADE20k raw labels (0 = other, 1..150) to 255 / 0..149 first.
        ignore_index: label value that is ignored (and used for label padding).
        seed: seeds a private generator used when `__call__` gets no `generator`; None = torch's global RNG.
    """

    def __init__(
        self,
        crop_size: tuple[int, int] = (512, 512),
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Optional[Sequence[float]] = IMAGENET_MEAN_255,
        std: Optional[Sequence[float]] = IMAGENET_STD_255,
        reduce_zero_label: bool = False,
        ignore_index: int = 255,
        seed: Optional[int] = None,
    ):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.photometric = bool(photometric)
        self.mean = mean
        self.std = std
        self.reduce_zero_label = bool(reduce_zero_label)
        self.ignore_index = int(ignore_index)
        self.generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

    def _geometry(self, image: torch.Tensor, label: torch.Tensor, generator):
        """Resize, crop and flip one sample: (3, h, w) float and (h, w) long with h, w <= crop size."""
        if tuple(image.shape[-2:]) != tuple(label.shape):
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} sizes differ")
        size = random_resize_size(image.shape[-2], image.shape[-1], self.scale, self.ratio_range, generator)
        image = resize_image(image, size)
        label = resize_label(label, size)
        top, bottom, left, right = random_crop_box(
            label, self.crop_size, self.cat_max_ratio, self.ignore_index, generator
        )
        image = image[:, top:bottom, left:right]
        label = label[top:bottom, left:right]
        if float(torch.rand((), generator=generator)) < self.flip_prob:
            image = image.flip(-1)
            label = label.flip(-1)
        return image, label

    def __call__(
        self,
        images: ImagesIn,
        labels: LabelsIn,
        generator: Optional[torch.Generator] = None,
        device: Optional[Union[str, torch.device]] = None,
    ):
        """Augment a batch; `device` moves the inputs there first (default: the first image's device, CPU
        for arrays / PIL images). `generator` (a CPU one) overrides the instance's seeded generator."""
        generator = generator if generator is not None else self.generator
        images, labels = _as_list(images), _as_list(labels)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label maps")
        ch, cw = self.crop_size
        if device is None:
            device = images[0].device if isinstance(images[0], torch.Tensor) else torch.device("cpu")
        out_images = torch.zeros((len(images), 3, ch, cw), dtype=torch.float32, device=device)
        out_labels = torch.full((len(images), ch, cw), self.ignore_index, dtype=torch.long, device=device)
        valid = torch.zeros((len(images), 1, ch, cw), dtype=torch.bool, device=device)
        for i, (image, label) in enumerate(zip(images, labels)):
            label = _to_label_tensor(label, device, image=image)
            image = _to_image_tensor(image, device)
            if self.reduce_zero_label:
                label = reduce_labels(label, self.ignore_index)
            image, label = self._geometry(image, label, generator)
            h, w = label.shape
            out_images[i, :, :h, :w] = image
            out_labels[i, :h, :w] = label
            valid[i, :, :h, :w] = True
        if self.photometric:
            out_images = photometric_distortion(out_images, generator)
        out_images = _normalise(out_images, self.mean, self.std)
        out_images = torch.where(valid, out_images, torch.zeros((), dtype=out_images.dtype, device=device))
        return out_images, out_labels


__all__ = [
    "IMAGENET_MEAN_255",
    "IMAGENET_STD_255",
    "SegmentationTrainAugment",
    "decode_image",
    "decode_label_map",
    "hsv_to_rgb",
    "photometric_distortion",
    "random_crop_box",
    "random_resize_size",
    "rescale_size",
    "resize_image",
    "resize_label",
    "rgb_to_hsv",
]
