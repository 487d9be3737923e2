# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""Image processor for PaCa-ViT, PIL / NumPy backend (runs without torchvision).

Also the home of what both backends share (keyword arguments, defaults, decoding, label maps, post-processing):
`image_processing_pacavit.py` imports it from here, so that this module never needs torchvision.
"""

import math
import numbers
from collections.abc import Sequence

import numpy as np
import PIL.Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import auto_docstring

from .images import image_to_array, load_label_map, reduce_labels


# Label written into padded areas of segmentation maps (the usual `ignore_index`).
LABEL_PAD_VALUE = 255


class PaCaViTImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    crop_pct (`float`, *optional*, defaults to `self.crop_pct`):
        Ratio of the center crop to the resized image (timm's `crop_pct`). When `size` has a `shortest_edge` and
        `do_center_crop` is on, the shorter side is resized to `floor(shortest_edge / crop_pct)` before cropping.
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Map label 0 to 255 and subtract 1 from every other label of the segmentation maps (255 stays 255), as for
        ADE20k where 0 is "background / ignore".
    antialias (`bool`, *optional*, defaults to `self.antialias`):
        Whether a downscaling resize filters first (PIL's and torchvision's antialiased resize, timm's ImageNet
        transform). `False` interpolates the source pixels directly, in float32 (torch's `interpolate` with
        half-pixel centres, the same in both backends): mmseg's OpenCV `INTER_LINEAR`, the authors' segmentation
        evaluation.
    """

    crop_pct: float | int | None
    do_reduce_labels: bool | None
    antialias: bool | None


class PaCaViTImageProcessingMixin:
    r"""
    What [`PaCaViTImageProcessor`] (torchvision) and [`PaCaViTImageProcessorPil`] share: the defaults (the authors'
    timm ImageNet evaluation transform: shorter side to `floor(size["shortest_edge"] / crop_pct)`, bicubic, long side
    truncated as torchvision's `Resize(int)`; center crop with torchvision's rounding, zero padding where the image is
    smaller; `/ 255`; ImageNet mean / std), the decoding of every input in the backend's per-image hook
    `process_image`, the segmentation maps (same geometry, nearest neighbour, padded with 255, returned as int64
    `labels`) and the post-processing. Each backend's `resize`, `center_crop` and `_preprocess` do the pixel work.

    Inputs are decoded by [`paca_hf.images.image_to_array`], as everywhere in the package: PIL images of any mode (EXIF
    orientation applied), numpy arrays and torch tensors (`(H, W)`, `(H, W, C)` or `(C, H, W)`), paths and URLs. 8-bit
    data is rescaled by `rescale_factor`; 16-bit data becomes `value / 65535` and float data is taken to be in
    `[0, 1]`, so neither is rescaled again. `do_convert_rgb=True` repeats grey and drops alpha without compositing
    (PIL's `convert("RGB")`, as the authors' loader); `False` keeps the channels (`image_mean` / `image_std` then need
    one value per channel). Inputs that cannot be turned into such an image raise `ValueError` naming the image.
    """

    valid_kwargs = PaCaViTImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    crop_pct = 0.9
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_reduce_labels = False
    antialias = True

    @auto_docstring
    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[PaCaViTImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        segmentation_maps (`ImageInput`, *optional*):
            One single-channel integer label map per image, of its image's height and width (any input
            [`paca_hf.images.load_label_map`] takes). Returned as `labels`, int64 `(batch, height, width)`.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        return _flatten(images, "image" if expected_ndims == 3 else "segmentation map")

    def _prepare_image_like_inputs(self, images: ImageInput, *args, expected_ndims: int = 3, **kwargs) -> list:
        """The backends' loop over `process_image`, naming the image an error comes from."""
        prepared = []
        for index, image in enumerate(self._prepare_images_structure(images, expected_ndims=expected_ndims)):
            try:
                prepared.append(self.process_image(image, *args, **kwargs))
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from error
        return prepared

    def process_image(self, image, do_convert_rgb: bool | None = None, input_data_format=None, device=None, **kwargs):
        """One input decoded by [`paca_hf.images.image_to_array`] (every PIL mode, 16-bit, EXIF orientation), then
        handed to the backend as a channels-first uint8 (8-bit data) or float32 (in `[0, 1]`) array."""
        array = image_to_array(image, num_channels=None if do_convert_rgb is False else 3,
                               input_data_format=input_data_format)
        # A copy: the steps may work in place, and arrays viewing a PIL image's buffer are read-only.
        channels_first = np.moveaxis(array, -1, 0).copy()
        return super().process_image(
            channels_first, do_convert_rgb=False, input_data_format=ChannelDimension.FIRST, device=device
        )

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        *,
        do_convert_rgb: bool | None,
        input_data_format: str | ChannelDimension | None,
        return_tensors=None,
        device=None,
        **kwargs,
    ) -> BatchFeature:
        crop_pct, crop_size = kwargs["crop_pct"], kwargs["crop_size"]
        valid_crop_pct = isinstance(crop_pct, (int, float)) and math.isfinite(crop_pct) and crop_pct > 0
        if crop_pct is not None and not valid_crop_pct:
            raise ValueError(f"`crop_pct` must be a positive number, got {crop_pct!r}")
        if kwargs["do_center_crop"] and (crop_size is None or not (crop_size.height and crop_size.width)):
            raise ValueError(f"`crop_size` must be {{'height': int, 'width': int}}, got {crop_size}")
        if input_data_format is not None:
            input_data_format = ChannelDimension(input_data_format)

        raw_images = self._prepare_images_structure(images)
        pixels = self._prepare_image_like_inputs(
            raw_images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        maps = []
        if segmentation_maps is not None:  # decoded and checked before any pixel work
            raw_maps = self._prepare_images_structure(segmentation_maps, expected_ndims=2)
            if len(raw_maps) != len(raw_images):
                raise ValueError(
                    f"got {len(raw_images)} images but {len(raw_maps)} segmentation maps; pass exactly one map per "
                    "image"
                )
            for index, (seg, image, pixel) in enumerate(zip(raw_maps, raw_images, pixels)):
                try:  # with its image, whose EXIF orientation a map without its own is turned by
                    seg = load_label_map(seg, image=image)
                except ValueError as error:
                    raise ValueError(f"segmentation map {index}: {error}") from error
                if seg.shape != tuple(pixel.shape[-2:]):
                    raise ValueError(
                        f"segmentation map {index} has size {seg.shape} (height, width) but its image has size "
                        f"{tuple(pixel.shape[-2:])}; they must match"
                    )
                seg = reduce_labels(seg) if kwargs["do_reduce_labels"] else seg
                maps.append(super().process_image(seg[None], input_data_format=ChannelDimension.FIRST, device=device))
        data = {"pixel_values": self._preprocess(pixels, **kwargs)}
        if segmentation_maps is not None:
            # int64 maps take the label path of `resize` and `center_crop` (nearest, padded with 255).
            labels = self._preprocess(maps, **{**kwargs, "do_rescale": False, "do_normalize": False})
            data["labels"] = [label[0] for label in labels]
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def reduce_label(label):
        """0 -> 255, every other label minus 1, 255 stays 255 (see [`paca_hf.images.reduce_labels`])."""
        return reduce_labels(label)

    @staticmethod
    def _mean_std(image_mean, image_std, channels: int) -> tuple[list[float], list[float]]:
        """`image_mean` and `image_std` with one value per channel; `ValueError` for a wrong count or a zero std."""
        values = []
        for value, name in ((image_mean, "image_mean"), (image_std, "image_std")):
            array = np.asarray(value, dtype=np.float64).reshape(-1)
            array = np.repeat(array, channels) if array.size == 1 else array
            if array.size != channels:
                raise ValueError(
                    f"`{name}` must be a number or have {channels} values (one per channel of the images), got {value}"
                )
            values.append(array.tolist())
        if 0 in values[1]:
            raise ValueError(f"`image_std` must not contain zeros, got {image_std}")
        return values[0], values[1]

    @staticmethod
    def _interpolate(batch, size: SizeDict, resample):
        """The resize without antialiasing (`antialias=False`): torch's `interpolate` (half-pixel centres) of a
        channels-first image or batch (numpy array or tensor, returned as the same kind), in float32 without rounding;
        bicubic results are clipped to the input's value range (255 for 8-bit data, else 1).

        Raises:
            `ValueError`: a `resample` other than nearest, bilinear or bicubic.
        """
        import torch
        import torch.nn.functional as F

        modes = {PILImageResampling.NEAREST: "nearest-exact", PILImageResampling.BILINEAR: "bilinear",
                 PILImageResampling.BICUBIC: "bicubic"}
        mode = modes.get(PILImageResampling(int(resample if resample is not None else PILImageResampling.BICUBIC)))
        if mode is None:
            raise ValueError(
                f"`resample` {resample!r} has no resize without antialiasing; with `antialias=False` use nearest, "
                f"bilinear or bicubic"
            )
        is_array = isinstance(batch, np.ndarray)
        tensor = torch.from_numpy(np.ascontiguousarray(batch)) if is_array else batch
        top = 255.0 if tensor.dtype == torch.uint8 else 1.0
        single = tensor.ndim == 3
        tensor = tensor[None] if single else tensor
        extra = {} if mode == "nearest-exact" else {"align_corners": False}
        resized = F.interpolate(tensor.to(torch.float32), size=(size.height, size.width), mode=mode, **extra)
        if mode == "bicubic":
            resized = resized.clamp_(0.0, top)
        resized = resized[0] if single else resized
        return resized.numpy() if is_array else resized

    @staticmethod
    def _resize_output_size(image, size: SizeDict | None, crop_pct: float | None) -> SizeDict:
        """Output size of the resize step for a channels-first `image` (or batch): timm's `crop_pct` rule."""
        if size is None:
            raise ValueError("`size` must be given when `do_resize=True`")
        if size.shortest_edge:
            short_target = size.shortest_edge
            if crop_pct is not None:
                short_target = math.floor(short_target / crop_pct)
            if short_target < 1:
                raise ValueError(f"resize target {short_target} is smaller than one pixel (size={dict(size)})")
            if size.longest_edge is not None and size.longest_edge <= short_target:
                raise ValueError(f"`longest_edge` must be larger than the resized shorter side (size={dict(size)})")
            height, width = get_resize_output_image_size(
                image, size=short_target, default_to_square=False, max_size=size.longest_edge,
                input_data_format=ChannelDimension.FIRST,
            )
            return SizeDict(height=height, width=width)
        if size.height and size.width:
            return SizeDict(height=size.height, width=size.width)
        raise ValueError(
            f"`size` must be {{'shortest_edge': int}} (optionally with 'longest_edge': int) or "
            f"{{'height': int, 'width': int}}, got {dict(size)}"
        )

    @staticmethod
    def _center_crop_box(length: int, crop: int) -> tuple[int, int, int]:
        """(start, before, after): crop start in the image and zero padding before / after along one axis, with
        torchvision's `center_crop` rounding (`round((length - crop) / 2)`) and padding split."""
        if crop <= length:
            return int(round((length - crop) / 2.0)), 0, 0
        return 0, (crop - length) // 2, (crop - length + 1) // 2

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: Sequence | None = None, return_segmentation_scores: bool = False
    ) -> list:
        """
        Turn semantic segmentation logits into label maps.

        Args:
            outputs: Model output with `logits` of shape `(batch, num_labels, h, w)`.
            target_sizes (`list[tuple[int, int]]` or tensor of shape `(batch, 2)`, *optional*): `(height, width)` of
                each prediction; logits are upsampled bilinearly (`align_corners=False`) before the argmax. If unset,
                the argmax is taken at the logits' resolution.
            return_segmentation_scores (`bool`, defaults to `False`): Also return the (upsampled) logits.

        Returns:
            `list[torch.Tensor]`: one `(height, width)` int64 map of class ids per image; with
            `return_segmentation_scores=True`, one [`SemanticSegmentationPostProcessorOutput`] per image instead, with
            `segmentation` (that map) and `segmentation_scores` (the logits it was taken from, `(num_labels, height,
            width)`), as transformers' Segformer returns them.

        Raises:
            `ValueError`: logits that are not 4-D, a number of target sizes different from the batch size, or a
                target size that is not a `(height, width)` pair of positive integers.
        """
        import torch
        import torch.nn.functional as F
        from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if logits.ndim != 4:
            raise ValueError(f"expected logits of shape (batch, num_labels, height, width), got {tuple(logits.shape)}")
        if target_sizes is None:
            scores = list(logits.unbind(0))
        else:
            if isinstance(target_sizes, torch.Tensor):
                target_sizes = target_sizes.tolist()
            if len(target_sizes) != len(logits):
                raise ValueError(
                    f"got {len(target_sizes)} target sizes for a batch of {len(logits)} logits; pass one per image"
                )
            scores = []
            for index, (logit, target) in enumerate(zip(logits, target_sizes)):
                height, width = _target_size(target, index)
                scores.append(F.interpolate(logit[None], size=(height, width), mode="bilinear", align_corners=False)[0])
        maps = [score.argmax(dim=0) for score in scores]
        if not return_segmentation_scores:
            return maps
        return [
            SemanticSegmentationPostProcessorOutput(data={"segmentation": seg, "segmentation_scores": score})
            for seg, score in zip(maps, scores)
        ]


def _flatten(inputs, what: str) -> list:
    """Turn an image / a list (possibly nested once) / a batched array into a flat list of single items (a path, URL
    or PIL image is one item; its type is checked where it is decoded)."""
    single_ndims = (2, 3) if what == "image" else (2,)
    if isinstance(inputs, (list, tuple)):
        flat = [x for item in inputs for x in (item if isinstance(item, (list, tuple)) else [item])]
        if not flat:
            raise ValueError(f"no {what}s were given (empty list)")
        for x in flat:
            if what == "image" and hasattr(x, "ndim") and x.ndim not in single_ndims:
                raise ValueError(
                    f"each {what} in a list must have rank 2 (H, W) or 3 (C, H, W) / (H, W, C), got rank "
                    f"{x.ndim} with shape {tuple(x.shape)}"
                )
        return flat
    if not hasattr(inputs, "ndim") or inputs.ndim in single_ndims:
        return [inputs]
    batch_ndim = single_ndims[-1] + 1
    if inputs.ndim == batch_ndim:
        if inputs.shape[0] == 0:
            raise ValueError(f"no {what}s were given (batch of size 0, shape {tuple(inputs.shape)})")
        return list(inputs)
    expected = " or ".join(str(n) for n in single_ndims)
    raise ValueError(
        f"expected a single {what} of rank {expected} or a batch of rank {batch_ndim}, got rank {inputs.ndim} "
        f"with shape {tuple(inputs.shape)}"
    )


def _target_size(target, index: int) -> tuple[int, int]:
    """`(height, width)` of `target_sizes[index]` as positive ints, or a `ValueError` naming the entry."""
    pair = target.tolist() if hasattr(target, "tolist") else target
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
        raise ValueError(
            f"target_sizes[{index}] is {target!r}; each entry must be one (height, width) pair per image, e.g. "
            f"target_sizes=[(32, 20)] for a batch of one"
        )
    sizes = []
    for value in pair:
        integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral or value < 1:
            raise ValueError(f"target_sizes[{index}] is {target!r}; height and width must be positive integers")
        sizes.append(int(value))
    return sizes[0], sizes[1]


@auto_docstring(
    custom_intro="""
    PaCa-ViT image processor, PIL / NumPy backend: needs no torchvision and reproduces the authors' timm evaluation
    transform bit for bit on 8-bit RGB inputs (PIL bicubic). Settings, inputs and outputs are those of
    [`PaCaViTImageProcessingMixin`]; [`PaCaViTImageProcessor`] is the torchvision backend.
    """
)
class PaCaViTImageProcessorPil(PaCaViTImageProcessingMixin, PilBackend):

    valid_kwargs = PaCaViTImageProcessorKwargs

    def __init__(self, **kwargs: Unpack[PaCaViTImageProcessorKwargs]):
        super().__init__(**kwargs)

    def resize(self, image: np.ndarray, size: SizeDict, resample=None, crop_pct=None, antialias=True, **kwargs):
        """Resize a channels-first image to the size `size` and `crop_pct` give (see `_resize_output_size`). 8-bit
        grey / RGB goes through the backend's PIL resize (bit-exact with the authors' transform); other channel counts
        one channel at a time (PIL would premultiply a 4th channel as alpha), float data in PIL's 32-bit float mode,
        clipped to [0, 1]; int64 label maps with PIL's nearest neighbour (32-bit integer mode: labels kept);
        `antialias=False` with `_interpolate`."""
        size = self._resize_output_size(image, size, crop_pct)
        if image.dtype == np.int64:
            return self.resize_labels(image, size)
        if antialias is False:
            return self._interpolate(image, size, resample)
        resample = PILImageResampling.BICUBIC if resample is None else PILImageResampling(int(resample))
        if image.dtype == np.uint8 and image.shape[0] in (1, 3):
            return super().resize(image, size, resample=resample, **kwargs)
        channels = [
            np.asarray(PIL.Image.fromarray(channel).resize((size.width, size.height), resample=resample))
            for channel in image
        ]
        resized = np.stack(channels)
        return resized if image.dtype == np.uint8 else np.clip(resized, 0.0, 1.0)

    def resize_labels(self, labels: np.ndarray, size: SizeDict) -> np.ndarray:
        """Nearest-neighbour resize of a `(1, H, W)` int64 label map with PIL (32-bit integer mode: labels kept)."""
        resized = PIL.Image.fromarray(labels[0].astype(np.int32)).resize(
            (size.width, size.height), resample=PILImageResampling.NEAREST
        )
        return np.asarray(resized).astype(np.int64)[None]

    def center_crop(self, image: np.ndarray, size: SizeDict, fill=0, **kwargs) -> np.ndarray:
        """Center crop of a channels-first array with torchvision's rounding; pads with `fill` where it is too
        small (as timm's / torchvision's `CenterCrop` does with 0)."""
        if size.height is None or size.width is None:
            raise ValueError(f"`crop_size` must be {{'height': int, 'width': int}}, got {size}")
        (top, pad_top, pad_bottom), (left, pad_left, pad_right) = (
            self._center_crop_box(image.shape[1], size.height),
            self._center_crop_box(image.shape[2], size.width),
        )
        cropped = image[:, top : top + size.height, left : left + size.width]
        padding = ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right))
        return np.pad(cropped, padding, mode="constant", constant_values=fill)

    def _preprocess(self, images: list[np.ndarray], do_resize, size, resample, crop_pct, do_center_crop, crop_size,
                    do_rescale, rescale_factor, do_normalize, image_mean, image_std, antialias, **kwargs) -> list:
        """Resize, crop, rescale (8-bit data only) and normalize each channels-first image; int64 label maps get the
        geometry only. Returns the list of processed arrays (float32, or int64 for maps)."""
        processed = []
        for image in images:
            # 8-bit data is rescaled (decided before the resize: `antialias=False` returns float32 in [0, 255]).
            is_labels, rescale = image.dtype == np.int64, do_rescale and image.dtype == np.uint8
            if do_resize:
                crop = crop_pct if do_center_crop else None
                image = self.resize(image, size, resample, crop_pct=crop, antialias=antialias)
            if do_center_crop:
                image = self.center_crop(image, crop_size, fill=LABEL_PAD_VALUE if is_labels else 0)
            if not is_labels:
                image = image.astype(np.float32)
                if rescale:
                    image = self.rescale(image, rescale_factor)
                if do_normalize:
                    image = self.normalize(image, *self._mean_std(image_mean, image_std, image.shape[0]))
            processed.append(image)
        return processed


__all__ = ["PaCaViTImageProcessorPil", "PaCaViTImageProcessorKwargs", "PaCaViTImageProcessingMixin"]
