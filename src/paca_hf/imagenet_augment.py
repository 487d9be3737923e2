"""ImageNet training-time augmentation of the authors' recipe (timm's), in PIL + torch: no torchvision, no timm.

The authors trained PaCa-ViT with timm's `create_transform(is_training=True, ...)` and `Mixup`; this module rebuilds
those pieces:

    RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3), bicubic)   `RandomResizedCrop`
    RandomHorizontalFlip(0.5)                                             in `ImageNetTrainTransform`
    RandAugment "rand-m9-mstd0.5-inc1"                                   `RandAugment` / `rand_augment_transform`
    ToTensor + Normalize(ImageNet mean / std)                             `to_normalized_tensor`
    RandomErasing(0.25, mode="pixel", count 1)                            `RandomErasing`
    Mixup(mixup 0.8, cutmix 1.0, prob 1.0, switch 0.5, smoothing 0.1)     `Mixup` (a whole batch, on any device)
    SoftTargetCrossEntropy                                                `soft_target_cross_entropy`

Randomness: every callable takes an optional `rng`, a `random.Random`; without one the module-level `random` is used
(which `transformers.set_seed` seeds and which torch's DataLoader reseeds in every worker). The per-pixel noise of
random erasing comes from torch (a generator seeded from `rng` when one is given, torch's global one otherwise).
timm draws some of these numbers from NumPy instead; the distributions are the same, the streams are not.

Deliberate differences from timm: no colour jitter (timm switches it off whenever RandAugment is on, as here);
`Mixup` accepts odd batch sizes (timm asserts an even batch; with `flip(0)` the middle sample mixes with itself).
"""

import math
import random
import re
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps
import torch
import torch.nn.functional as F

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_LEVEL_DENOM = 10.0  # timm's magnitude scale: 0..10

_INTERPOLATIONS = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "box": PIL.Image.Resampling.BOX,
    "hamming": PIL.Image.Resampling.HAMMING,
}


def pil_interpolation(name: Union[str, int]) -> int:
    """PIL resampling filter from a name ("bicubic", ...) or a PIL constant."""
    if isinstance(name, str):
        try:
            return _INTERPOLATIONS[name.lower()]
        except KeyError:
            raise ValueError(f"unknown interpolation {name!r}; expected one of {', '.join(_INTERPOLATIONS)}") from None
    return PIL.Image.Resampling(int(name))


def _rng(rng: Optional[random.Random]):
    return random if rng is None else rng


# ----------------------------------------------------------------------------------------------------------
# geometry


class RandomResizedCrop:
    """timm's `RandomResizedCropAndInterpolation` on PIL images: a crop of random area fraction in `scale` and
    log-uniform aspect ratio in `ratio` (10 tries, then a central crop with the ratio clamped), resized to `size`."""

    def __init__(
        self,
        size: Union[int, Tuple[int, int]],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: Union[str, int] = "bicubic",
    ):
        self.size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"`scale` must be (low, high) with 0 < low <= high, got {tuple(scale)}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"`ratio` must be (low, high) with 0 < low <= high, got {tuple(ratio)}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = pil_interpolation(interpolation)

    def get_params(self, width: int, height: int, rng: Optional[random.Random] = None) -> Tuple[int, int, int, int]:
        """(top, left, height, width) of the crop in an image of the given size."""
        rng = _rng(rng)
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = rng.uniform(*self.scale) * area
            aspect_ratio = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w = width
            h = int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h = height
            w = int(round(h * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: PIL.Image.Image, rng: Optional[random.Random] = None) -> PIL.Image.Image:
        top, left, h, w = self.get_params(image.width, image.height, rng)
        crop = image.crop((left, top, left + w, top + h))
        return crop.resize((self.size[1], self.size[0]), resample=self.interpolation)


# ----------------------------------------------------------------------------------------------------------
# RandAugment (timm's auto_augment.py, the "rand-..." policies)


def _randomly_negate(value: float, rng) -> float:
    return -value if rng.random() > 0.5 else value


def _affine(image, matrix, fill, resample):
    return image.transform(image.size, PIL.Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(image, add: int, threshold: int = 128):
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    if image.mode == "RGB":
        lut = lut * 3
    return image.point(lut)


def _posterize(image, bits: int):
    """Keep the `bits` most significant bits of every channel (0 bits: black, as older PIL's ImageOps.posterize
    gave for timm's top magnitude; current PIL refuses bits < 1)."""
    if bits >= 8:
        return image
    mask = ~(2 ** (8 - max(0, bits)) - 1) & 0xFF
    lut = [value & mask for value in range(256)]
    return image.point(lut * len(image.getbands()))


# Each op: (function(image, argument, fill, resample), level -> argument). Levels are magnitudes on the 0..10 scale.
def _op_table(translate_pct: float):
    def enhance(cls):
        return lambda image, factor, fill, resample: cls(image).enhance(factor)

    def enhance_level(level, rng):  # "Color", "Contrast", ...: factor in [0.1, 1.9], 1 = unchanged
        return (level / _LEVEL_DENOM) * 1.8 + 0.1

    def enhance_increasing_level(level, rng):  # the "...Increasing" variants: 1 +- up to 0.9, away from 1
        return max(0.1, 1.0 + _randomly_negate((level / _LEVEL_DENOM) * 0.9, rng))

    none = lambda level, rng: None  # noqa: E731
    return {
        "AutoContrast": (lambda image, arg, fill, resample: PIL.ImageOps.autocontrast(image), none),
        "Equalize": (lambda image, arg, fill, resample: PIL.ImageOps.equalize(image), none),
        "Invert": (lambda image, arg, fill, resample: PIL.ImageOps.invert(image), none),
        "Rotate": (
            lambda image, degrees, fill, resample: image.rotate(degrees, resample=resample, fillcolor=fill),
            lambda level, rng: _randomly_negate((level / _LEVEL_DENOM) * 30.0, rng),
        ),
        "Posterize": (
            lambda image, bits, fill, resample: _posterize(image, bits),
            lambda level, rng: int((level / _LEVEL_DENOM) * 4),
        ),
        "PosterizeIncreasing": (
            lambda image, bits, fill, resample: _posterize(image, bits),
            lambda level, rng: 4 - int((level / _LEVEL_DENOM) * 4),
        ),
        "Solarize": (
            lambda image, threshold, fill, resample: PIL.ImageOps.solarize(image, threshold),
            lambda level, rng: int((level / _LEVEL_DENOM) * 256),
        ),
        "SolarizeIncreasing": (
            lambda image, threshold, fill, resample: PIL.ImageOps.solarize(image, threshold),
            lambda level, rng: 256 - int((level / _LEVEL_DENOM) * 256),
        ),
        "SolarizeAdd": (
            lambda image, add, fill, resample: _solarize_add(image, add),
            lambda level, rng: int((level / _LEVEL_DENOM) * 110),
        ),
        "Color": (enhance(PIL.ImageEnhance.Color), enhance_level),
        "ColorIncreasing": (enhance(PIL.ImageEnhance.Color), enhance_increasing_level),
        "Contrast": (enhance(PIL.ImageEnhance.Contrast), enhance_level),
        "ContrastIncreasing": (enhance(PIL.ImageEnhance.Contrast), enhance_increasing_level),
        "Brightness": (enhance(PIL.ImageEnhance.Brightness), enhance_level),
        "BrightnessIncreasing": (enhance(PIL.ImageEnhance.Brightness), enhance_increasing_level),
        "Sharpness": (enhance(PIL.ImageEnhance.Sharpness), enhance_level),
        "SharpnessIncreasing": (enhance(PIL.ImageEnhance.Sharpness), enhance_increasing_level),
        "ShearX": (
            lambda image, shear, fill, resample: _affine(image, (1, shear, 0, 0, 1, 0), fill, resample),
            lambda level, rng: _randomly_negate((level / _LEVEL_DENOM) * 0.3, rng),
        ),
        "ShearY": (
            lambda image, shear, fill, resample: _affine(image, (1, 0, 0, shear, 1, 0), fill, resample),
            lambda level, rng: _randomly_negate((level / _LEVEL_DENOM) * 0.3, rng),
        ),
        "TranslateXRel": (
            lambda image, pct, fill, resample: _affine(image, (1, 0, pct * image.size[0], 0, 1, 0), fill, resample),
            lambda level, rng: _randomly_negate((level / _LEVEL_DENOM) * translate_pct, rng),
        ),
        "TranslateYRel": (
            lambda image, pct, fill, resample: _affine(image, (1, 0, 0, 0, 1, pct * image.size[1]), fill, resample),
            lambda level, rng: _randomly_negate((level / _LEVEL_DENOM) * translate_pct, rng),
        ),
    }


# timm's `_RAND_TRANSFORMS` and `_RAND_INCREASING_TRANSFORMS` (same order).
RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)  # fmt: skip


class RandAugment:
    """timm's RandAugment: `num_layers` ops drawn uniformly with replacement, each applied with probability `prob`,
    at a magnitude drawn from N(`magnitude`, `magnitude_std`) and clipped to [0, `magnitude_max`] on every call.

    Works on PIL images (returned as PIL images of the same mode and size) and on `(3, H, W)` tensors: uint8 in
    0..255, or floating point in [0, 1] (returned with the same shape, dtype and device; floats are quantised to
    8 bits on the way, as the ops are 8-bit image operations).

    Geometric ops fill with `fill` (timm: the ImageNet mean in 0..255, (124, 116, 104)) and resample with
    `interpolation` (the recipe's bicubic); translations are relative (`translate_pct` of the size, 0.45 at 10).
    """

    def __init__(
        self,
        num_layers: int = 2,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        magnitude_max: float = _LEVEL_DENOM,
        prob: float = 0.5,
        increasing: bool = True,
        ops: Optional[Sequence[str]] = None,
        translate_pct: float = 0.45,
        fill: Tuple[int, int, int] = tuple(min(255, round(255 * m)) for m in IMAGENET_DEFAULT_MEAN),
        interpolation: Union[str, int] = "bicubic",
    ):
        table = _op_table(translate_pct)
        names = tuple(ops) if ops is not None else (RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS)
        unknown = [name for name in names if name not in table]
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; known: {', '.join(table)}")
        if num_layers < 0 or not 0 <= prob <= 1 or magnitude_std < 0:
            raise ValueError("RandAugment needs num_layers >= 0, 0 <= prob <= 1 and magnitude_std >= 0")
        self.op_names = names
        self._ops = [table[name] for name in names]
        self.num_layers = int(num_layers)
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)
        self.magnitude_max = float(magnitude_max)
        self.prob = float(prob)
        self.fill = tuple(int(v) for v in fill)
        self.interpolation = pil_interpolation(interpolation)

    def _sample_magnitude(self, rng) -> float:
        magnitude = self.magnitude
        if self.magnitude_std == float("inf"):
            magnitude = rng.uniform(0.0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = rng.gauss(magnitude, self.magnitude_std)
        return max(0.0, min(magnitude, self.magnitude_max))

    def apply_pil(self, image: PIL.Image.Image, rng: Optional[random.Random] = None) -> PIL.Image.Image:
        rng = _rng(rng)
        fill = self.fill if image.mode == "RGB" else self.fill[0]
        chosen = [rng.randrange(len(self._ops)) for _ in range(self.num_layers)]
        for index in chosen:
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            function, level_to_arg = self._ops[index]
            argument = level_to_arg(self._sample_magnitude(rng), rng)
            image = function(image, argument, fill, self.interpolation)
        return image

    def __call__(self, image, rng: Optional[random.Random] = None):
        if isinstance(image, PIL.Image.Image):
            return self.apply_pil(image, rng)
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError("RandAugment takes a PIL image or a (3, H, W) tensor")
        dtype, device = image.dtype, image.device
        if dtype == torch.uint8:
            array = image.permute(1, 2, 0).cpu().numpy()
        elif dtype.is_floating_point:
            array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        else:
            raise ValueError(f"RandAugment tensors must be uint8 (0..255) or float (0..1), got {dtype}")
        out = np.asarray(self.apply_pil(PIL.Image.fromarray(np.ascontiguousarray(array)), rng))
        tensor = torch.from_numpy(out.copy()).permute(2, 0, 1).to(device)
        return tensor if dtype == torch.uint8 else (tensor.float() / 255).to(dtype)

    def __repr__(self) -> str:
        return (
            f"RandAugment(n={self.num_layers}, m={self.magnitude}, mstd={self.magnitude_std}, "
            f"mmax={self.magnitude_max}, p={self.prob}, ops={list(self.op_names)})"
        )


def rand_augment_transform(config_str: str, **kwargs) -> RandAugment:
    """RandAugment from a timm config string, e.g. "rand-m9-mstd0.5-inc1" (the recipe's).

    Sections after "rand": `m` magnitude (default 10), `n` number of ops (2), `mstd` magnitude std (0; "inf" for
    uniform in [0, m]), `mmax` upper bound (10), `p` probability of each op (0.5), `inc` 1 for the "increasing"
    op set. kwargs (`fill`, `interpolation`, `translate_pct`) go to `RandAugment`.
    """
    sections = config_str.split("-")
    if not sections or sections[0] != "rand":
        raise ValueError(f"RandAugment config must start with 'rand', got {config_str!r}")
    settings = dict(magnitude=10.0, num_layers=2, magnitude_std=0.0, magnitude_max=_LEVEL_DENOM, prob=0.5)
    increasing = False
    for section in sections[1:]:
        match = re.match(r"([a-z]+)(.+)$", section)
        if match is None:
            raise ValueError(f"cannot read section {section!r} of RandAugment config {config_str!r}")
        key, value = match.groups()
        if key == "mstd":
            settings["magnitude_std"] = float(value)
        elif key == "mmax":
            settings["magnitude_max"] = float(value)
        elif key == "inc":
            increasing = bool(int(value))
        elif key == "m":
            settings["magnitude"] = float(value)
        elif key == "n":
            settings["num_layers"] = int(value)
        elif key == "p":
            settings["prob"] = float(value)
        else:
            raise ValueError(
                f"unsupported RandAugment section {section!r} in {config_str!r} (known: m, n, mstd, mmax, p, inc)"
            )
    return RandAugment(increasing=increasing, **settings, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# tensors: normalisation and random erasing


def to_normalized_tensor(image: PIL.Image.Image, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """torchvision's ToTensor + Normalize: `(3, H, W)` float32, (x / 255 - mean) / std."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (tensor - mean) / std


class RandomErasing:
    """timm's `RandomErasing` (Zhong et al.) on normalised `(C, H, W)` or `(B, C, H, W)` tensors, per sample.

    With probability `probability`, `count` rectangles (1 by default) of area fraction uniform in
    [`min_area`, `max_area`] / count and log-uniform aspect ratio in [`min_aspect`, `max_aspect`] (10 tries each) are
    replaced by: N(0, 1) noise per pixel (`mode="pixel"`, the recipe's), one N(0, 1) colour per channel
    (`"rand"`) or zeros (`"const"`). The tensor is changed in place and returned.
    """

    def __init__(
        self,
        probability: float = 0.25,
        min_area: float = 0.02,
        max_area: float = 1.0 / 3.0,
        min_aspect: float = 0.3,
        max_aspect: Optional[float] = None,
        mode: str = "pixel",
        min_count: int = 1,
        max_count: Optional[int] = None,
    ):
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"random erasing mode must be 'pixel', 'rand' or 'const', got {mode!r}")
        self.probability = float(probability)
        self.min_area, self.max_area = float(min_area), float(max_area)
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.mode = mode
        self.min_count = int(min_count)
        self.max_count = int(max_count or min_count)

    def _pixels(self, shape, dtype, device, generator):
        if self.mode == "pixel":
            return torch.empty(shape, dtype=torch.float32).normal_(generator=generator).to(device, dtype)
        if self.mode == "rand":
            return torch.empty((shape[0], 1, 1), dtype=torch.float32).normal_(generator=generator).to(device, dtype)
        return torch.zeros((shape[0], 1, 1), dtype=dtype, device=device)

    def erase_boxes(self, height: int, width: int, rng: Optional[random.Random] = None) -> list:
        """The (top, left, h, w) boxes one sample gets (an empty list when it is left alone)."""
        rng = _rng(rng)
        if rng.random() > self.probability:
            return []
        area = height * width
        count = self.min_count if self.min_count == self.max_count else rng.randint(self.min_count, self.max_count)
        boxes = []
        for _ in range(count):
            for _ in range(10):
                target_area = rng.uniform(self.min_area, self.max_area) * area / count
                aspect_ratio = math.exp(rng.uniform(*self.log_aspect_ratio))
                h = int(round(math.sqrt(target_area * aspect_ratio)))
                w = int(round(math.sqrt(target_area / aspect_ratio)))
                if w < width and h < height:
                    boxes.append((rng.randint(0, height - h), rng.randint(0, width - w), h, w))
                    break
        return boxes

    def __call__(self, tensor: torch.Tensor, rng: Optional[random.Random] = None) -> torch.Tensor:
        if tensor.ndim not in (3, 4):
            raise ValueError(f"random erasing takes (C, H, W) or (B, C, H, W) tensors, got {tuple(tensor.shape)}")
        generator = None
        if rng is not None:
            generator = torch.Generator().manual_seed(rng.getrandbits(63))
        samples = tensor if tensor.ndim == 4 else tensor[None]
        channels, height, width = samples.shape[1:]
        for sample in samples:
            for top, left, h, w in self.erase_boxes(height, width, rng):
                sample[:, top : top + h, left : left + w] = self._pixels(
                    (channels, h, w), sample.dtype, sample.device, generator
                )
        return tensor


# ----------------------------------------------------------------------------------------------------------
# the whole per-image training transform


class ImageNetTrainTransform:
    """PIL image -> normalised `(3, size, size)` float32 tensor, the authors' training transform (timm's
    `create_transform(is_training=True)` with the recipe's settings as defaults)."""

    def __init__(
        self,
        image_size: int = 224,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip: float = 0.5,
        auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
        interpolation: str = "bicubic",
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
    ):
        self.crop = RandomResizedCrop(image_size, scale=scale, ratio=ratio, interpolation=interpolation)
        self.hflip = float(hflip)
        self.rand_augment = None
        if auto_augment and auto_augment.lower() != "none":
            fill = tuple(min(255, round(255 * m)) for m in mean)
            self.rand_augment = rand_augment_transform(
                auto_augment, fill=fill, interpolation=interpolation, translate_pct=0.45
            )
        self.mean, self.std = tuple(mean), tuple(std)
        self.random_erasing = RandomErasing(re_prob, mode=re_mode, max_count=re_count) if re_prob > 0 else None

    def __call__(self, image: PIL.Image.Image, rng: Optional[random.Random] = None) -> torch.Tensor:
        generator = _rng(rng)
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = self.crop(image, rng)
        if self.hflip > 0 and generator.random() < self.hflip:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            image = self.rand_augment(image, rng)
        tensor = to_normalized_tensor(image, self.mean, self.std)
        if self.random_erasing is not None:
            tensor = self.random_erasing(tensor, rng)
        return tensor


# ----------------------------------------------------------------------------------------------------------
# mixup / cutmix and the soft-target loss


def smoothed_one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot rows with `smoothing` spread uniformly: 1 - smoothing + smoothing / C on the class, smoothing / C
    elsewhere (timm's `one_hot` with its mixup on / off values)."""
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    out = torch.full((target.shape[0], num_classes), off_value, dtype=torch.float32, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), on_value)


def mixup_target(target: torch.Tensor, num_classes: int, lam: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    """lam * smoothed one-hot(target) + (1 - lam) * smoothed one-hot(target flipped along the batch)."""
    y1 = smoothed_one_hot(target, num_classes, smoothing)
    y2 = smoothed_one_hot(target.flip(0), num_classes, smoothing)
    return y1 * lam + y2 * (1.0 - lam)


def rand_bbox(
    height: int, width: int, lam: float, rng: Optional[random.Random] = None, minmax: Optional[Sequence[float]] = None
) -> Tuple[int, int, int, int]:
    """CutMix box (y_low, y_high, x_low, x_high): side ratio sqrt(1 - lam) with a uniform centre, clipped to the
    image (timm's `rand_bbox`); with `minmax` a box of side fractions uniform in [min, max) placed inside the image
    (timm's `rand_bbox_minmax`)."""
    rng = _rng(rng)
    if minmax is not None:
        cut_h = rng.randrange(int(height * minmax[0]), max(int(height * minmax[0]) + 1, int(height * minmax[1])))
        cut_w = rng.randrange(int(width * minmax[0]), max(int(width * minmax[0]) + 1, int(width * minmax[1])))
        y_low = rng.randrange(0, max(1, height - cut_h))
        x_low = rng.randrange(0, max(1, width - cut_w))
        return y_low, y_low + cut_h, x_low, x_low + cut_w
    cut_ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_ratio), int(width * cut_ratio)
    cy, cx = rng.randrange(0, height), rng.randrange(0, width)
    y_low = min(max(cy - cut_h // 2, 0), height)
    y_high = min(max(cy + cut_h // 2, 0), height)
    x_low = min(max(cx - cut_w // 2, 0), width)
    x_high = min(max(cx + cut_w // 2, 0), width)
    return y_low, y_high, x_low, x_high


class Mixup:
    """timm's `Mixup` in "batch" mode: one lambda per batch, every sample mixed with the batch flipped.

    With probability `prob`: CutMix with probability `switch_prob` (lambda ~ Beta(cutmix_alpha, cutmix_alpha), a box
    of area 1 - lambda pasted from the flipped batch, lambda then corrected to the box's real area), otherwise
    Mixup (lambda ~ Beta(mixup_alpha, mixup_alpha), a convex combination). Only one alpha > 0 selects that method.
    Targets become `mixup_target(labels, num_classes, lambda, label_smoothing)` rows that sum to 1.

    `__call__(pixel_values, labels, rng=None)` returns the mixed batch (a new tensor) and the soft targets; the
    draw is kept in `last_params` (`lam`, `use_cutmix`, `bbox`).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        cutmix_minmax: Optional[Sequence[float]] = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        correct_lam: bool = True,
    ):
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2:
                raise ValueError(f"`cutmix_minmax` must be (min, max), got {cutmix_minmax}")
            cutmix_alpha = 1.0  # as timm: the box comes from minmax, alpha only switches CutMix on
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.cutmix_minmax = None if cutmix_minmax is None else tuple(float(v) for v in cutmix_minmax)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.correct_lam = bool(correct_lam)
        self.last_params = None

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def sample_params(self, rng: Optional[random.Random] = None) -> Tuple[float, bool]:
        """(lambda, use_cutmix) for one batch, in timm's order of draws."""
        rng = _rng(rng)
        lam, use_cutmix = 1.0, False
        if self.enabled and rng.random() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = rng.random() < self.switch_prob
                alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            elif self.mixup_alpha > 0:
                alpha = self.mixup_alpha
            else:
                use_cutmix, alpha = True, self.cutmix_alpha
            lam = float(rng.betavariate(alpha, alpha))
        return lam, use_cutmix

    def __call__(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, rng: Optional[random.Random] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if pixel_values.ndim != 4 or labels.ndim != 1 or labels.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"Mixup takes pixel_values (B, C, H, W) and labels (B,), got {tuple(pixel_values.shape)} and "
                f"{tuple(labels.shape)}"
            )
        rng = _rng(rng)
        lam, use_cutmix = self.sample_params(rng)
        bbox = None
        mixed = pixel_values
        if lam != 1.0:
            flipped = pixel_values.flip(0)
            if use_cutmix:
                height, width = pixel_values.shape[-2:]
                bbox = rand_bbox(height, width, lam, rng, self.cutmix_minmax)
                y_low, y_high, x_low, x_high = bbox
                if self.correct_lam or self.cutmix_minmax is not None:
                    lam = 1.0 - (y_high - y_low) * (x_high - x_low) / float(height * width)
                mixed = pixel_values.clone()
                mixed[..., y_low:y_high, x_low:x_high] = flipped[..., y_low:y_high, x_low:x_high]
            else:
                mixed = pixel_values * lam + flipped * (1.0 - lam)
        self.last_params = {"lam": lam, "use_cutmix": use_cutmix, "bbox": bbox}
        targets = mixup_target(labels, self.num_classes, lam, self.label_smoothing)
        return mixed, targets.to(pixel_values.device)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm's `SoftTargetCrossEntropy`: mean over the batch of -sum_c target_c * log_softmax(logits)_c, in float32."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and soft targets {tuple(targets.shape)} must have one shape")
    return torch.sum(-targets.float() * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "ImageNetTrainTransform",
    "Mixup",
    "RAND_INCREASING_TRANSFORMS",
    "RAND_TRANSFORMS",
    "RandAugment",
    "RandomErasing",
    "RandomResizedCrop",
    "mixup_target",
    "pil_interpolation",
    "rand_augment_transform",
    "rand_bbox",
    "smoothed_one_hot",
    "soft_target_cross_entropy",
    "to_normalized_tensor",
]
