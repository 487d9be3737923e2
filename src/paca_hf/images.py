# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""The one place in `paca_hf` that turns an image input into pixels and an annotation into a label map, so that every
entry point (the image processors' per-image hook, the ImageNet transforms, the fine-tuning collate, the augmentation,
visualization, the app) gives one input the same values. 8-bit data stays uint8; 16-bit data (PIL modes `I`, `I;16*`,
`uint16` arrays) becomes float32 `value / 65535`; float data must be in `[0, 1]` (noise up to 1e-3 is clipped). Grey is
repeated, alpha dropped without compositing (as PIL's `convert("RGB")`), other modes converted with PIL; EXIF
orientation applied.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers.image_utils import ChannelDimension, infer_channel_dimension_format
from transformers.utils import is_torch_tensor


FLOAT_RANGE_SLACK = 1e-3
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def is_file_source(source) -> bool:
    """Whether `source` is an image file still to be opened: a path, URL, base64 string, file bytes or `datasets`'
    undecoded image (`{"bytes": ..., "path": ...}`), as opposed to decoded pixels (PIL image, array, tensor)."""
    is_record = isinstance(source, Mapping) and set(source) == {"bytes", "path"}
    return is_record or isinstance(source, (str, os.PathLike, bytes))


def open_image(source, timeout: float | None = None) -> PIL.Image.Image:
    """
    Open an image file as a PIL image in its stored mode (16-bit, palette, alpha... kept), EXIF orientation applied.

    Args:
        source: a local path, a `file://` or `http(s)://` URL (fetched with transformers' `httpx` client), a base64
            string or `data:image/...;base64,` URI, the file's bytes, `datasets`' undecoded image (`{"bytes": ...,
            "path": ...}`) or a PIL image.
        timeout (`float`, *optional*): seconds to wait for a URL download.

    Raises:
        `ValueError`: the source is missing, cannot be downloaded or is not an image file.
    """
    return _upright(open_stored_image(source, timeout))


def open_stored_image(source, timeout: float | None = None) -> PIL.Image.Image:
    """[`open_image`] without applying the EXIF orientation: the stored pixel grid, its tag kept (what a label map's
    image must be for [`load_label_map`] to turn the map the same way). A PIL image is returned as is."""
    if isinstance(source, PIL.Image.Image):
        return source
    if isinstance(source, Mapping) and is_file_source(source):
        source = source["bytes"] if source["bytes"] is not None else source["path"]
        if source is None:
            raise ValueError("an undecoded `datasets` image has neither 'bytes' nor 'path'")
    source, where = (source, "the given bytes") if isinstance(source, bytes) else _read_source(source, timeout)
    try:
        image = PIL.Image.open(io.BytesIO(source))
        image.load()
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode {where} as an image: {error}") from error
    return image


def _read_source(source, timeout: float | None) -> tuple[bytes, str]:
    """`(file bytes, a name for errors)` of a URL, a local path or base64 data."""
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"cannot open an image from {type(source).__name__}; expected a path, a URL, base64 or bytes")
    source = os.fspath(source)
    if source.startswith(("http://", "https://")):
        from huggingface_hub.utils import httpx  # the client transformers' `load_image` downloads with

        try:
            return httpx.get(source, timeout=timeout, follow_redirects=True).raise_for_status().content, source
        except httpx.HTTPError as error:
            raise ValueError(f"cannot download image {source}: {error}") from error
    path = urllib.request.url2pathname(urllib.parse.urlparse(source).path) if source.startswith("file://") else source
    if os.path.isfile(path):
        return Path(path).read_bytes(), path
    try:
        payload = source.split(",", 1)[-1] if source.startswith("data:image/") else source
        return base64.b64decode(payload, validate=True), "the base64 string"
    except (binascii.Error, ValueError):
        raise ValueError(
            f"image source {source[:200]!r} is neither an existing file, a file:// or http(s):// URL, nor base64 data"
        ) from None


def _orientation(image: PIL.Image.Image) -> int:
    """The EXIF Orientation tag of `image` (1 = upright, also when there is no tag or it is unreadable)."""
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except (ValueError, TypeError, OSError):
        return 1
    return orientation if 2 <= orientation <= 8 else 1


def _upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """`image` with its EXIF orientation applied and removed (never applied twice); the same object if upright."""
    return image if _orientation(image) == 1 else PIL.ImageOps.exif_transpose(image)


def _to_numpy(array) -> np.ndarray:
    """A numpy array or a torch tensor as numpy (float16, bfloat16 and float8 as float32)."""
    if not is_torch_tensor(array):
        return np.asarray(array)
    array = array.detach().cpu()
    return (array.float() if array.is_floating_point() and array.element_size() < 4 else array).numpy()


def image_to_array(image, num_channels: int | None = 3, input_data_format=None, timeout: float | None = None):
    """
    Turn one image input into an `(height, width, channels)` numpy array.

    Args:
        image: a PIL image (any mode), a numpy array or torch tensor (`(H, W)`, `(H, W, C)` or `(C, H, W)` with 1, 3
            or 4 channels; bool, integer or float), or a file source (see [`is_file_source`]).
        num_channels (`int` or `None`, defaults to 3): 3 gives RGB (grey repeated, alpha dropped), 1 grey (PIL's
            ITU-R 601-2 luma), 4 RGBA (opaque alpha added), `None` the image's own channels (1, 2, 3 or 4).
        input_data_format (`str` or `ChannelDimension`, *optional*): the layout of an ambiguous array; by default a
            leading axis of size 1, 3 or 4 is the channel axis (as in transformers).
        timeout (`float`, *optional*): seconds to wait when `image` is a URL.

    Returns:
        `np.ndarray` `(height, width, channels)`: uint8 for 8-bit inputs, float32 in `[0, 1]` for 16-bit inputs
        (`value / 65535`) and float inputs: the values the image processors work on.

    Raises:
        `ValueError`: unsupported type, dtype, rank, channel count or value range (the message names the problem).
    """
    image = open_image(image, timeout) if is_file_source(image) else image
    if isinstance(image, PIL.Image.Image):
        array = _pil_pixels(_upright(image))
    elif isinstance(image, np.ndarray) or is_torch_tensor(image):
        array = _array_pixels(_to_numpy(image), input_data_format)
    else:
        raise ValueError(f"unsupported image type {type(image).__name__}: not a PIL image, array, tensor, path or URL")
    return _to_channels(array, num_channels)


def load_image(image, num_channels: int | None = 3, timeout: float | None = None) -> PIL.Image.Image:
    """
    Turn one image input into an 8-bit PIL image (mode `"RGB"` for 3 channels, `"L"` for 1, `"RGBA"` for 4).

    Accepts everything [`image_to_array`] does, with the same conversions; 16-bit and float data are rounded to 8 bits
    (`round(value / 257)`, `round(value * 255)`). An upright 8-bit PIL image already in the target mode is returned as
    is.
    """
    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    image = open_image(image, timeout) if is_file_source(image) else image
    upright = isinstance(image, PIL.Image.Image) and _orientation(image) == 1
    if upright and num_channels in (1, 3, 4) and image.mode == modes[num_channels]:
        return image
    array = image_to_array(image, num_channels)
    if array.dtype != np.uint8:
        array = np.round(array * np.float32(255.0)).astype(np.uint8)
    mode = modes[array.shape[-1]]
    return PIL.Image.fromarray(np.ascontiguousarray(array[..., 0] if mode == "L" else array), mode=mode)


def _pil_pixels(image: PIL.Image.Image) -> np.ndarray:
    """The image's own channels as `(H, W, C)`: uint8, or float32 in [0, 1] (16-bit and float modes)."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty (size {image.size})")
    if image.mode in SIXTEEN_BIT_MODES:  # also PIL's 32-bit mode `I`, as 16-bit files open
        return _sixteen_bit(np.asarray(image).astype(np.int64))[..., None]
    if image.mode == "LA":
        return np.asarray(image)
    if image.mode not in ("1", "L", "RGB", "RGBA", "F"):
        has_alpha = image.mode in ("PA", "RGBa") or (image.mode == "P" and "transparency" in image.info)
        try:
            image = image.convert("RGBA" if has_alpha else "RGB")
        except (ValueError, OSError) as error:
            raise ValueError(f"cannot convert PIL mode {image.mode!r} to RGB ({error})") from error
    return _array_pixels(np.asarray(image), ChannelDimension.LAST)


def _array_pixels(array: np.ndarray, input_data_format) -> np.ndarray:
    """An array's pixels as `(H, W, C)`: uint8, or float32 in [0, 1] (16-bit and float data)."""
    shape = tuple(array.shape)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"the image has unsupported dtype {array.dtype}; expected bool, integer or float")
    if array.ndim not in (2, 3):
        raise ValueError(f"an image must have rank 2 (H, W) or 3 (C, H, W) / (H, W, C), got rank {array.ndim} {shape}")
    if array.size == 0:
        raise ValueError(f"the image is empty (shape {shape})")
    if array.ndim == 3 and input_data_format is None:
        try:  # a leading axis of size 1, 3 or 4 is the channel axis, also when the last one could be
            input_data_format = infer_channel_dimension_format(array, num_channels=(1, 3, 4))
        except ValueError:
            raise ValueError(f"expected 1, 3 or 4 channels, got {min(shape[0], shape[-1])} (shape {shape})") from None
    if array.ndim == 2:
        array = array[..., None]
    elif ChannelDimension(input_data_format) == ChannelDimension.FIRST:
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got {array.shape[-1]} (shape {shape})")
    array = np.ascontiguousarray(array)
    if array.dtype.kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint16:
        return _sixteen_bit(array)
    if array.dtype.kind == "f":
        return _unit_float(array)
    if array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"integer image of dtype {array.dtype} has values in [{array.min()}, {array.max()}], but only [0, 255] is "
            "supported for this dtype (use uint16 for 16-bit data or floats in [0, 1])"
        )
    return array.astype(np.uint8, copy=False)


def _sixteen_bit(array: np.ndarray) -> np.ndarray:
    if array.min() < 0 or array.max() > 65535:
        raise ValueError(f"16-bit image has values in [{array.min()}, {array.max()}], outside [0, 65535]")
    return (array.astype(np.float64) / 65535).astype(np.float32)


def _unit_float(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("the image contains NaN or infinite values")
    if array.min() < -FLOAT_RANGE_SLACK or array.max() > 1 + FLOAT_RANGE_SLACK:
        raise ValueError(
            f"float images must have values in [0, 1], got [{array.min():g}, {array.max():g}] (divide by 255, or pass "
            "uint8 data)"
        )
    return np.ascontiguousarray(np.clip(array, 0.0, 1.0))


def _to_channels(array: np.ndarray, num_channels: int | None) -> np.ndarray:
    """`(H, W, C)` pixels with `num_channels` channels (see [`image_to_array`])."""
    if num_channels not in (None, 1, 3, 4):
        raise ValueError(f"`num_channels` must be 1, 3, 4 or None, got {num_channels!r}")
    if num_channels is None:
        return array
    channels = array.shape[-1]
    colour = array[..., :3] if channels >= 3 else array[..., :1]
    if num_channels == 1 and colour.shape[-1] == 3:  # PIL's ITU-R 601-2 luma, in its fixed point for 8-bit data
        if colour.dtype == np.uint8:
            luma = (colour.astype(np.int64) @ np.array([19595, 38470, 7471]) + 0x8000) >> 16
            return luma.astype(np.uint8)[..., None]
        return (colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    rgb = np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 and num_channels != 1 else colour
    if num_channels != 4:
        return np.ascontiguousarray(rgb)
    alpha = array[..., -1:] if channels in (2, 4) else np.full_like(rgb[..., :1], 255 if rgb.dtype == np.uint8 else 1)
    return np.concatenate([rgb, alpha], axis=-1)


def load_label_map(annotation, image=None, timeout: float | None = None) -> np.ndarray:
    """
    Turn one segmentation annotation into an `(height, width)` int64 label map, its values as stored (palette indices
    of `P` images, 16-bit values, ...): never converted to RGB, never interpolated.

    Args:
        annotation: a single-channel PIL image (`1`, `L`, `P`, `I`, `I;16*`, `F` with integer values), a numpy array /
            torch tensor of shape `(H, W)`, `(1, H, W)` or `(H, W, 1)` with integer values, or a file source.
        image (`PIL.Image.Image` or a file source, *optional*): the image this map annotates, as stored (its EXIF tag
            kept); a map without an EXIF orientation of its own takes the image's, so both stay aligned.
        timeout (`float`, *optional*): seconds to wait when `annotation` is a URL.

    Raises:
        `ValueError`: multi-channel maps, non-integer values, values outside the int32 range, empty maps.
    """
    annotation = open_stored_image(annotation, timeout) if is_file_source(annotation) else annotation
    image = open_stored_image(image, timeout) if is_file_source(image) else image
    orientation = _orientation(image) if isinstance(image, PIL.Image.Image) else 1
    if isinstance(annotation, PIL.Image.Image):
        if len(annotation.getbands()) != 1:
            raise ValueError(
                f"a segmentation map must be single-channel (PIL mode 'L', 'P', 'I', ...), got {annotation.mode!r}"
            )
        orientation = own if (own := _orientation(annotation)) != 1 else orientation
    elif not (isinstance(annotation, np.ndarray) or is_torch_tensor(annotation)):
        raise ValueError(f"unsupported segmentation map type {type(annotation).__name__}: not an image, array or path")
    array = _to_numpy(annotation)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise ValueError(f"a segmentation map must have rank 2 (H, W), got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"the segmentation map is empty (shape {array.shape})")
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and not np.all(array == np.round(array))):
        raise ValueError(f"a segmentation map must contain integer labels (its dtype: {array.dtype})")
    if array.min() < -(2**31) or array.max() >= 2**31:
        raise ValueError("the segmentation map has labels outside the int32 range")
    if orientation != 1:  # turned by its own tag, else by its image's (a map annotates the stored pixel grid)
        turned = PIL.Image.fromarray(array.astype(np.int32))
        turned.getexif()[0x0112] = orientation
        array = np.asarray(_upright(turned))
    return array.astype(np.int64)


def reduce_labels(labels, ignore_index: int = 255):
    """
    ADE20k label reduction (mmseg's `reduce_zero_label`, transformers' `do_reduce_labels`) of label maps of any shape
    (`np.ndarray`, or `torch.Tensor` kept on its device; returned as int64): label 0 ("other") becomes `ignore_index`
    (the label the loss and the metrics ignore), every other label `k` becomes `k - 1`, `ignore_index` stays.
    """
    if is_torch_tensor(labels):
        labels = labels.long()
        return (labels - 1).masked_fill_((labels == 0) | (labels == ignore_index), ignore_index)
    labels = np.asarray(labels).astype(np.int64)
    return np.where((labels == 0) | (labels == ignore_index), np.int64(ignore_index), labels - 1)


def same_size_groups(pixel_values) -> list[list[int]]:
    """Indices of the prepared images (arrays or tensors, e.g. an image processor's `pixel_values` with
    `return_tensors=None`) grouped by shape, each group in input order, groups in order of first appearance: the
    batches a model can run without padding (padding would change what every PaCa cluster averages over)."""
    groups: dict[tuple, list[int]] = {}
    for index, pixels in enumerate(pixel_values):
        groups.setdefault(tuple(pixels.shape), []).append(index)
    return list(groups.values())
