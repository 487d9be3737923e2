"""Image processor for PaCa-ViT (PIL / NumPy backend, no torchvision)."""

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import is_torch_tensor

from .images import image_to_array, load_label_map, open_image, reduce_labels


# Labels written into padded areas of segmentation maps (the usual `ignore_index`).
_LABEL_PAD_VALUE = 255


class PaCaViTImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    crop_pct (`float`, *optional*, defaults to `self.crop_pct`):
        Ratio of the center crop to the resized image (timm's `crop_pct`). When `size` has a `shortest_edge` and
        `do_center_crop` is on, the shorter side is resized to `floor(shortest_edge / crop_pct)` before cropping.
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Map label 0 to 255 and subtract 1 from every other label of the segmentation maps (255 stays 255), as for
        ADE20k where 0 is "background / ignore".
    """

    crop_pct: float | int | None
    do_reduce_labels: bool | None


class PaCaViTImageProcessor(PilBackend):
    r"""
    Image processor for PaCa-ViT (PIL / NumPy backend).

    The default pipeline is the authors' (timm) ImageNet evaluation transform: resize the shorter side to
    `floor(size["shortest_edge"] / crop_pct)` (bicubic, aspect ratio kept), center crop `crop_size`, rescale by 1/255
    and normalize with the ImageNet mean / std. Segmentation maps passed to [`~PaCaViTImageProcessor.preprocess`]
    get the same geometry with nearest-neighbour resampling and are returned as `labels`.

    Inputs may be PIL images of any mode, NumPy arrays or torch tensors (`(H, W)`, `(H, W, C)` or `(C, H, W)`,
    bool / integer / float) and lists of those. Images are always converted to 3 channels: grey is repeated,
    alpha dropped, palette / CMYK / YCbCr converted with PIL, 16-bit data (`uint16` arrays, PIL modes `I` and
    `I;16`) divided by 257, and float data is taken to be in `[0, 1]` already (it is never rescaled again). Inputs
    that cannot be turned into such an image raise `ValueError` (`do_convert_rgb` is kept for API compatibility; the
    conversion to 3 channels always happens).

    Args:
        do_resize (`bool`, defaults to `True`): Whether to resize.
        size (`dict[str, int]`, defaults to `{"shortest_edge": 224}`): Either `{"shortest_edge": n}` (aspect ratio
            kept) or `{"height": h, "width": w}` (exact size, `crop_pct` unused).
        crop_pct (`float`, defaults to `0.9`): See above; pass `1.0` to resize straight to `shortest_edge`.
        resample (`PILImageResampling`, defaults to `BICUBIC`): Filter for images (maps always use `NEAREST`).
        do_center_crop (`bool`, defaults to `True`): Whether to center crop (torchvision rounding, zero padding when
            the image is smaller than the crop; maps are padded with 255).
        crop_size (`dict[str, int]`, defaults to `{"height": 224, "width": 224}`): Size of the crop.
        do_rescale (`bool`, defaults to `True`): Multiply integer-valued inputs by `rescale_factor`.
        rescale_factor (`float`, defaults to `1/255`): Rescale factor.
        do_normalize (`bool`, defaults to `True`): Normalize with `image_mean` / `image_std`.
        image_mean (`list[float]`, defaults to ImageNet mean `(0.485, 0.456, 0.406)`).
        image_std (`list[float]`, defaults to ImageNet std `(0.229, 0.224, 0.225)`).
        do_reduce_labels (`bool`, defaults to `False`): See [`PaCaViTImageProcessorKwargs`].
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

    def __init__(self, **kwargs: Unpack[PaCaViTImageProcessorKwargs]):
        super().__init__(**kwargs)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[PaCaViTImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Preprocess images (and optionally their segmentation maps).

        Args:
            images (`ImageInput`): An image or a list / batch of images.
            segmentation_maps (`ImageInput`, *optional*): One single-channel integer label map per image, of the same
                height and width as its image. Returned as `labels` (int64).
            kwargs: Per-call overrides of the constructor settings, plus `return_tensors` (`"pt"` / `"np"`) and
                `input_data_format` (channel layout of array inputs when it cannot be inferred).

        Returns:
            [`BatchFeature`] with `pixel_values` (float32, `(batch, 3, H, W)`) and, if maps were given, `labels`.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    # ------------------------------------------------------------------ pipeline

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        *,
        do_resize: bool,
        size: SizeDict | None,
        resample,
        crop_pct: float | None,
        do_center_crop: bool,
        crop_size: SizeDict | None,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_reduce_labels: bool,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        valid_crop_pct = isinstance(crop_pct, (int, float)) and math.isfinite(crop_pct) and crop_pct > 0
        if crop_pct is not None and not valid_crop_pct:
            raise ValueError(f"`crop_pct` must be a positive number, got {crop_pct!r}")
        if input_data_format is not None:
            input_data_format = ChannelDimension(input_data_format)
        if do_normalize:
            mean = self._per_channel(image_mean, "image_mean")
            std = self._per_channel(image_std, "image_std")
            if np.any(std == 0):
                raise ValueError(f"`image_std` must not contain zeros, got {image_std}")

        raw_images = self._flatten(images, "image")
        prepared = [self._image_to_hwc(image, input_data_format, index) for index, image in enumerate(raw_images)]

        maps = None
        if segmentation_maps is not None:
            raw_maps = self._flatten(segmentation_maps, "segmentation map")
            if len(raw_maps) != len(prepared):
                raise ValueError(
                    f"got {len(prepared)} images but {len(raw_maps)} segmentation maps; pass exactly one map per image"
                )
            maps = [self._map_to_array(seg, index, image) for index, (seg, image) in enumerate(zip(raw_maps, raw_images))]
            for index, ((image, _), seg) in enumerate(zip(prepared, maps)):
                if seg.shape != image.shape[:2]:
                    raise ValueError(
                        f"segmentation map {index} has size {seg.shape} (height, width) but its image has size "
                        f"{image.shape[:2]}; they must match"
                    )

        pixel_values, labels = [], []
        for index, (image, unit_range) in enumerate(prepared):
            height, width = image.shape[:2]
            if do_resize:
                new_size = self._target_size(height, width, size, crop_pct if do_center_crop else None)
                image = self._resize_image(image, new_size, resample, unit_range)
            if do_center_crop:
                image = self._crop_or_pad(image, crop_size, fill=0)

            image = image.astype(np.float64)
            if do_rescale and not unit_range:
                image = image * rescale_factor
            if do_normalize:
                image = (image - mean) / std
            pixel_values.append(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))

            if maps is not None:
                seg = maps[index]
                if do_reduce_labels:
                    seg = self.reduce_label(seg)
                if do_resize:
                    seg = self._resize_map(seg, new_size)
                if do_center_crop:
                    seg = self._crop_or_pad(seg, crop_size, fill=_LABEL_PAD_VALUE)
                labels.append(np.ascontiguousarray(seg, dtype=np.int64))

        data = {"pixel_values": pixel_values}
        if maps is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ geometry

    @staticmethod
    def _target_size(height: int, width: int, size: SizeDict | None, crop_pct: float | None) -> tuple[int, int]:
        """Output (height, width) of the resize step."""
        if size is None:
            raise ValueError("`size` must be given when `do_resize=True`")
        if size.shortest_edge:
            short_target = size.shortest_edge
            if crop_pct is not None:
                short_target = math.floor(short_target / crop_pct)
            if short_target < 1:
                raise ValueError(f"resize target {short_target} is smaller than one pixel (size={dict(size)})")
            # torchvision `Resize(int)` semantics (used by timm): the long side is truncated, not rounded.
            if width <= height:
                return max(1, int(short_target * height / width)), short_target
            return short_target, max(1, int(short_target * width / height))
        if size.height and size.width:
            return size.height, size.width
        raise ValueError(
            f"`size` must be {{'shortest_edge': int}} or {{'height': int, 'width': int}}, got {dict(size)}"
        )

    @staticmethod
    def _crop_or_pad(array: np.ndarray, crop_size: SizeDict | None, fill) -> np.ndarray:
        """Center crop of an `(H, W, ...)` array with torchvision's rounding; pads with `fill` where it is too small."""
        if crop_size is None or not (crop_size.height and crop_size.width):
            raise ValueError(f"`crop_size` must be {{'height': int, 'width': int}}, got {crop_size}")
        out = np.full((crop_size.height, crop_size.width) + array.shape[2:], fill, dtype=array.dtype)
        src, dst = [], []
        for length, crop in zip(array.shape[:2], (crop_size.height, crop_size.width)):
            if crop <= length:
                start = int(round((length - crop) / 2.0))
                src.append(slice(start, start + crop))
                dst.append(slice(0, crop))
            else:
                before = (crop - length) // 2
                src.append(slice(0, length))
                dst.append(slice(before, before + length))
        out[dst[0], dst[1]] = array[src[0], src[1]]
        return out

    @staticmethod
    def _resize_image(image: np.ndarray, new_size: tuple[int, int], resample, unit_range: bool) -> np.ndarray:
        """Resize an `(H, W, 3)` image with PIL. uint8 goes through an RGB image (bit-exact with the authors'
        transform); float data is resized per channel in PIL's 32-bit float mode and clipped to its range."""
        height, width = new_size
        resample = PILImageResampling.BICUBIC if resample is None else PILImageResampling(int(resample))
        if image.dtype == np.uint8:
            return np.asarray(PIL.Image.fromarray(image).resize((width, height), resample=resample))
        channels = [
            np.asarray(PIL.Image.fromarray(image[..., c]).resize((width, height), resample=resample))
            for c in range(image.shape[2])
        ]
        return np.clip(np.stack(channels, axis=-1), 0.0, 1.0 if unit_range else 255.0)

    @staticmethod
    def _resize_map(seg: np.ndarray, new_size: tuple[int, int]) -> np.ndarray:
        height, width = new_size
        resized = PIL.Image.fromarray(seg.astype(np.int32)).resize((width, height), resample=PILImageResampling.NEAREST)
        return np.asarray(resized).astype(np.int64)

    # ------------------------------------------------------------------ labels

    @staticmethod
    def reduce_label(label: np.ndarray) -> np.ndarray:
        """0 -> 255, every other label minus 1, 255 stays 255 (Segformer's `reduce_labels`)."""
        return reduce_labels(label)

    # ------------------------------------------------------------------ input handling

    @staticmethod
    def _per_channel(value, name: str) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
        if array.size == 1:
            array = np.repeat(array, 3)
        if array.size != 3:
            raise ValueError(f"`{name}` must be a number or have 3 values (one per RGB channel), got {value}")
        return array

    @staticmethod
    def _flatten(inputs, what: str) -> list:
        """Turn an image / a list (possibly nested once) / a batched array into a flat list of single items."""
        single_ndims = (2, 3) if what == "image" else (2,)

        def is_array(x) -> bool:
            return isinstance(x, np.ndarray) or is_torch_tensor(x)

        def load(x):
            if isinstance(x, str):
                return open_image(x)
            if isinstance(x, PIL.Image.Image):
                return x
            if is_array(x):
                return x
            raise ValueError(
                f"unsupported {what} type {type(x).__name__}; expected a PIL image, a numpy array, a torch tensor "
                "or a path / URL"
            )

        if isinstance(inputs, (list, tuple)):
            flat = []
            for item in inputs:
                flat.extend(item if isinstance(item, (list, tuple)) else [item])
            if not flat:
                raise ValueError(f"no {what}s were given (empty list)")
            flat = [load(x) for x in flat]
            if what != "image":
                return flat
            for x in flat:
                if is_array(x) and x.ndim not in single_ndims:
                    raise ValueError(
                        f"each {what} in a list must have rank 2 (H, W) or 3 (C, H, W) / (H, W, C), got rank "
                        f"{x.ndim} with shape {tuple(x.shape)}"
                    )
            return flat

        item = load(inputs)
        if isinstance(item, PIL.Image.Image):
            return [item]
        batch_ndim = single_ndims[-1] + 1
        if item.ndim in single_ndims:
            return [item]
        if item.ndim == batch_ndim:
            if item.shape[0] == 0:
                raise ValueError(f"no {what}s were given (batch of size 0, shape {tuple(item.shape)})")
            return list(item)
        expected = " or ".join(str(n) for n in single_ndims)
        raise ValueError(
            f"expected a single {what} of rank {expected} or a batch of rank {batch_ndim}, got rank {item.ndim} "
            f"with shape {tuple(item.shape)}"
        )

    @staticmethod
    def _image_to_hwc(image, input_data_format, index: int) -> tuple[np.ndarray, bool]:
        """One image as `(H, W, 3)` (see `paca_hf.images.image_to_array`) and whether it is already in [0, 1]."""
        try:
            array = image_to_array(image, num_channels=3, input_data_format=input_data_format)
        except ValueError as error:
            raise ValueError(f"image {index}: {error}") from error
        return array, array.dtype != np.uint8

    @staticmethod
    def _map_to_array(seg, index: int, image=None) -> np.ndarray:
        """One segmentation map as an `(H, W)` int64 array (see `paca_hf.images.load_label_map`)."""
        try:
            return load_label_map(seg, image=image)
        except ValueError as error:
            raise ValueError(f"segmentation map {index}: {error}") from error

    # ------------------------------------------------------------------ post-processing

    def post_process_semantic_segmentation(self, outputs, target_sizes: Sequence | None = None) -> list:
        """
        Turn semantic segmentation logits into label maps.

        Args:
            outputs: Model output with `logits` of shape `(batch, num_labels, h, w)`.
            target_sizes (`list[tuple[int, int]]` or tensor of shape `(batch, 2)`, *optional*): `(height, width)` of
                each prediction; logits are upsampled bilinearly (`align_corners=False`) before the argmax. If unset,
                the argmax is taken at the logits' resolution.

        Returns:
            `list[torch.Tensor]`: one `(height, width)` int64 map of class ids per image.
        """
        import torch
        import torch.nn.functional as F

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if logits.ndim != 4:
            raise ValueError(f"expected logits of shape (batch, num_labels, height, width), got {tuple(logits.shape)}")
        if target_sizes is None:
            return list(logits.argmax(dim=1).unbind(0))
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        if len(target_sizes) != len(logits):
            raise ValueError(
                f"got {len(target_sizes)} target sizes for a batch of {len(logits)} logits; pass one per image"
            )
        maps = []
        for logit, target in zip(logits, target_sizes):
            height, width = (int(v) for v in target)
            upsampled = F.interpolate(logit[None], size=(height, width), mode="bilinear", align_corners=False)
            maps.append(upsampled[0].argmax(dim=0))
        return maps


__all__ = ["PaCaViTImageProcessor", "PaCaViTImageProcessorKwargs"]
