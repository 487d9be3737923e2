"""Image processor for PaCa-ViT, PIL / NumPy backend (runs without torchvision).

This module also holds what both backends share: the keyword arguments, the defaults, input decoding and validation,
the order of the steps and the post-processing. `image_processing_pacavit.py` (the torchvision backend) imports them
from here, so that this module never needs torchvision.
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
from transformers.utils import is_torch_tensor

from .images import image_to_array, load_label_map, open_image, reduce_labels


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
    Settings and steps shared by [`PaCaViTImageProcessor`] (torchvision backend) and [`PaCaViTImageProcessorPil`].

    The default pipeline is the authors' (timm) ImageNet evaluation transform: resize the shorter side to
    `floor(size["shortest_edge"] / crop_pct)` (bicubic, aspect ratio kept, long side truncated as torchvision's
    `Resize(int)` does), center crop `crop_size` (torchvision's rounding of the offsets; zero padding when the image is
    smaller than the crop), rescale by 1/255 and normalize with the ImageNet mean / std. Segmentation maps passed to
    `preprocess` get the same geometry with nearest-neighbour resampling (padding with 255) and are returned as
    `labels`.

    Inputs are decoded by [`paca_hf.images.image_to_array`], the same function every other entry point of the package
    uses: PIL images of any mode (EXIF orientation applied), numpy arrays and torch tensors (`(H, W)`, `(H, W, C)`
    or `(C, H, W)`, bool / integer / float), local paths, `file://` / `http(s)://` URLs, and lists of those. 8-bit data
    is rescaled by `rescale_factor`; 16-bit data (PIL `I` / `I;16*`, `uint16` arrays) becomes `value / 65535`
    (= `value / 257 / 255`) and float data is taken to be in `[0, 1]` already, so neither is rescaled again. With
    `do_convert_rgb=True` (default) every image becomes RGB: grey is repeated and alpha is dropped without
    compositing (the stored colours are kept, as PIL's `convert("RGB")` in the authors' timm loader does; transformers'
    own `convert_rgb` composites on white instead). With `do_convert_rgb=False` images keep their channels (1 grey,
    2 grey + alpha, 3 or 4) and `image_mean` / `image_std` must have one value per channel. Inputs that cannot be
    turned into such an image raise `ValueError`.

    Args:
        do_resize (`bool`, defaults to `True`): Whether to resize.
        size (`dict[str, int]`, defaults to `{"shortest_edge": 224}`): Either `{"shortest_edge": n}` (aspect ratio
            kept), optionally with `"longest_edge": m` (the longer side capped at `m`, the shorter one then scaled
            with it, like mmseg's `Resize(scale=(m, n), keep_ratio=True)` up to rounding), or `{"height": h, "width": w}` (exact size,
            `crop_pct` unused).
        crop_pct (`float`, defaults to `0.9`): See above; pass `1.0` to resize straight to `shortest_edge`.
        resample (`PILImageResampling`, defaults to `BICUBIC`): Filter for images (maps always use nearest).
        do_center_crop (`bool`, defaults to `True`): Whether to center crop.
        crop_size (`dict[str, int]`, defaults to `{"height": 224, "width": 224}`): Size of the crop.
        do_rescale (`bool`, defaults to `True`): Multiply 8-bit inputs by `rescale_factor`.
        rescale_factor (`float`, defaults to `1/255`): Rescale factor.
        do_normalize (`bool`, defaults to `True`): Normalize with `image_mean` / `image_std`.
        image_mean (`list[float]`, defaults to ImageNet mean `(0.485, 0.456, 0.406)`).
        image_std (`list[float]`, defaults to ImageNet std `(0.229, 0.224, 0.225)`).
        do_convert_rgb (`bool`, defaults to `True`): Convert every image to RGB (see above).
        do_reduce_labels (`bool`, defaults to `False`): See [`PaCaViTImageProcessorKwargs`].
        antialias (`bool`, defaults to `True`): See [`PaCaViTImageProcessorKwargs`].
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
                height and width as its image (see [`paca_hf.images.load_label_map`]). Returned as `labels` (int64).
            kwargs: Per-call overrides of the constructor settings, plus `return_tensors` (`"pt"` / `"np"`) and
                `input_data_format` (channel layout of array inputs when it cannot be inferred).

        Returns:
            [`BatchFeature`] with `pixel_values` (float32, `(batch, channels, height, width)`) and, if maps were given,
            `labels` (int64, `(batch, height, width)`).
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
        do_convert_rgb: bool | None,
        do_reduce_labels: bool,
        antialias: bool | None = True,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors=None,
        device=None,
        **kwargs,
    ) -> BatchFeature:
        valid_crop_pct = isinstance(crop_pct, (int, float)) and math.isfinite(crop_pct) and crop_pct > 0
        if crop_pct is not None and not valid_crop_pct:
            raise ValueError(f"`crop_pct` must be a positive number, got {crop_pct!r}")
        if do_center_crop and (crop_size is None or not (crop_size.height and crop_size.width)):
            raise ValueError(f"`crop_size` must be {{'height': int, 'width': int}}, got {crop_size}")
        if input_data_format is not None:
            input_data_format = ChannelDimension(input_data_format)
        num_channels = 3 if do_convert_rgb or do_convert_rgb is None else None

        raw_images = self._flatten(images, "image")
        arrays = []
        for index, image in enumerate(raw_images):
            try:
                arrays.append(image_to_array(image, num_channels=num_channels, input_data_format=input_data_format))
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from error
        if do_normalize:
            mean = [self._per_channel(image_mean, "image_mean", array.shape[-1]) for array in arrays]
            std = [self._per_channel(image_std, "image_std", array.shape[-1]) for array in arrays]
            if any(np.any(values == 0) for values in std):
                raise ValueError(f"`image_std` must not contain zeros, got {image_std}")

        maps = None
        if segmentation_maps is not None:
            raw_maps = self._flatten(segmentation_maps, "segmentation map")
            if len(raw_maps) != len(arrays):
                raise ValueError(
                    f"got {len(arrays)} images but {len(raw_maps)} segmentation maps; pass exactly one map per image"
                )
            maps = []
            for index, (seg, image, array) in enumerate(zip(raw_maps, raw_images, arrays)):
                try:
                    seg = load_label_map(seg, image=image)
                except ValueError as error:
                    raise ValueError(f"segmentation map {index}: {error}") from error
                if seg.shape != array.shape[:2]:
                    raise ValueError(
                        f"segmentation map {index} has size {seg.shape} (height, width) but its image has size "
                        f"{array.shape[:2]}; they must match"
                    )
                maps.append(reduce_labels(seg) if do_reduce_labels else seg)

        images = [self._from_channels_last(array, device) for array in arrays]
        new_sizes = [
            self._resize_output_size(image, size, crop_pct if do_center_crop else None) if do_resize else None
            for image in images
        ]
        pixel_values = [None] * len(images)
        groups = self._batches(images)
        for indices in groups:
            first = indices[0]  # a batch shares shape and dtype, hence channels, resize target and value range
            batch = self._stack([images[index] for index in indices])
            if do_resize and antialias is False:
                batch = self._interpolate(batch, new_sizes[first], resample)
            elif do_resize:
                batch = self.resize(batch, new_sizes[first], resample=resample)
            if do_center_crop:
                batch = self.center_crop(batch, crop_size)
            batch = self._to_float(batch)
            if do_rescale and arrays[first].dtype == np.uint8:  # 16-bit and float data are in [0, 1] already
                batch = self._rescale_owned(batch, rescale_factor)
            if do_normalize:
                batch = self._normalize_owned(batch, mean[first].tolist(), std[first].tolist())
            if self._return_batch_as_is and return_tensors is not None and len(groups) == 1:
                pixel_values = batch  # already the stacked output, in input order (one group is all of them)
                break
            for index, image in zip(indices, self._unstack(batch, len(indices))):
                pixel_values[index] = image

        labels = []
        for seg, new_size in zip(maps or [], new_sizes):
            seg = self._from_channels_last(seg[..., None], device)
            if do_resize:
                seg = self.resize_labels(seg, new_size)
            if do_center_crop:
                seg = self.center_crop(seg, crop_size, fill=LABEL_PAD_VALUE)
            labels.append(self._labels_output(seg))

        data = {"pixel_values": pixel_values}
        if maps is not None:
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    # Whether a single group's batch is returned as the stacked `pixel_values` itself (no unstack and restack).
    _return_batch_as_is = False

    def _rescale_owned(self, batch, factor: float):
        """`rescale` of a batch that this call made (stacked, hence not the caller's); a backend may do it in place."""
        return self.rescale(batch, factor)

    def _normalize_owned(self, batch, mean: list[float], std: list[float]):
        """`normalize` of a batch that this call made; a backend may do it in place."""
        return self.normalize(batch, mean, std)

    @staticmethod
    def reduce_label(label):
        """0 -> 255, every other label minus 1, 255 stays 255 (see [`paca_hf.images.reduce_labels`])."""
        return reduce_labels(label)

    # ------------------------------------------------------------------ geometry

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
        """Output size of the resize step for a channels-first `image`."""
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

    # ------------------------------------------------------------------ input handling

    @staticmethod
    def _per_channel(value, name: str, channels: int) -> np.ndarray:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
        if array.size == 1:
            array = np.repeat(array, channels)
        if array.size != channels:
            raise ValueError(
                f"`{name}` must be a number or have {channels} values (one per channel of the images), got {value}"
            )
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
            if isinstance(x, PIL.Image.Image) or is_array(x):
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

    # ------------------------------------------------------------------ post-processing

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


class PaCaViTImageProcessorPil(PaCaViTImageProcessingMixin, PilBackend):
    r"""
    Image processor for PaCa-ViT, PIL / NumPy backend. Needs no torchvision; on 8-bit RGB inputs it reproduces the
    authors' timm evaluation transform bit for bit (PIL bicubic). Settings, inputs and outputs are those of
    [`PaCaViTImageProcessingMixin`]; [`PaCaViTImageProcessor`] is the torchvision backend.
    """

    valid_kwargs = PaCaViTImageProcessorKwargs

    def __init__(self, **kwargs: Unpack[PaCaViTImageProcessorKwargs]):
        super().__init__(**kwargs)

    @staticmethod
    def _from_channels_last(array: np.ndarray, device=None) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(array, -1, 0))

    @staticmethod
    def _batches(images: list) -> list[list[int]]:
        """One image at a time: PIL works on single images."""
        return [[index] for index in range(len(images))]

    @staticmethod
    def _stack(images: list[np.ndarray]) -> np.ndarray:
        return images[0]

    @staticmethod
    def _unstack(batch: np.ndarray, count: int) -> list[np.ndarray]:
        return [batch]

    @staticmethod
    def _to_float(image: np.ndarray) -> np.ndarray:
        return image.astype(np.float32)

    @staticmethod
    def _labels_output(seg: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(seg[0], dtype=np.int64)

    def resize(self, image: np.ndarray, size: SizeDict, resample=None, **kwargs) -> np.ndarray:
        """Resize a channels-first image with PIL. 8-bit grey / RGB goes through the backend's resize (a PIL image of
        the same mode, bit-exact with the authors' transform); other channel counts are resized one channel at a time
        (PIL would premultiply a 4th channel as alpha), float data in PIL's 32-bit float mode, clipped to [0, 1]."""
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


__all__ = ["PaCaViTImageProcessorPil", "PaCaViTImageProcessorKwargs", "PaCaViTImageProcessingMixin"]
