"""The one place in `paca_hf` that turns an image input into pixels and an annotation into a label map.

Every entry point (the image processors, the ImageNet transforms, the fine-tuning collate, the segmentation
augmentation, visualization) decodes through these functions, so one input gives the same values everywhere:

- [`image_to_array`]: any image input -> `(height, width, channels)` array (uint8, or float32 in `[0, 1]`).
- [`load_image`]: the same pixels as an 8-bit PIL image (for PIL-based transforms such as timm's / torchvision's).
- [`load_label_map`]: any annotation -> `(height, width)` int64 label map, values kept.
- [`reduce_labels`]: the ADE20k label reduction, for numpy arrays and torch tensors.

Conventions (they are the image processor's):

- Sources: PIL images of any mode, numpy arrays and torch tensors (`(H, W)`, `(H, W, C)` or `(C, H, W)`), local
  paths (`str` / `os.PathLike`), `file://` and `http(s)://` URLs (downloaded with the `httpx` client transformers uses) and
  base64 strings, and images as `datasets` stores them undecoded (`{"bytes", "path"}`). The EXIF orientation tag is
  applied, so a photo stored 80 x 40 with Orientation 6 is 40 x 80.
- 8-bit data (PIL modes `1`, `L`, `P`, `RGB`, `CMYK`, ..., `uint8` / `bool` arrays, other integer arrays with values in
  `[0, 255]`) stays uint8. 16-bit data (PIL modes `I`, `I;16*`, `uint16` arrays; values must lie in `[0, 65535]`)
  becomes float32 `value / 65535` (= `value / 257 / 255`: 16-bit white is 8-bit white). Float data (PIL mode `F`,
  float arrays) must already be in `[0, 1]` (rounding noise up to 1e-3 outside is clipped).
- Channels: grey is repeated, alpha (`LA`, `RGBA`, `PA`, `P` with a transparent colour, 4-channel arrays) is dropped
  without compositing: the stored colour of a transparent pixel is kept, as PIL's `convert("RGB")` does. Palette,
  CMYK, YCbCr, LAB and HSV images are converted with PIL.
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


# Float images slightly outside [0, 1] (rounding noise) are clipped instead of refused.
FLOAT_RANGE_SLACK = 1e-3
SIXTEEN_BIT_MAX = 65535
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
# Channel counts an array may have: grey, RGB, RGBA (channels first or last).
ARRAY_CHANNELS = (1, 3, 4)
_EXIF_ORIENTATION = 0x0112
# ITU-R 601-2 luma in PIL's fixed point (`convert("L")`): L = (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16.
_LUMA_FIXED_POINT = (19595, 38470, 7471)
_LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------------------------------------- sources


def _is_tensor(value) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(value, torch.Tensor)


def _is_datasets_record(source) -> bool:
    """`datasets`' undecoded image: `{"bytes": ..., "path": ...}` (`datasets.Image(decode=False)`)."""
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
            `datasets` stores it undecoded (`{"bytes": ..., "path": ...}`, `datasets.Image(decode=False)`), or an
            opened PIL image.
        timeout (`float`, *optional*): seconds to wait for a URL download.

    Raises:
        `ValueError`: the source is missing, cannot be downloaded or is not an image file.
    """
    return exif_transpose(open_stored_image(source, timeout))


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
        data = source
        where = "the given bytes"
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
    if source.startswith(("http://", "https://")):
        from huggingface_hub.utils import httpx  # the client transformers' `load_image` downloads with

        try:
            response = httpx.get(source, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ValueError(f"cannot download image {source}: {error}") from error
        return response.content, source
    if source.startswith("file://"):
        path = urllib.request.url2pathname(urllib.parse.urlparse(source).path)
    else:
        path = source
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            return handle.read(), path
    payload = source.split(",", 1)[1] if source.startswith("data:image/") else source
    try:
        return base64.b64decode(payload, validate=True), "the base64 string"
    except (binascii.Error, ValueError):
        raise ValueError(
            f"image source {source[:200]!r} is neither an existing file, a file:// or http(s):// URL, nor base64 data"
        ) from None


def exif_orientation(image: PIL.Image.Image) -> int:
    """The EXIF Orientation tag of `image` (1 = upright, also when there is no tag)."""
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (ValueError, TypeError, OSError):
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def exif_transpose(image: PIL.Image.Image, orientation: int | None = None) -> PIL.Image.Image:
    """`image` turned upright according to `orientation` (default: its own EXIF tag); the same object when upright."""
    orientation = exif_orientation(image) if orientation is None else orientation
    if orientation == 1:
        return image
    if exif_orientation(image) == orientation:
        return PIL.ImageOps.exif_transpose(image)
    method = {
        2: PIL.Image.Transpose.FLIP_LEFT_RIGHT,
        3: PIL.Image.Transpose.ROTATE_180,
        4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
        5: PIL.Image.Transpose.TRANSPOSE,
        6: PIL.Image.Transpose.ROTATE_270,
        7: PIL.Image.Transpose.TRANSVERSE,
        8: PIL.Image.Transpose.ROTATE_90,
    }[orientation]
    return image.transpose(method)


def _to_numpy(array) -> np.ndarray:
    if _is_tensor(array):
        import torch

        array = array.detach().cpu()
        if array.dtype == torch.bfloat16 or array.dtype == torch.float16:
            array = array.float()
        try:
            return array.numpy()
        except (TypeError, RuntimeError) as error:
            raise ValueError(f"cannot convert a tensor of dtype {array.dtype} to numpy: {error}") from error
    return np.asarray(array)


# ---------------------------------------------------------------------------------------------------------- images


def image_to_array(image, num_channels: int | None = 3, input_data_format=None, timeout: float | None = None):
    """
    Turn one image input into an `(height, width, channels)` numpy array.

    Args:
        image: a PIL image (any mode), a numpy array or torch tensor (`(H, W)`, `(H, W, C)` or `(C, H, W)` with 1, 3
            or 4 channels; bool, integer or float), a path, a `file://` / `http(s)://` URL or a base64 string.
        num_channels (`int` or `None`, defaults to 3): 3 gives RGB (grey repeated, alpha dropped); 1 gives grey
            (colour converted with PIL's ITU-R 601-2 luma); 4 gives RGBA (opaque alpha added where there is none);
            `None` keeps the image's own channels (1 grey, 2 grey + alpha, 3 RGB or 4 RGBA).
        input_data_format (`str` or `ChannelDimension`, *optional*): `"channels_first"` / `"channels_last"` for
            arrays whose layout is ambiguous; by default a leading axis of size 1, 3 or 4 is the channel axis (as in
            transformers).
        timeout (`float`, *optional*): seconds to wait when `image` is a URL.

    Returns:
        `np.ndarray` of shape `(height, width, channels)`: uint8 in `[0, 255]` for 8-bit inputs, float32 in `[0, 1]`
        for 16-bit inputs (`value / 65535`) and float inputs. These are the values the image processor works on.

    Raises:
        `ValueError`: unsupported type, dtype, rank, channel count or value range (the message names the problem).
    """
    array = _native_pixels(image, input_data_format, timeout)
    return _to_channels(array, num_channels)


def load_image(image, num_channels: int | None = 3, timeout: float | None = None) -> PIL.Image.Image:
    """
    Turn one image input into an 8-bit PIL image (mode `"RGB"` for 3 channels, `"L"` for 1, `"RGBA"` for 4).

    Accepts everything [`image_to_array`] does, with the same conversions; 16-bit and float data are rounded to 8 bits
    (`round(value / 257)`, `round(value * 255)`). An upright 8-bit PIL image already in the target mode is returned as
    is.
    """
    if is_file_source(image):
        image = open_image(image, timeout)
    if isinstance(image, PIL.Image.Image) and exif_orientation(image) == 1 and _pil_target_mode(num_channels) == image.mode:
        return image
    array = image_to_array(image, num_channels)
    if array.dtype != np.uint8:
        array = np.round(array * np.float32(255.0)).astype(np.uint8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    if array.shape[-1] == 1:
        array = array[..., 0]
    return PIL.Image.fromarray(np.ascontiguousarray(array), mode=mode)


def _pil_target_mode(num_channels) -> str | None:
    return {1: "L", 3: "RGB", 4: "RGBA"}.get(num_channels)


def _native_pixels(image, input_data_format, timeout) -> np.ndarray:
    """The image's own channels as `(H, W, C)`: uint8, or float32 in [0, 1] (16-bit and float data)."""
    if is_file_source(image):
        image = open_image(image, timeout)
    if isinstance(image, PIL.Image.Image):
        return _pil_pixels(exif_transpose(image))
    if isinstance(image, np.ndarray) or _is_tensor(image):
        return _array_pixels(_to_numpy(image), input_data_format)
    raise ValueError(
        f"unsupported image type {type(image).__name__}; expected a PIL image, a numpy array, a torch tensor, a path "
        "or a URL"
    )


def _pil_pixels(image: PIL.Image.Image) -> np.ndarray:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty (size {image.size})")
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit(np.asarray(image).astype(np.int64))[..., None]
    if mode == "F":
        return _unit_float(np.asarray(image, dtype=np.float32))[..., None]
    if mode in ("L", "RGB"):
        pass
    elif mode == "1":
        image = image.convert("L")
    elif mode == "LA":
        image = image.convert("LA")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode in ("RGBA", "RGBa"):
        image = image.convert("RGBA")
    else:
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as error:
            raise ValueError(f"cannot convert PIL mode {mode!r} to RGB ({error})") from error
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _array_pixels(array: np.ndarray, input_data_format) -> np.ndarray:
    shape = tuple(array.shape)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"the image has unsupported dtype {array.dtype}; expected bool, integer or float")
    if array.ndim not in (2, 3):
        raise ValueError(f"the image must have rank 2 (H, W) or 3 (C, H, W) / (H, W, C), got shape {shape}")
    if array.size == 0:
        raise ValueError(f"the image is empty (shape {shape})")
    if array.ndim == 2:
        array = array[..., None]
    elif _channels_first(shape, input_data_format):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in ARRAY_CHANNELS:
        raise ValueError(f"expected 1, 3 or 4 channels, got {array.shape[-1]} (shape {shape})")
    array = np.ascontiguousarray(array)
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint8:
        return array
    if kind == "u" and array.dtype.itemsize == 2:
        return _sixteen_bit(array.astype(np.int64))
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"integer image of dtype {array.dtype} has values in [{low}, {high}], but only [0, 255] is supported "
                "for this dtype (use uint16 for 16-bit data or floats in [0, 1])"
            )
        return array.astype(np.uint8)
    return _unit_float(array)


def _channels_first(shape: tuple, input_data_format) -> bool:
    if input_data_format is not None:
        layout = str(getattr(input_data_format, "value", input_data_format))
        if layout not in ("channels_first", "channels_last"):
            raise ValueError(f"`input_data_format` must be 'channels_first' or 'channels_last', got {layout!r}")
        return layout == "channels_first"
    if shape[0] in ARRAY_CHANNELS:  # also the ambiguous case, as in transformers
        return True
    if shape[-1] in ARRAY_CHANNELS:
        return False
    raise ValueError(
        f"expected 1, 3 or 4 channels, got {min(shape[0], shape[-1])} (shape {shape}; the channel axis must be the "
        "first or the last one)"
    )


def _sixteen_bit(array: np.ndarray) -> np.ndarray:
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > SIXTEEN_BIT_MAX:
        raise ValueError(f"16-bit image has values in [{low}, {high}], outside [0, {SIXTEEN_BIT_MAX}]")
    return (array.astype(np.float64) / SIXTEEN_BIT_MAX).astype(np.float32)


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
    channels = array.shape[-1]
    colour = array[..., :3] if channels >= 3 else array[..., :1]
    alpha = array[..., channels - 1 :] if channels in (2, 4) else None
    if num_channels is None:
        return array
    if num_channels == 3:
        return np.ascontiguousarray(np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour)
    if num_channels == 1:
        return np.ascontiguousarray(colour if colour.shape[-1] == 1 else _luma(colour))
    if num_channels == 4:
        rgb = np.repeat(colour, 3, axis=-1) if colour.shape[-1] == 1 else colour
        if alpha is None:
            alpha = np.full(rgb.shape[:2] + (1,), 255 if rgb.dtype == np.uint8 else 1.0, dtype=rgb.dtype)
        return np.ascontiguousarray(np.concatenate([rgb, alpha], axis=-1))
    raise ValueError(f"`num_channels` must be 1, 3, 4 or None, got {num_channels!r}")


def _luma(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        weights = np.asarray(_LUMA_FIXED_POINT, dtype=np.int64)
        return ((rgb.astype(np.int64) @ weights + 0x8000) >> 16).astype(np.uint8)[..., None]
    return (rgb @ np.asarray(_LUMA, dtype=np.float32)).astype(np.float32)[..., None]


# ---------------------------------------------------------------------------------------------------------- labels


def load_label_map(annotation, image=None, timeout: float | None = None) -> np.ndarray:
    """
    Turn one segmentation annotation into an `(height, width)` int64 label map. Label values are kept as stored
    (palette indices of `P` images, 16-bit values, ...): never converted to RGB, never interpolated.

    Args:
        annotation: a single-channel PIL image (`1`, `L`, `P`, `I`, `I;16*`, `F` with integer values), a numpy array /
            torch tensor of shape `(H, W)`, `(1, H, W)` or `(H, W, 1)` with integer values, a path or a URL.
        image (`PIL.Image.Image` or a file source, *optional*): the image this map annotates, as stored (before any
            EXIF transpose; a path, bytes or `datasets`' undecoded image is opened for its tag).
            When the annotation carries no EXIF orientation of its own, the image's is applied, so image
            and map stay aligned.
        timeout (`float`, *optional*): seconds to wait when `annotation` is a URL.

    Raises:
        `ValueError`: multi-channel maps, non-integer values, values outside the int32 range, empty maps.
    """
    if is_file_source(annotation):
        annotation = open_stored_image(annotation, timeout)  # its own tag is applied below, once
    if is_file_source(image):
        image = open_stored_image(image, timeout)
    if isinstance(annotation, PIL.Image.Image):
        if len(annotation.getbands()) != 1:
            raise ValueError(
                f"a segmentation map must be single-channel (PIL mode 'L', 'P', 'I', ...), got mode {annotation.mode!r}"
            )
        orientation = exif_orientation(annotation)
        if orientation == 1 and isinstance(image, PIL.Image.Image):
            orientation = exif_orientation(image)
        array = np.asarray(exif_transpose(annotation, orientation))
    elif isinstance(annotation, np.ndarray) or _is_tensor(annotation):
        array = _to_numpy(annotation)
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
        if isinstance(image, PIL.Image.Image) and exif_orientation(image) != 1:
            # An array annotates the stored pixel grid of its image: give it the image's transpose.
            array = np.asarray(exif_transpose(PIL.Image.fromarray(_check_labels(array)), exif_orientation(image)))
    else:
        raise ValueError(
            f"unsupported segmentation map type {type(annotation).__name__}; expected a PIL image, a numpy array, a "
            "torch tensor, a path or a URL"
        )
    return _check_labels(array).astype(np.int64)


def _check_labels(array: np.ndarray) -> np.ndarray:
    if array.ndim != 2:
        raise ValueError(f"a segmentation map must have rank 2 (H, W), got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"the segmentation map is empty (shape {array.shape})")
    kind = array.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("a segmentation map must contain integer labels, got non-integer or NaN float values")
    elif kind not in "biu":
        raise ValueError(f"the segmentation map has unsupported dtype {array.dtype}; expected integer labels")
    info = np.iinfo(np.int32)
    if array.min() < info.min or array.max() > info.max:
        raise ValueError("the segmentation map has labels outside the int32 range")
    return array.astype(np.int32)


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
    if _is_tensor(labels):
        import torch

        labels = labels.long()
        return torch.where((labels == 0) | (labels == ignore_index), torch.full_like(labels, ignore_index), labels - 1)
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
    "exif_orientation",
    "exif_transpose",
    "image_to_array",
    "is_file_source",
    "load_image",
    "load_label_map",
    "open_image",
    "open_stored_image",
    "reduce_labels",
    "same_size_groups",
]
