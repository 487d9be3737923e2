"""Every entry point that decodes images gives the image processor's pixels for the same file (issue 13).

The reference is `PaCaViTImageProcessor` on the PIL image opened from the file, with resize, crop and normalization
switched off: `(H, W, 3)` values in [0, 1]. Each entry point in `ENTRY_POINTS` decodes the same file from the input
kinds it accepts and must match the reference within its `atol`:

- 0 (up to float32 rounding, 1e-6) for entry points that keep 16-bit data unrounded;
- `EIGHT_BIT_ATOL` for entry points that hand an 8-bit PIL image to a PIL transform (`paca_hf.images.load_image`:
  16-bit values are rounded to the nearest 8-bit level, at most half a level away).

To add an entry point: write `decode(source) -> np.ndarray` returning its pixels as `(H, W, 3)` floats in [0, 1]
with its geometry switched off (or undone), and append an `EntryPoint` to `ENTRY_POINTS`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageOps

from paca_hf.image_processing_pacavit import PaCaViTImageProcessor
from paca_hf.image_processing_pil_pacavit import PaCaViTImageProcessorPil


EXACT_ATOL = 1e-6
EIGHT_BIT_ATOL = 0.5 / 255 + 1e-6
# Input kinds: "pil" = the image opened with PIL (EXIF tag still on it), "path" = the file path as `str`,
# "numpy" = `np.asarray` of the PIL image (only for files whose stored pixels are upright and not palette-coded).
KINDS = ("pil", "path", "numpy")


@dataclass
class EntryPoint:
    name: str
    decode: Callable[[object], np.ndarray]
    kinds: tuple = KINDS
    atol: float = EXACT_ATOL


def _processor_pixels(processor_class) -> Callable[[object], np.ndarray]:
    processor = processor_class(do_resize=False, do_center_crop=False, do_normalize=False)

    def decode(source):
        pixel_values = processor(source, return_tensors="np")["pixel_values"][0]
        return pixel_values.transpose(1, 2, 0)

    return decode


def _detector_processor_pixels(source):
    """The detector's processor (mmdetection's transform works on the 0-255 scale) without resize, normalization or
    padding."""
    from paca_hf.image_processing_pacavit_mask_rcnn import PaCaViTMaskRCNNImageProcessor

    processor = PaCaViTMaskRCNNImageProcessor(do_resize=False, do_normalize=False, do_pad=False)
    return processor(source, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0) / 255


def _imagenet_train_pixels(source):
    """The ImageNet training dataset's decoding, with timm's augmentation replaced by a plain to-tensor."""
    from torchvision.transforms import ToTensor

    from paca_hf.training.classification.train import ImageNetTrainDataset

    dataset = ImageNetTrainDataset([{"image": source, "label": 0}], ToTensor(), seed=0)
    return dataset[0]["pixel_values"].numpy().transpose(1, 2, 0)


def _imagenet_eval_pixels(source):
    """The ImageNet evaluation transform (train_imagenet's evaluation, evaluate_imagenet) with geometry off."""
    from paca_hf.training.classification.evaluation import EvalTransform

    processor = PaCaViTImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    return EvalTransform(processor)({"image": [source], "label": [0]})["pixel_values"][0].numpy().transpose(1, 2, 0)


def _visualization_pixels(with_processor: bool):
    from paca_hf.visualization import prepare_image

    processor = PaCaViTImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)

    def decode(source):
        if with_processor:  # what the model sees
            return prepare_image(source, processor)[0][0].numpy().transpose(1, 2, 0)
        return prepare_image(source)[1] / 255.0  # the picture drawn without a processor (8-bit)

    return decode


def _displayed_size(source) -> tuple[int, int]:
    """(height, width) of an input as shown (EXIF orientation applied), found with PIL alone."""
    if isinstance(source, np.ndarray):
        return source.shape[:2]
    image = Image.open(source) if isinstance(source, str) else source
    width, height = ImageOps.exif_transpose(image).size
    return height, width


def _finetune_collate(source) -> np.ndarray:
    """The fine-tune's collate; its label map (an unrotated blank map of the stored size) must come out aligned
    with the image when the image is a PIL image carrying an EXIF orientation."""
    from paca_hf.training.segmentation.data import collate_segmentation

    stored = (
        Image.open(source).size
        if isinstance(source, str)
        else (source.size if isinstance(source, Image.Image) else source.shape[1::-1])
    )
    batch = collate_segmentation([{"image": source, "annotation": Image.new("L", stored)}])
    pixels = batch["images"][0].permute(1, 2, 0).numpy().astype(np.float32) / 255
    if not isinstance(source, str):
        assert tuple(batch["labels"][0].shape) == pixels.shape[:2]
    return pixels


def _segmentation_augment(source) -> np.ndarray:
    """The fine-tune's augmentation with its geometry, colour and normalisation switched off (scale = the image's
    own size, ratio 1, full-size crop, no flip)."""
    import torch

    from paca_hf.training.segmentation.augmentation import SegmentationTrainAugment

    height, width = _displayed_size(source)
    augment = SegmentationTrainAugment(
        crop_size=(height, width),
        scale=(max(height, width), min(height, width)),
        ratio_range=(1.0, 1.0),
        cat_max_ratio=1.0,
        flip_prob=0.0,
        photometric=False,
        mean=None,
        std=None,
    )
    images, _ = augment([source], [torch.zeros(height, width, dtype=torch.long)], generator=torch.Generator())
    return images[0].permute(1, 2, 0).numpy() / 255


ENTRY_POINTS = [
    EntryPoint("PaCaViTImageProcessor", _processor_pixels(PaCaViTImageProcessor)),
    EntryPoint("PaCaViTImageProcessorPil", _processor_pixels(PaCaViTImageProcessorPil)),
    EntryPoint("PaCaViTMaskRCNNImageProcessor", _detector_processor_pixels),
    EntryPoint("imagenet_train", _imagenet_train_pixels, atol=EIGHT_BIT_ATOL),
    EntryPoint("imagenet_eval", _imagenet_eval_pixels),
    EntryPoint("visualization", _visualization_pixels(True)),
    EntryPoint("visualization_8bit", _visualization_pixels(False), atol=EIGHT_BIT_ATOL),
    EntryPoint("finetune-collate", _finetune_collate),
    EntryPoint("SegmentationTrainAugment", _segmentation_augment),
]


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _gradient(height=24, width=32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)], -1)


# Sample file -> whether `np.asarray` of the opened file is a valid array input with the same pixels.
SAMPLES = {
    "grey16.png": True,
    "ramp16.png": True,
    "grey.png": True,
    "bits.png": True,
    "grey_alpha.png": False,
    "rgb.png": True,
    "rgba.png": True,
    "palette.png": False,
    "palette_transparent.png": False,
    "cmyk.jpg": False,
    "photo_exif6.jpg": False,
    "float.tiff": True,
}


def _write_samples(folder) -> dict:
    """name -> path. Every PIL mode issue 13 names, as the files `datasets` and cameras produce."""
    rgb = _gradient().astype(np.uint8)
    samples = {}

    def save(name, image, **kwargs):
        path = folder / name
        image.save(path, **kwargs)
        samples[name] = str(path)

    save("grey16.png", Image.fromarray(np.full((24, 32), 32896, dtype=np.uint16)))
    save("ramp16.png", Image.fromarray((_gradient()[..., 0] * 257 + _gradient()[..., 1] % 200).astype(np.uint16)))
    save("grey.png", Image.fromarray(rgb[..., 1]))
    save("bits.png", Image.fromarray(rgb[..., 0] > 100))
    save("grey_alpha.png", Image.fromarray(np.stack([rgb[..., 0], rgb[..., 2]], -1), mode="LA"))
    save("rgb.png", Image.fromarray(rgb))
    save("rgba.png", Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), mode="RGBA"))
    palette = Image.fromarray(rgb).quantize(16)
    save("palette.png", palette)
    save("palette_transparent.png", palette, transparency=3)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    save("photo_exif6.jpg", Image.fromarray(rgb), quality=95, exif=_exif(6))
    save("float.tiff", Image.fromarray((_gradient()[..., 2] / 255).astype(np.float32), mode="F"))
    assert set(samples) == set(SAMPLES)
    return samples


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return _write_samples(tmp_path_factory.mktemp("decoding"))


def _cases():
    """(entry point, sample, kind) for every kind the entry point takes; `numpy` only where `np.asarray` of the
    opened file is its pixels (not palette indices, CMYK ink, a 2-channel grey + alpha or an EXIF-rotated grid)."""
    cases = []
    for entry_point in ENTRY_POINTS:
        for sample, numpy_allowed in SAMPLES.items():
            for kind in entry_point.kinds:
                if kind != "numpy" or numpy_allowed:
                    cases.append(pytest.param(entry_point, sample, kind, id=f"{entry_point.name}-{sample}-{kind}"))
    return cases


def _source(path: str, kind: str):
    if kind == "path":
        return path
    image = Image.open(path)
    image.load()
    return image if kind == "pil" else np.asarray(image)


def _reference(path: str) -> np.ndarray:
    return ENTRY_POINTS[0].decode(_source(path, "pil"))


def test_reference_values_are_hand_checked(samples):
    """The reference itself: 16-bit 32896 -> 128/255 (not saturated white), EXIF 6 turns 32 x 24 into 24 x 32."""
    grey = _reference(samples["grey16.png"])
    np.testing.assert_allclose(grey, 128 / 255, atol=1e-6)
    assert abs(float(grey[0, 0, 0]) - 0.502) < 5e-4
    rotated = _reference(samples["photo_exif6.jpg"])
    assert rotated.shape == (32, 24, 3)
    # The stored first column (x = 0: red 0) becomes the displayed first row after a clockwise turn.
    assert rotated[0, :, 0].max() < 0.05 and rotated[-1, :, 0].min() > 0.95


@pytest.mark.parametrize("entry_point, sample, kind", _cases())
def test_entry_point_matches_the_processor(entry_point, sample, kind, samples):
    expected = _reference(samples[sample])
    actual = entry_point.decode(_source(samples[sample], kind))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=entry_point.atol)
