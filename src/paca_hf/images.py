# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""The one place in `paca_hf` that turns an image input into pixels and an annotation into a label map.

Every entry point (the image processors' per-image hook, the ImageNet transforms, the fine-tuning collate, the
segmentation augmentation, visualization, the app) decodes through these functions, so one input gives the same values
everywhere. Sources: PIL images of any mode, numpy arrays and torch tensors, local paths, `file://` and `http(s)://`
URLs (downloaded with the `httpx` client transformers uses), base64 strings, file bytes and `datasets`' undecoded
images (`{"bytes", "path"}`), EXIF orientation applied. 8-bit data (PIL modes `1`, `L`, `P`, `RGB`, `CMYK`, ...,
`uint8` / `bool` arrays, other integer arrays in `[0, 255]`) stays uint8; 16-bit data (PIL modes `I`, `I;16*`,
`uint16` arrays) becomes float32 `value / 65535` (16-bit white is 8-bit white); float data must be in `[0, 1]` (noise
up to 1e-3 is clipped). Grey is repeated; alpha is dropped without compositing (the stored colour of a transparent
pixel is kept, as PIL's `convert("RGB")` does); palette, CMYK, YCbCr, LAB and HSV images are converted with PIL.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers.utils import is_torch_tensor


FLOAT_RANGE_SLACK = 1e-3
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_T = PIL.Image.Transpose
# EXIF orientation -> the transpose that turns the stored pixels upright (1 = upright: none).
_TRANSPOSE = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
              7: _T.TRANSVERSE, 8: _T.ROTATE_90}


def _is_datasets_record(source) -> bool:
    return isinstance(source, Mapping) and set(source) == {"bytes", "path"}


def is_file_source(source) -> bool:
    """Whether `source` is an image file still to be opened: a path, URL, base64 string, file bytes or `datasets`'
    undecoded image (`{"bytes": ..., "path": ...}`), as opposed to decoded pixels (PIL image, array, tensor)."""
    return isinstance(source, (str, os.PathLike, bytes)) or _is_datasets_record(source)


def open_image(source, timeout: float | None = None) -> PIL.Image.Image:
    """
    Open an image file as a PIL image in its stored mode (16-bit, palette, alpha... kept), EXIF orientation applied.

    Args:
        source (`str`, `os.PathLike`, `bytes`, `dict` or `PIL.Image.Image`): a local path, a `file://` or `http(s)://`
            URL, a base64 string (optionally a `data:image/...;base64,` URI), the file's bytes, an image as
            `datasets` stores it undecoded (`{"bytes": ..., "path": ...}`), or an opened PIL image.
        timeout (`float`, *optional*): seconds to wait for a URL download.

    Raises:
        `ValueError`: the source is missing, cannot be downloaded or is not an image file.
    """
    return _upright(open_stored_image(source, timeout))


def open_stored_image(source, timeout: float | None = None) -> PIL.Image.Image:
    """The same as [`open_image`] without applying the EXIF orientation: the stored pixel grid, its tag kept (what a
    label map's image must be for [`load_label_map`] to turn the map the same way). A PIL image is returned as is."""
    if isinstance(source, PIL.Image.Image):
        return source
    if _is_datasets_record(source):
        if source["bytes"] is None and source["path"] is None:
            raise ValueError("an undecoded `datasets` image has neither 'bytes' nor 'path'")
        source = source["bytes"] if source["bytes"] is not None else source["path"]
    if isinstance(source, bytes):
        data, where = source, "the given bytes"
    elif isinstance(source, (str, os.PathLike)):
        data, where = _read_source(os.fspath(source), timeout)
    else:
        raise ValueError(
            f"cannot open an image from {type(source).__name__}; expected a path, a URL, a base64 string or bytes"
        )
    try:
        image = PIL.Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode {where} as an image: {error}") from error
    return image


def _read_source(source: str, timeout: float | None) -> tuple[bytes, str]:
    """`(file bytes, a name for errors)` of a URL, a local path or base64 data."""
    if source.startswith(("http://", "https://")):
        from huggingface_hub.utils import httpx  # the client transformers' `load_image` downloads with

        try:
            response = httpx.get(source, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ValueError(f"cannot download image {source}: {error}") from error
        return response.content, source
    path = urllib.request.url2pathname(urllib.parse.urlparse(source).path) if source.startswith("file://") else source
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            return handle.read(), path
    payload = source.split(",", 1)[-1] if source.startswith("data:image/") else source
    try:
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
    return orientation if orientation in _TRANSPOSE else 1


def _upright(image: PIL.Image.Image, orientation: int | None = None) -> PIL.Image.Image:
    """`image` turned by `orientation` (default: its own tag, then removed, so it is never applied twice); the same
    object when there is nothing to turn."""
    own = _orientation(image)
    orientation = own if orientation is None else orientation
    if orientation == 1:
        return image
    return PIL.ImageOps.exif_transpose(image) if orientation == own else image.transpose(_TRANSPOSE[orientation])


def _to_numpy(array) -> np.ndarray:
    if not is_torch_tensor(array):
        return np.asarray(array)
    array = array.detach().cpu()
    if array.is_floating_point() and array.element_size() == 2:  # float16 / bfloat16: no (exact) numpy dtype
        array = array.float()
    try:
        return array.numpy()
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"cannot convert a tensor of dtype {array.dtype} to numpy: {error}") from error


def image_to_array(image, num_channels: int | None = 3, input_data_format=None, timeout: float | None = None):
    """
    Turn one image input into an `(height, width, channels)` numpy array.

    Args:
        image: a PIL image (any mode), a numpy array or torch tensor (`(H, W)`, `(H, W, C)` or `(C, H, W)` with 1, 3
            or 4 channels; bool, integer or float), or a file source (see [`is_file_source`]).
        num_channels (`int` or `None`, defaults to 3): 3 gives RGB (grey repeated, alpha dropped); 1 gives grey
            (colour converted with PIL's ITU-R 601-2 luma); 4 gives RGBA (opaque alpha added where there is none);
            `None` keeps the image's own channels (1 grey, 2 grey + alpha, 3 RGB or 4 RGBA).
        input_data_format (`str` or `ChannelDimension`, *optional*): `"channels_first"` / `"channels_last"` for
            arrays whose layout is ambiguous; by default a leading axis of size 1, 3 or 4 is the channel axis (as in
            transformers).
        timeout (`float`, *optional*): seconds to wait when `image` is a URL.

    Returns:
        `np.ndarray` of shape `(height, width, channels)`: uint8 for 8-bit inputs, float32 in `[0, 1]` for 16-bit
        inputs (`value / 65535`) and float inputs. These are the values the image processors work on.

    Raises:
        `ValueError`: unsupported type, dtype, rank, channel count or value range (the message names the problem).
    """
    if is_file_source(image):
        image = open_image(image, timeout)
    if isinstance(image, PIL.Image.Image):
        array = _pil_pixels(_upright(image))
    elif isinstance(image, np.ndarray) or is_torch_tensor(image):
        array = _array_pixels(_to_numpy(image), input_data_format)
    else:
        raise ValueError(
            f"unsupported image type {type(image).__name__}; expected a PIL image, a numpy array, a torch tensor, a "
            "path or a URL"
        )
    return _to_channels(array, num_channels)


def load_image(image, num_channels: int | None = 3, timeout: float | None = None) -> PIL.Image.Image:
    """
    Turn one image input into an 8-bit PIL image (mode `"RGB"` for 3 channels, `"L"` for 1, `"RGBA"` for 4).

    Accepts everything [`image_to_array`] does, with the same conversions; 16-bit and float data are rounded to 8 bits
    (`round(value / 257)`, `round(value * 255)`). An upright 8-bit PIL image already in the target mode is returned as
    is.
    """
    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    if is_file_source(image):
        image = open_image(image, timeout)
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
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit(np.asarray(image).astype(np.int64))[..., None]
    if mode == "F":
        return _unit_float(np.asarray(image, dtype=np.float32))[..., None]
    if mode not in ("L", "RGB", "LA", "RGBA"):
        has_alpha = mode in ("PA", "RGBa") or (mode == "P" and "transparency" in image.info)
        target = "L" if mode == "1" else "RGBA" if has_alpha else "RGB"
        try:
            image = image.convert(target)
        except (ValueError, OSError) as error:
            raise ValueError(f"cannot convert PIL mode {mode!r} to RGB ({error})") from error
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _array_pixels(array: np.ndarray, input_data_format) -> np.ndarray:
    """An array's pixels as `(H, W, C)`: uint8, or float32 in [0, 1] (16-bit and float data)."""
    shape = tuple(array.shape)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"the image has unsupported dtype {array.dtype}; expected bool, integer or float")
    if array.ndim not in (2, 3):
        raise ValueError(f"an image must have rank 2 (H, W) or 3 (C, H, W) / (H, W, C), got rank {array.ndim} {shape}")
    if array.size == 0:
        raise ValueError(f"the image is empty (shape {shape})")
    if array.ndim == 2:
        array = array[..., None]
    elif _channels_first(shape, input_data_format):
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


def _channels_first(shape: tuple, input_data_format) -> bool:
    if input_data_format is not None:
        layout = str(getattr(input_data_format, "value", input_data_format))
        if layout not in ("channels_first", "channels_last"):
            raise ValueError(f"`input_data_format` must be 'channels_first' or 'channels_last', got {layout!r}")
        return layout == "channels_first"
    if shape[0] in (1, 3, 4):  # also when the last axis could be channels too, as in transformers
        return True
    if shape[-1] in (1, 3, 4):
        return False
    raise ValueError(
        f"expected 1, 3 or 4 channels, got {min(shape[0], shape[-1])} (shape {shape}; the channel axis must be the "
        "first or the last one)"
    )


def _sixteen_bit(array: np.ndarray) -> np.ndarray:
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise ValueError(f"16-bit image has values in [{low}, {high}], outside [0, 65535]")
    return (array.astype(np.float64) / 65535).astype(np.float32)


def _unit_float(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("the image contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -FLOAT_RANGE_SLACK or high > 1 + FLOAT_RANGE_SLACK:
        raise ValueError(
            f"float images must have values in [0, 1], got [{low:g}, {high:g}] (divide by 255, or pass uint8 data)"
        )
    return np.ascontiguousarray(np.clip(array, 0.0, 1.0))


def _to_channels(array: np.ndarray, num_channels: int | None) -> np.ndarray:
    """`(H, W, C)` pixels with `num_channels` channels (see [`image_to_array`])."""
    if num_channels is None:
        return array
    channels = array.shape[-1]
    colour = array[..., :3] if channels >= 3 else array[..., :1]
    if num_channels == 1 and colour.shape[-1] == 3:  # PIL's ITU-R 601-2 luma, in its fixed point for 8-bit data
        if colour.dtype == np.uint8:
            luma = (colour.astype(np.int64) @ np.array([19595, 38470, 7471]) + 0x8000) >> 16
            return luma.astype(np.uint8)[..., None]
        return (colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    if num_channels == 1:
        return np.ascontiguousarray(colour)
    if num_channels not in (3, 4):
        raise ValueError(f"`num_channels` must be 1, 3, 4 or None, got {num_channels!r}")
    rgb = np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour
    if num_channels == 3:
        return np.ascontiguousarray(rgb)
    alpha = array[..., -1:] if channels in (2, 4) else np.full_like(rgb[..., :1], 255 if rgb.dtype == np.uint8 else 1)
    return np.concatenate([rgb, alpha], axis=-1)


def load_label_map(annotation, image=None, timeout: float | None = None) -> np.ndarray:
    """
    Turn one segmentation annotation into an `(height, width)` int64 label map. Label values are kept as stored
    (palette indices of `P` images, 16-bit values, ...): never converted to RGB, never interpolated.

    Args:
        annotation: a single-channel PIL image (`1`, `L`, `P`, `I`, `I;16*`, `F` with integer values), a numpy array /
            torch tensor of shape `(H, W)`, `(1, H, W)` or `(H, W, 1)` with integer values, or a file source.
        image (`PIL.Image.Image` or a file source, *optional*): the image this map annotates, as stored (before any
            EXIF transpose; a file source is opened for its tag). When the annotation carries no EXIF orientation of
            its own, the image's is applied, so image and map stay aligned.
        timeout (`float`, *optional*): seconds to wait when `annotation` is a URL.

    Raises:
        `ValueError`: multi-channel maps, non-integer values, values outside the int32 range, empty maps.
    """
    if is_file_source(annotation):
        annotation = open_stored_image(annotation, timeout)  # its own tag is applied below, once
    image = open_stored_image(image, timeout) if is_file_source(image) else image
    image_orientation = _orientation(image) if isinstance(image, PIL.Image.Image) else 1
    if isinstance(annotation, PIL.Image.Image):
        if len(annotation.getbands()) != 1:
            raise ValueError(
                f"a segmentation map must be single-channel (PIL mode 'L', 'P', 'I', ...), got {annotation.mode!r}"
            )
        own = _orientation(annotation)
        return _check_labels(np.asarray(_upright(annotation, own if own != 1 else image_orientation)))
    if not (isinstance(annotation, np.ndarray) or is_torch_tensor(annotation)):
        raise ValueError(
            f"unsupported segmentation map type {type(annotation).__name__}; expected a PIL image, a numpy array, a "
            "torch tensor, a path or a URL"
        )
    array = _to_numpy(annotation)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    labels = _check_labels(array)
    if image_orientation != 1:  # an array annotates the stored pixel grid of its image: give it the image's turn
        labels = np.asarray(_upright(PIL.Image.fromarray(labels.astype(np.int32)), image_orientation)).astype(np.int64)
    return labels


def _check_labels(array: np.ndarray) -> np.ndarray:
    """`array` as int64 labels, or a `ValueError` naming what makes it no label map."""
    if array.ndim != 2:
        raise ValueError(f"a segmentation map must have rank 2 (H, W), got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"the segmentation map is empty (shape {array.shape})")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("a segmentation map must contain integer labels, got non-integer or NaN float values")
    elif array.dtype.kind not in "biu":
        raise ValueError(f"the segmentation map has unsupported dtype {array.dtype}; expected integer labels")
    if array.min() < -(2**31) or array.max() >= 2**31:
        raise ValueError("the segmentation map has labels outside the int32 range")
    return array.astype(np.int64)


def reduce_labels(labels, ignore_index: int = 255):
    """
    ADE20k label reduction (mmseg's `reduce_zero_label`, transformers' `do_reduce_labels`): label 0 ("other")
    becomes `ignore_index`, every other label `k` becomes `k - 1`, and `ignore_index` stays `ignore_index`.

    Args:
        labels (`np.ndarray` or `torch.Tensor`): label maps of any shape, integer values.
        ignore_index (`int`, defaults to 255): the label ignored by the loss and the metrics.

    Returns:
        The same type as `labels` (a tensor stays on its device), int64.
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


__all__ = [
    "image_to_array",
    "is_file_source",
    "load_image",
    "load_label_map",
    "open_image",
    "open_stored_image",
    "reduce_labels",
    "same_size_groups",
]
