# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""Image processor for PaCa-ViT, PIL / NumPy backend (runs without torchvision), and what both backends share (keyword
arguments, defaults, decoding, geometry, label maps, post-processing): `image_processing_pacavit.py` imports it."""

import math
import numbers

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_resize_output_image_size, group_images_by_shape, reorder_images
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import auto_docstring

from .images import image_to_array, load_label_map, reduce_labels


LABEL_PAD_VALUE = 255  # written into the padded areas of label maps (the usual `ignore_index`)


class PaCaViTImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    crop_pct (`float`, *optional*, defaults to `self.crop_pct`):
        Ratio of the center crop to the resized image (timm's `crop_pct`). When `size` has a `shortest_edge` and
        `do_center_crop` is on, the shorter side is resized to `floor(shortest_edge / crop_pct)` before cropping.
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Map label 0 to 255 and subtract 1 from every other label of the segmentation maps (255 stays 255), as for
        ADE20k where 0 is "background / ignore".
    antialias (`bool`, *optional*, defaults to `self.antialias`):
        Whether a downscaling resize filters first (PIL's and torchvision's resize, timm's ImageNet transform).
        `False` interpolates the source pixels in float32 (torch's `interpolate`, half-pixel centres, both backends):
        mmseg's OpenCV `INTER_LINEAR`, the authors' segmentation evaluation.
    """

    crop_pct: float | int | None
    do_reduce_labels: bool | None
    antialias: bool | None


class PaCaViTImageProcessingMixin:
    r"""
    What [`PaCaViTImageProcessor`] (torchvision) and [`PaCaViTImageProcessorPil`] share: the defaults (the authors'
    timm evaluation transform), the decoding by [`paca_hf.images`] in the per-image hook `process_image` (16-bit and
    float data come as float32 in `[0, 1]`, not rescaled again), the geometry (label maps: nearest neighbour, 255 as
    padding) and the post-processing. Each backend brings its antialiased resize, rescale and normalize.
    """

    valid_kwargs = PaCaViTImageProcessorKwargs
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
    do_normalize = True
    do_convert_rgb = True
    do_reduce_labels = False
    antialias = True
    reduce_label = staticmethod(reduce_labels)

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

    def _validate_preprocess_kwargs(self, crop_pct=None, **kwargs):
        if crop_pct is not None and not (isinstance(crop_pct, numbers.Real) and 0 < crop_pct < math.inf):
            raise ValueError(f"`crop_pct` must be a positive number, got {crop_pct!r}")
        super()._validate_preprocess_kwargs(**kwargs)

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        """A flat list of single inputs (from one input, a list nested at most once, or a batched array / tensor)."""
        if isinstance(images, (list, tuple)):
            images = [x for item in images for x in (item if isinstance(item, (list, tuple)) else [item])]
        else:
            images = list(images) if getattr(images, "ndim", None) == expected_ndims + 1 else [images]
        if not images:
            raise ValueError(f"no {'images' if expected_ndims == 3 else 'segmentation maps'} were given")
        return images

    def _prepare_image_like_inputs(self, images, *args, expected_ndims=3, annotated=None, **kwargs) -> list:
        """The backends' loop over `process_image`, naming the failing input; maps come with the images they annotate."""
        images = self._prepare_images_structure(images, expected_ndims=expected_ndims)
        if annotated is not None and len(images) != len(annotated):
            raise ValueError(f"got {len(annotated)} images but {len(images)} segmentation maps: one per image")
        prepared = []
        for index, image in enumerate(images):
            extra = {} if annotated is None else {"annotates": annotated[index]}
            try:
                prepared.append(self.process_image(image, *args, **kwargs, **extra))
            except ValueError as error:
                raise ValueError(f"{'image' if annotated is None else 'segmentation map'} {index}: {error}") from error
        return prepared

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, annotates=None, **kwargs):
        """One input decoded by [`paca_hf.images`], channels first: an image (uint8 for 8-bit data, else float32 in
        `[0, 1]`) or, given the raw image it `annotates`, a segmentation map (int64, `(1, H, W)`)."""
        if annotates is not None:
            array = load_label_map(image, image=annotates)[None]
        else:  # a copy: the steps may work in place, and arrays viewing a PIL image's buffer are read-only
            channels = None if do_convert_rgb is False else 3
            array = np.moveaxis(image_to_array(image, channels, input_data_format), -1, 0).copy()
        return super().process_image(array, input_data_format="channels_first", device=device)

    def _preprocess_image_like_inputs(self, images, segmentation_maps=None, **kwargs) -> BatchFeature:
        images = self._prepare_images_structure(images)
        pixels = self._prepare_image_like_inputs(images, **kwargs)
        if segmentation_maps is not None:  # decoded and checked before any pixel work
            maps = self._prepare_image_like_inputs(segmentation_maps, expected_ndims=2, annotated=images, **kwargs)
            for index, (labels, image) in enumerate(zip(maps, pixels)):
                if (size := tuple(labels.shape[-2:])) != (image_size := tuple(image.shape[-2:])):
                    raise ValueError(f"segmentation map {index} has size {size} but its image {image_size}")
            maps = [reduce_labels(labels) for labels in maps] if kwargs["do_reduce_labels"] else maps
        data = {"pixel_values": self._preprocess(pixels, **kwargs)}
        if segmentation_maps is not None:  # int64 maps take the label path of `resize`, `center_crop`, no rescale
            data["labels"] = [labels[0] for labels in self._preprocess(maps, **kwargs)]
        return BatchFeature(data=data, tensor_type=kwargs["return_tensors"])

    def _preprocess(
        self,
        images: list,
        do_resize: bool,
        size: SizeDict,
        resample,
        crop_pct: float,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        antialias: bool,
        disable_grouping: bool | None = None,
        **kwargs,
    ) -> list:
        """Resize, crop, rescale (8-bit data only) and normalize channels-first images; int64 label maps get the
        geometry only. The torchvision backend batches the images of one shape and dtype, the PIL backend takes one
        image at a time. Returns the processed images (float32, or int64 for maps) in input order."""
        if self.backend == "pil":
            grouped, grouped_index = dict(enumerate(images)), None
        else:  # one dtype per batch: 8-bit data is rescaled, 16-bit and float data not
            disable_grouping = True if len({image.dtype for image in images}) > 1 else disable_grouping
            grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {}
        for key, batch in grouped.items():
            dtype = str(batch.dtype).removeprefix("torch.")  # before the resize, which may give 8-bit data as float32
            if do_resize:
                crop = crop_pct if do_center_crop else None
                batch = self.resize(batch, size, resample, crop_pct=crop, antialias=antialias)
            if do_center_crop:
                batch = self.center_crop(batch, crop_size, fill=LABEL_PAD_VALUE if dtype == "int64" else 0)
            if dtype != "int64":
                batch = batch.astype(np.float32) if isinstance(batch, np.ndarray) else batch.float()
                batch = self.rescale(batch, rescale_factor) if do_rescale and dtype == "uint8" else batch
                if do_normalize:  # in place where the backend can: never the caller's data (`process_image` copies)
                    mean, std = self._mean_std(image_mean, image_std, batch.shape[-3])
                    batch = self.normalize(batch, mean, std, inplace=True)
            processed[key] = batch
        return list(processed.values()) if grouped_index is None else reorder_images(processed, grouped_index)

    @staticmethod
    def _mean_std(image_mean, image_std, channels: int) -> list[list[float]]:
        """`image_mean` and `image_std` with one value per channel; `ValueError` for a wrong count or a zero std."""
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            if np.size(value) not in (1, channels) or (name == "image_std" and not np.all(value)):
                raise ValueError(f"`{name}` needs 1 or {channels} values (one per channel), std no zeros: {value}")
        return [np.resize(np.asarray(value, dtype=np.float64), channels).tolist() for value in (image_mean, image_std)]

    def resize(self, image, size: SizeDict, resample=None, crop_pct=None, antialias=True, **kwargs):
        """Resize channels-first images to the size `size` and `crop_pct` give (see `_resize_output_size`): label maps
        by `resize_labels`, images by the backend's `_antialiased_resize` or, with `antialias=False`, by torch's
        `interpolate` (half-pixel centres) in float32, bicubic clipped to the input's range (255 for 8-bit data)."""
        size = self._resize_output_size(image, size, crop_pct)
        resample = PILImageResampling.BICUBIC if resample is None else resample
        if str(image.dtype).endswith("int64"):
            return self.resize_labels(image, size)
        if antialias is not False:
            return self._antialiased_resize(image, size, resample)
        mode = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}.get(int(resample))  # PIL's nearest, bilinear, bicubic
        if mode is None:
            raise ValueError(f"`resample` {resample!r} has no resize without antialiasing (`antialias=False`)")
        tensor = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
        resized = F.interpolate(tensor.reshape(-1, *tensor.shape[-3:]).float(), (size.height, size.width), mode=mode)
        resized = resized.reshape(*tensor.shape[:-2], size.height, size.width)
        if mode == "bicubic":
            resized = resized.clamp_(0.0, 255.0 if tensor.dtype == torch.uint8 else 1.0)
        return resized.numpy() if isinstance(image, np.ndarray) else resized

    @staticmethod
    def _resize_output_size(image, size: SizeDict, crop_pct: float | None) -> SizeDict:
        """`size`, or for a `shortest_edge` the shorter side to it (to `floor(shortest_edge / crop_pct)` before a crop,
        as timm), the longer one in proportion (truncated, as torchvision's `Resize(int)`), at most `longest_edge`."""
        if size.shortest_edge:
            short = size.shortest_edge if crop_pct is None else math.floor(size.shortest_edge / crop_pct)
            if short < 1 or (size.longest_edge is not None and size.longest_edge <= short):
                raise ValueError(
                    f"`size` {dict(size)}, crop_pct={crop_pct}: shorter side {short} not in [1, longest_edge)"
                )
            height, width = get_resize_output_image_size(
                image, short, default_to_square=False, max_size=size.longest_edge, input_data_format="channels_first"
            )
            return SizeDict(height=height, width=width)
        if size.height and size.width:
            return size
        raise ValueError(f"`size` needs 'shortest_edge' (and 'longest_edge') or 'height' and 'width', got {size}")

    @staticmethod
    def resize_labels(labels, size: SizeDict):
        """Nearest-neighbour resize of `(..., H, W)` int64 label maps (numpy or torch) picking PIL's `NEAREST` pixels
        (the authors'): float64 steps of `in / out` summed and truncated (torchvision multiplies: off by one on ties)."""
        for axis, new_length in ((-2, size.height), (-1, size.width)):
            steps = np.full(new_length, labels.shape[axis] / new_length)
            steps[0] /= 2
            index = np.minimum(np.cumsum(steps).astype(np.int64), labels.shape[axis] - 1)
            index = index if isinstance(labels, np.ndarray) else torch.from_numpy(index).to(labels.device)
            labels = labels[..., index, :] if axis == -2 else labels[..., index]
        return labels

    def center_crop(self, image, size: SizeDict, fill=0, **kwargs):
        """Center crop of channels-first images (numpy or torch) at torchvision's offsets (`round((length - crop) /
        2)`), padded with `fill` where they are smaller (the padding split as torchvision splits it)."""
        if not (size.height and size.width):
            raise ValueError(f"`crop_size` must be {{'height': int, 'width': int}}, got {size}")
        pads = []
        for axis, crop in ((-2, size.height), (-1, size.width)):
            length, start = image.shape[axis], max(round((image.shape[axis] - crop) / 2), 0)
            image = image[..., start : start + crop, :] if axis == -2 else image[..., start : start + crop]
            pad = max(crop - length, 0)
            pads.append((pad // 2, pad - pad // 2))
        if isinstance(image, np.ndarray):
            return np.pad(image, [(0, 0)] * (image.ndim - 2) + pads, constant_values=fill)
        return F.pad(image, [*pads[1], *pads[0]], value=fill) if any(pads[0] + pads[1]) else image

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, return_segmentation_scores=False) -> list:
        """
        Turn semantic segmentation logits into label maps, as transformers' Segformer does.

        Args:
            outputs: Model output (or dict) with `logits` of shape `(batch, num_labels, h, w)`.
            target_sizes (`list[tuple[int, int]]` or tensor of shape `(batch, 2)`, *optional*): `(height, width)` of
                each prediction, to which the logits are upsampled bilinearly before the argmax.
            return_segmentation_scores (`bool`, defaults to `False`): Also return the (upsampled) logits.

        Returns:
            `list[torch.Tensor]`: one `(height, width)` int64 map of class ids per image, or with
            `return_segmentation_scores` one [`SemanticSegmentationPostProcessorOutput`] with `segmentation` (that map)
            and `segmentation_scores` (its logits, `(num_labels, height, width)`).

        Raises:
            `ValueError`: logits that are not 4-D, or target sizes that are not one `(height, width)` pair of positive
                integers per image.
        """
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if logits.ndim != 4:
            raise ValueError(f"expected logits of shape (batch, num_labels, height, width), got {tuple(logits.shape)}")
        scores = list(logits.unbind(0))
        if target_sizes is not None:
            sizes = _target_sizes(target_sizes, len(logits))
            scores = [F.interpolate(score[None], size, mode="bilinear")[0] for score, size in zip(scores, sizes)]
        maps = [score.argmax(dim=0) for score in scores]
        if not return_segmentation_scores:
            return maps
        return [
            SemanticSegmentationPostProcessorOutput(data={"segmentation": seg, "segmentation_scores": score})
            for seg, score in zip(maps, scores)
        ]


def _target_sizes(target_sizes, batch_size: int) -> list[tuple[int, int]]:
    """`target_sizes` as one `(height, width)` pair of positive ints per image, or a `ValueError` naming the entry."""
    target_sizes = target_sizes.tolist() if hasattr(target_sizes, "tolist") else target_sizes
    if len(target_sizes) != batch_size:
        raise ValueError(f"got {len(target_sizes)} target sizes for {batch_size} logits: one per image")
    for index, target in enumerate(target_sizes):
        pair = target.tolist() if hasattr(target, "tolist") else target
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 1 and float(v).is_integer() for v in pair
        ):
            raise ValueError(
                f"target_sizes[{index}] is {target!r}; each entry must be one (height, width) pair of positive integers"
                " per image, e.g. target_sizes=[(32, 20)] for a batch of one"
            )
    return [(int(height), int(width)) for height, width in target_sizes]


@auto_docstring(
    custom_intro="""
    PaCa-ViT image processor, PIL / NumPy backend: needs no torchvision and reproduces the authors' timm evaluation
    transform bit for bit on 8-bit RGB inputs (PIL bicubic). Settings, inputs and outputs are those of
    [`PaCaViTImageProcessingMixin`]; [`PaCaViTImageProcessor`] is the torchvision backend.
    """
)
class PaCaViTImageProcessorPil(PaCaViTImageProcessingMixin, PilBackend):
    def __init__(self, **kwargs: Unpack[PaCaViTImageProcessorKwargs]):
        super().__init__(**kwargs)

    def _antialiased_resize(self, image: np.ndarray, size: SizeDict, resample) -> np.ndarray:
        """PIL's resize: 8-bit grey / RGB by the backend's (bit-exact with the authors' transform), other channel
        counts one channel at a time (PIL would take a 4th as alpha), float data in PIL's mode `F`, clipped to [0, 1]."""
        resample = PILImageResampling(int(resample))
        if image.dtype == np.uint8 and image.shape[0] in (1, 3):
            return PilBackend.resize(self, image, size, resample=resample)
        resized = [PIL.Image.fromarray(channel).resize((size.width, size.height), resample) for channel in image]
        resized = np.stack([np.asarray(channel) for channel in resized])
        return resized if image.dtype == np.uint8 else np.clip(resized, 0.0, 1.0)


__all__ = ["PaCaViTImageProcessorPil", "PaCaViTImageProcessorKwargs", "PaCaViTImageProcessingMixin"]
