# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""Image processor for PaCa-ViT, PIL / NumPy backend (runs without torchvision), and what both backends share (keyword
arguments, defaults, decoding, label maps, post-processing): `image_processing_pacavit.py` imports it from here."""

import math
import numbers

import numpy as np
import PIL.Image
from transformers.image_processing_backends import PilBackend
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
    What [`PaCaViTImageProcessor`] (torchvision) and [`PaCaViTImageProcessorPil`] share, on the backends' hooks: the
    defaults (the authors' timm ImageNet evaluation transform: shorter side to `floor(size["shortest_edge"] /
    crop_pct)`, bicubic, center crop, `/ 255`, ImageNet mean / std), the decoding of images and segmentation maps by
    [`paca_hf.images`] in the per-image hook `process_image` (any PIL mode, EXIF orientation, 16-bit data as
    `value / 65535` and float data in `[0, 1]`, neither rescaled again; `do_convert_rgb=False` keeps the channels) and
    the post-processing. Each backend's `resize`, `center_crop` and `_preprocess` do the pixel work; label maps take
    the same geometry with nearest neighbour and 255 as padding.
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
        if crop_pct is not None and not (isinstance(crop_pct, (int, float)) and 0 < crop_pct < math.inf):
            raise ValueError(f"`crop_pct` must be a positive number, got {crop_pct!r}")
        super()._validate_preprocess_kwargs(**kwargs)

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        """A flat list of single inputs from one input, a list (nested once) or a batched array or tensor; each is
        checked where [`paca_hf.images`] decodes it, so a path or a URL is one input as any other."""
        if isinstance(images, (list, tuple)):
            images = [x for item in images for x in (item if isinstance(item, (list, tuple)) else [item])]
        else:
            images = list(images) if getattr(images, "ndim", None) == expected_ndims + 1 else [images]
        if not images:
            raise ValueError(f"no {'images' if expected_ndims == 3 else 'segmentation maps'} were given")
        return images

    def _prepare_image_like_inputs(self, images, *args, expected_ndims=3, annotated=None, **kwargs) -> list:
        """The backends' loop over `process_image`, naming the input an error comes from. Segmentation maps
        (`expected_ndims=2`) come with the `annotated` images, one each."""
        images = self._prepare_images_structure(images, expected_ndims=expected_ndims)
        if annotated is not None and len(images) != len(annotated):
            raise ValueError(
                f"got {len(annotated)} images but {len(images)} segmentation maps; pass exactly one map per image"
            )
        prepared = []
        for index, image in enumerate(images):
            extra = {} if annotated is None else {"annotates": annotated[index]}
            try:
                prepared.append(self.process_image(image, *args, **kwargs, **extra))
            except ValueError as error:
                raise ValueError(f"{'image' if annotated is None else 'segmentation map'} {index}: {error}") from error
        return prepared

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, annotates=None, **kwargs):
        """One input decoded by [`paca_hf.images`] and handed to the backend channels first: an image by
        `image_to_array` (every PIL mode, 16-bit, EXIF orientation) as uint8 (8-bit data) or float32 in `[0, 1]`; a
        segmentation map (given the raw image it `annotates`) by `load_label_map` as int64 labels `(1, H, W)`."""
        if annotates is not None:
            array = load_label_map(image, image=annotates)[None]
        else:  # a copy: the steps may work in place, and arrays viewing a PIL image's buffer are read-only
            channels = None if do_convert_rgb is False else 3
            array = np.moveaxis(image_to_array(image, channels, input_data_format), -1, 0).copy()
        return super().process_image(array, input_data_format="channels_first", device=device)

    def _preprocess_image_like_inputs(
        self, images, segmentation_maps=None, *, do_convert_rgb, input_data_format, return_tensors=None, device=None,
        **kwargs,
    ) -> BatchFeature:
        images = self._prepare_images_structure(images)
        pixels = self._prepare_image_like_inputs(
            images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        if segmentation_maps is not None:  # decoded and checked before any pixel work
            maps = self._prepare_image_like_inputs(
                segmentation_maps, expected_ndims=2, annotated=images, device=device
            )
            for index, (labels, image) in enumerate(zip(maps, pixels)):
                if labels.shape[-2:] != image.shape[-2:]:
                    raise ValueError(
                        f"segmentation map {index} has size {tuple(labels.shape[-2:])} (height, width) but its image "
                        f"has size {tuple(image.shape[-2:])}; they must match"
                    )
            maps = [self.reduce_label(labels) for labels in maps] if kwargs["do_reduce_labels"] else maps
        data = {"pixel_values": self._preprocess(pixels, **kwargs)}
        if segmentation_maps is not None:  # int64 maps take the label path of `resize` and `center_crop`
            labels = self._preprocess(maps, **{**kwargs, "do_rescale": False, "do_normalize": False})
            data["labels"] = [label[0] for label in labels]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _preprocess(self, images: list, do_resize, size, resample, crop_pct, do_center_crop, crop_size, do_rescale,
                    rescale_factor, do_normalize, image_mean, image_std, antialias, disable_grouping=None, **kwargs):
        """Resize, crop, rescale (8-bit data only) and normalize channels-first images; int64 label maps get the
        geometry only. The torchvision backend takes the images of one shape and dtype as one batch (transformers'
        grouping), the PIL backend one image at a time. Returns the processed images (float32, or int64 for maps), in
        input order."""
        if self.backend == "pil":
            grouped, grouped_index = dict(enumerate(images)), None
        else:
            if len({image.dtype for image in images}) > 1:
                disable_grouping = True  # a batch shares one dtype: 8-bit data is rescaled, 16-bit and float data not
            grouped, grouped_index = group_images_by_shape(images, disable_grouping=disable_grouping)
        processed = {}
        for key, batch in grouped.items():
            # Decided before the resize: `antialias=False` returns 8-bit data as float32 in [0, 255].
            dtype = str(batch.dtype).removeprefix("torch.")
            is_labels, rescale = dtype == "int64", do_rescale and dtype == "uint8"
            if do_resize:
                crop = crop_pct if do_center_crop else None
                batch = self.resize(batch, size, resample, crop_pct=crop, antialias=antialias)
            if do_center_crop:
                batch = self.center_crop(batch, crop_size, fill=LABEL_PAD_VALUE if is_labels else 0)
            if not is_labels:
                batch = batch.astype(np.float32) if isinstance(batch, np.ndarray) else batch.float()
                batch = self.rescale(batch, rescale_factor) if rescale else batch
                if do_normalize:  # in place where the backend can: never the caller's data (`process_image` copies)
                    mean, std = self._mean_std(image_mean, image_std, batch.shape[-3])
                    batch = self.normalize(batch, mean, std, inplace=True)
            processed[key] = batch
        return list(processed.values()) if grouped_index is None else reorder_images(processed, grouped_index)

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
            if array.size not in (1, channels):
                raise ValueError(
                    f"`{name}` must be a number or have {channels} values (one per channel of the images), got {value}"
                )
            values.append(np.resize(array, channels).tolist())
        if 0 in values[1]:
            raise ValueError(f"`image_std` must not contain zeros, got {image_std}")
        return values[0], values[1]

    @staticmethod
    def _resize_output_size(image, size: SizeDict | None, crop_pct: float | None) -> SizeDict:
        """Output size of the resize step for a channels-first image or batch: `size` if it has a height and width;
        else the shorter side to `shortest_edge`, or `floor(shortest_edge / crop_pct)` when a crop follows (timm's
        rule), the longer one in proportion (truncated, as torchvision's `Resize(int)`) and at most `longest_edge`."""
        if size is not None and size.shortest_edge:
            short = size.shortest_edge if crop_pct is None else math.floor(size.shortest_edge / crop_pct)
            if short < 1 or (size.longest_edge is not None and size.longest_edge <= short):
                raise ValueError(
                    f"`size` {dict(size)} with crop_pct={crop_pct} resizes the shorter side to {short} pixels: it "
                    "must be at least 1 and below `longest_edge`"
                )
            height, width = get_resize_output_image_size(
                image, short, default_to_square=False, max_size=size.longest_edge, input_data_format="channels_first"
            )
            return SizeDict(height=height, width=width)
        if size is not None and size.height and size.width:
            return size
        raise ValueError(
            "`size` must be {'shortest_edge': int} (optionally with 'longest_edge': int) or "
            f"{{'height': int, 'width': int}}, got {size}"
        )

    @staticmethod
    def _interpolate(batch, size: SizeDict, resample):
        """The resize without antialiasing (`antialias=False`): torch's `interpolate` (half-pixel centres) of a
        channels-first image or batch (numpy array or tensor, returned as the same kind), in float32 without rounding;
        bicubic results are clipped to the input's value range (255 for 8-bit data, else 1). `ValueError` for a
        `resample` other than nearest, bilinear or bicubic."""
        import torch
        import torch.nn.functional as F

        resample = PILImageResampling(int(resample if resample is not None else PILImageResampling.BICUBIC))
        modes = {PILImageResampling.NEAREST: "nearest-exact", PILImageResampling.BILINEAR: "bilinear",
                 PILImageResampling.BICUBIC: "bicubic"}
        if resample not in modes:
            raise ValueError(f"`resample` {resample!r} has no resize without antialiasing; use nearest, bilinear or "
                             "bicubic with `antialias=False`")
        tensor = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
        extra = {} if resample == PILImageResampling.NEAREST else {"align_corners": False}
        resized = F.interpolate(
            tensor.reshape(-1, *tensor.shape[-3:]).float(), (size.height, size.width), mode=modes[resample], **extra
        ).reshape(*tensor.shape[:-2], size.height, size.width)
        if resample == PILImageResampling.BICUBIC:
            resized = resized.clamp_(0.0, 255.0 if tensor.dtype == torch.uint8 else 1.0)
        return resized.numpy() if isinstance(batch, np.ndarray) else resized

    @staticmethod
    def _center_crop_box(image, size: SizeDict) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """`(start, pad_before, pad_after)` of the rows and of the columns of the center crop of a channels-first
        image or batch: torchvision's rounding (`round((length - crop) / 2)`) and padding split where it is smaller."""
        if not (size.height and size.width):
            raise ValueError(f"`crop_size` must be {{'height': int, 'width': int}}, got {size}")
        boxes = []
        for length, crop in zip(image.shape[-2:], (size.height, size.width)):
            pad = max(crop - length, 0)
            boxes.append((max(round((length - crop) / 2), 0), pad // 2, pad - pad // 2))
        return boxes[0], boxes[1]

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, return_segmentation_scores=False) -> list:
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
            `segmentation` (that map) and `segmentation_scores` (its logits, `(num_labels, height, width)`), as
            transformers' Segformer returns them.

        Raises:
            `ValueError`: logits that are not 4-D, a number of target sizes different from the batch size, or a
                target size that is not a `(height, width)` pair of positive integers.
        """
        import torch.nn.functional as F
        from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if logits.ndim != 4:
            raise ValueError(f"expected logits of shape (batch, num_labels, height, width), got {tuple(logits.shape)}")
        scores = list(logits.unbind(0))
        if target_sizes is not None:
            target_sizes = target_sizes.tolist() if hasattr(target_sizes, "tolist") else target_sizes
            if len(target_sizes) != len(logits):
                raise ValueError(
                    f"got {len(target_sizes)} target sizes for a batch of {len(logits)} logits; pass one per image"
                )
            sizes = [_target_size(target, index) for index, target in enumerate(target_sizes)]
            scores = [
                F.interpolate(score[None], size, mode="bilinear", align_corners=False)[0]
                for score, size in zip(scores, sizes)
            ]
        maps = [score.argmax(dim=0) for score in scores]
        if not return_segmentation_scores:
            return maps
        return [
            SemanticSegmentationPostProcessorOutput(data={"segmentation": seg, "segmentation_scores": score})
            for seg, score in zip(maps, scores)
        ]


def _target_size(target, index: int) -> tuple[int, int]:
    """`(height, width)` of `target_sizes[index]` as positive ints, or a `ValueError` naming the entry."""
    pair = target.tolist() if hasattr(target, "tolist") else target
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
        raise ValueError(
            f"target_sizes[{index}] is {target!r}; each entry must be one (height, width) pair per image, e.g. "
            f"target_sizes=[(32, 20)] for a batch of one"
        )
    for value in pair:
        integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral or value < 1:
            raise ValueError(f"target_sizes[{index}] is {target!r}; height and width must be positive integers")
    return int(pair[0]), int(pair[1])


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

    def resize(self, image: np.ndarray, size: SizeDict, resample=None, crop_pct=None, antialias=True, **kwargs):
        """Resize a channels-first image to the size `size` and `crop_pct` give (see `_resize_output_size`). 8-bit
        grey / RGB goes through the backend's PIL resize (bit-exact with the authors' transform); other channel counts
        one channel at a time (PIL would premultiply a 4th channel as alpha), float data in PIL's 32-bit float mode,
        clipped to [0, 1]; int64 label maps with `resize_labels`; `antialias=False` with `_interpolate`."""
        size = self._resize_output_size(image, size, crop_pct)
        if image.dtype == np.int64:
            return self.resize_labels(image, size)
        if antialias is False:
            return self._interpolate(image, size, resample)
        resample = PILImageResampling(int(resample if resample is not None else PILImageResampling.BICUBIC))
        if image.dtype == np.uint8 and image.shape[0] in (1, 3):
            return super().resize(image, size, resample=resample, **kwargs)
        resized = np.stack([self._pil_resize(channel, size, resample) for channel in image])
        return resized if image.dtype == np.uint8 else np.clip(resized, 0.0, 1.0)

    def resize_labels(self, labels: np.ndarray, size: SizeDict) -> np.ndarray:
        """Nearest-neighbour resize of a `(1, H, W)` int64 label map with PIL (32-bit integer mode: labels kept)."""
        return self._pil_resize(labels[0].astype(np.int32), size, PILImageResampling.NEAREST).astype(np.int64)[None]

    @staticmethod
    def _pil_resize(channel: np.ndarray, size: SizeDict, resample) -> np.ndarray:
        return np.asarray(PIL.Image.fromarray(channel).resize((size.width, size.height), resample=resample))

    def center_crop(self, image: np.ndarray, size: SizeDict, fill=0, **kwargs) -> np.ndarray:
        """Center crop of a channels-first array (see `_center_crop_box`), padded with `fill` where it is smaller."""
        (top, *rows), (left, *cols) = self._center_crop_box(image, size)
        cropped = image[:, top : top + size.height, left : left + size.width]
        return np.pad(cropped, ((0, 0), rows, cols), constant_values=fill)


__all__ = ["PaCaViTImageProcessorPil", "PaCaViTImageProcessorKwargs", "PaCaViTImageProcessingMixin"]
