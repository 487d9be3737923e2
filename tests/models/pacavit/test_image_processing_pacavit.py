"""transformers' own image-processor test suite (`ImageProcessingTestMixin`, `PostProcessSemanticSegmentationTestMixin`)
on both PaCa-ViT backends, as `tests/models/pacavit/test_image_processing_pacavit.py` would run inside transformers.
The mixins come from the installed version's source distribution (see tests/transformers_tests.py).

Skips: only the mixin's own, which Segformer gets for the same reasons:
- the `@slow` tests: `test_can_compile_torchvision_backend` and `test_pil_can_run_without_torchvision` (whose
  subprocess would also need `import paca_hf` to know the model type; a test below runs that check, with
  the import, on every run);
- `test_image_processor_preprocess_arguments`: no `_valid_processor_keys`;
- `test_override_instance_attributes_does_not_affect_other_instances`: `size` is a `SizeDict`, `image_mean` a tuple.
`test_backends_equivalence` downloads the COCO cats photo: it is replaced by the same assertions on a local
photo-like image. The segmentation-map tests Segformer runs on downloaded ADE20k samples use local images and maps.

Then PaCa-ViT's own processor tests (both backends): expected values are built independently of the processor,
directly with PIL / numpy / torch, or written by hand."""

import json
import math
import unittest

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.image_utils import SizeDict
from transformers_tests import load_transformers_tests

from paca_hf import PaCaViTImageProcessor, PaCaViTImageProcessorPil


load_transformers_tests()

from tests.test_image_processing_common import (  # noqa: E402
    ImageProcessingTester,
    ImageProcessingTestMixin,
    PostProcessSemanticSegmentationTestMixin,
)


class PaCaViTImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, batch_size=7, num_channels=3, min_resolution=30, max_resolution=80, **kwargs):
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("size", {"shortest_edge": 20})
        kwargs.setdefault("crop_pct", 0.9)
        kwargs.setdefault("do_center_crop", True)
        kwargs.setdefault("crop_size", {"height": 18, "width": 18})
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        kwargs.setdefault("do_reduce_labels", False)
        self.num_labels = 5
        super().__init__(
            parent,
            batch_size=batch_size,
            num_channels=num_channels,
            min_resolution=min_resolution,
            max_resolution=max_resolution,
            **kwargs,
        )

    def _get_image_processing_classes(self):
        # transformers reads these from its own auto mapping, which a model outside transformers is not part of;
        # `paca_hf` registers the same pair with `AutoImageProcessor.register`.
        return {"torchvision": PaCaViTImageProcessor, "pil": PaCaViTImageProcessorPil}

    def prepare_post_process_semantic_segmentation_inputs(self):
        from transformers.modeling_outputs import SemanticSegmenterOutput

        height, width = self.crop_size["height"], self.crop_size["width"]
        inputs = {
            "outputs": SemanticSegmenterOutput(logits=torch.randn(self.batch_size, self.num_labels, height, width))
        }
        return inputs, {"num_labels": self.num_labels, "height": height, "width": width}

    def prepare_semantic_segmentation_inputs(self, batched=False, seed=0):
        """Photo-like images with label maps that follow their content (local stand-ins for the ADE20k samples)."""
        rng = np.random.default_rng(seed)
        images, maps = [], []
        for height, width in [(64, 48), (50, 70)][: 2 if batched else 1]:
            y, x = np.mgrid[0:height, 0:width]
            labels = (x * 3 // width + 3 * (y * 2 // height)).astype(np.uint8)  # 6 blocks, labels 0..5
            pixels = np.stack([labels * 40 + 10, 255 - labels * 40, (x * 4) % 256], -1) + rng.integers(
                0, 8, (height, width, 3)
            )
            images.append(Image.fromarray(pixels.astype(np.uint8)))
            maps.append(Image.fromarray(labels))
        return (images, maps) if batched else (images[0], maps[0])


class PaCaViTImageProcessingTest(
    ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase
):
    image_processor_tester_class = PaCaViTImageProcessingTester

    def test_image_processor_properties(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processing = image_processing_class(**self.image_processor_dict)
            for name in (
                "do_resize",
                "size",
                "crop_pct",
                "do_center_crop",
                "crop_size",
                "do_normalize",
                "image_mean",
                "image_std",
                "do_reduce_labels",
                "post_process_semantic_segmentation",
            ):
                self.assertTrue(hasattr(image_processing, name), name)

    def test_image_processor_from_dict_with_kwargs(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processor = image_processing_class.from_dict(self.image_processor_dict)
            self.assertEqual(image_processor.size, {"shortest_edge": 20})
            self.assertEqual(image_processor.crop_size, {"height": 18, "width": 18})
            self.assertFalse(image_processor.do_reduce_labels)

            image_processor = image_processing_class.from_dict(
                self.image_processor_dict, size=42, crop_size=84, crop_pct=0.875, do_reduce_labels=True
            )
            self.assertEqual(image_processor.size, {"shortest_edge": 42})
            self.assertEqual(image_processor.crop_size, {"height": 84, "width": 84})
            self.assertEqual(image_processor.crop_pct, 0.875)
            self.assertTrue(image_processor.do_reduce_labels)

    def test_backends_equivalence(self):
        # The mixin's test on a local photo-like image instead of the COCO cats photo it downloads.
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:120, 0:160] / 160
        photo = np.stack([0.5 + 0.4 * np.sin(7 * x + c) * np.cos(5 * y - c) for c in range(3)], -1) * 255
        dummy_image = Image.fromarray(np.clip(photo + rng.normal(0, 5, photo.shape), 0, 255).astype(np.uint8))

        encodings = {}
        for backend_name, image_processing_class in self.image_processing_classes.items():
            image_processor = image_processing_class(**self.image_processor_dict)
            encodings[backend_name] = image_processor(dummy_image, return_tensors="pt")
        reference_backend, *other_backends = list(encodings)
        for backend_name in other_backends:
            self._assert_encodings_equivalence(
                encodings[reference_backend],
                encodings[backend_name],
                reference_backend,
                backend_name,
                atol=self.backend_equivalence_atol,
            )

    def test_call_segmentation_maps(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processing = image_processing_class(**self.image_processor_dict)
            image_inputs = self.image_processor_tester.prepare_image_inputs(equal_resolution=False, torchify=True)
            maps = [torch.zeros(image.shape[-2:]).long() for image in image_inputs]

            # Test not batched input
            encoding = image_processing(image_inputs[0], maps[0], return_tensors="pt")
            self.assertEqual(encoding["pixel_values"].shape, (1, self.image_processor_tester.num_channels, 18, 18))
            self.assertEqual(encoding["labels"].shape, (1, 18, 18))
            self.assertEqual(encoding["labels"].dtype, torch.long)
            self.assertTrue(encoding["labels"].min().item() >= 0)
            self.assertTrue(encoding["labels"].max().item() <= 255)

            # Test batched
            encoding = image_processing(image_inputs, maps, return_tensors="pt")
            self.assertEqual(
                encoding["pixel_values"].shape,
                (self.image_processor_tester.batch_size, self.image_processor_tester.num_channels, 18, 18),
            )
            self.assertEqual(encoding["labels"].shape, (self.image_processor_tester.batch_size, 18, 18))
            self.assertEqual(encoding["labels"].dtype, torch.long)

            # Test not batched input (PIL images)
            image, segmentation_map = self.image_processor_tester.prepare_semantic_segmentation_inputs()
            encoding = image_processing(image, segmentation_map, return_tensors="pt")
            self.assertEqual(encoding["pixel_values"].shape, (1, self.image_processor_tester.num_channels, 18, 18))
            self.assertEqual(encoding["labels"].shape, (1, 18, 18))
            self.assertEqual(set(encoding["labels"].unique().tolist()), {0, 1, 2, 3, 4, 5})

            # Test batched input (PIL images)
            images, segmentation_maps = self.image_processor_tester.prepare_semantic_segmentation_inputs(batched=True)
            encoding = image_processing(images, segmentation_maps, return_tensors="pt")
            self.assertEqual(encoding["pixel_values"].shape, (2, self.image_processor_tester.num_channels, 18, 18))
            self.assertEqual(encoding["labels"].shape, (2, 18, 18))
            self.assertTrue(encoding["labels"].max().item() <= 5)

    def test_reduce_labels(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processing = image_processing_class(**self.image_processor_dict)

            # The block maps hold labels 0..5, so 0 exists and is mapped to 255 ...
            image, segmentation_map = self.image_processor_tester.prepare_semantic_segmentation_inputs()
            encoding = image_processing(image, segmentation_map, return_tensors="pt")
            self.assertTrue(encoding["labels"].min().item() == 0)
            self.assertTrue(encoding["labels"].max().item() == 5)

            image_processing.do_reduce_labels = True
            encoding = image_processing(image, segmentation_map, return_tensors="pt")
            self.assertEqual(set(encoding["labels"].unique().tolist()), {0, 1, 2, 3, 4, 255})

    def test_backends_equivalence_segmentation_maps(self):
        images, segmentation_maps = self.image_processor_tester.prepare_semantic_segmentation_inputs(batched=True)
        encodings = {
            backend_name: image_processing_class(**{**self.image_processor_dict, "do_reduce_labels": True})(
                images, segmentation_maps, return_tensors="pt"
            )
            for backend_name, image_processing_class in self.image_processing_classes.items()
        }
        # Labels are integers: the mixin's comparison requires them to be equal, pixel values within tolerance.
        self._assert_encodings_equivalence(
            encodings["torchvision"], encodings["pil"], "torchvision", "pil", atol=self.backend_equivalence_atol
        )


MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# Bounds of a normalized value that came from a pixel in [0, 1].
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD
# Float / 16-bit inputs are resized in 32-bit float, uint8 ones in PIL's 8-bit mode, which rounds to an integer after
# the first (horizontal) and again after the second (vertical) pass. For an image where nothing is clipped the gap is
# at most 0.5 * sum|bicubic weights| + 0.5; for Keys' a=-0.5 kernel sum|w| <= 1.25 (reached at a half-pixel offset:
# 2 * 0.5625 + 2 * 0.0625), so <= 1.125 grey levels. 1.2 / 255 adds a margin for float32 noise and nothing more.
RESIZE_ROUNDING_ATOL = 1.2 / 255


BACKENDS = {"torchvision": PaCaViTImageProcessor, "pil": PaCaViTImageProcessorPil}


@pytest.fixture(scope="module", params=list(BACKENDS))
def processor(request):
    """Each backend with its defaults: the tests using it hold for both."""
    return BACKENDS[request.param]()


def rng(seed=0):
    return np.random.default_rng(seed)


def smooth_rgb(height, width, seed=0):
    """Low-frequency uint8 image in [20, 235] (bicubic never overshoots past 0 / 255 on it, so nothing is clipped)."""
    r = rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = []
    for _ in range(3):
        fy, fx, phase = r.uniform(0.5, 2.0), r.uniform(0.5, 2.0), r.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (fy * y / height + fx * x / width) + phase)
        channels.append(127.5 + 107.5 * wave)
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def noise_rgb(height, width, seed=0):
    return rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def run(processor, images, **kwargs):
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


def reference(image: Image.Image, resized_wh, crop_left_top, crop=224, backend="pil"):
    """The authors' eval transform done by hand: bicubic resize (PIL's, or torchvision's antialiased one for the
    torchvision backend), crop box, /255, ImageNet normalisation."""
    if backend == "pil":
        resized = np.asarray(image.resize(resized_wh, Image.BICUBIC))
    else:
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
        resized = tvF.resize(
            tensor, list(resized_wh[::-1]), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True
        )
        resized = resized.permute(1, 2, 0).numpy()
    left, top = crop_left_top
    cropped = resized[top : top + crop, left : left + crop].astype(np.float64) / 255.0
    return ((cropped - MEAN) / STD).transpose(2, 0, 1)[None]


# ----------------------------------------------------------------------------- default transform


def test_defaults_match_timm_eval_transform():
    p = PaCaViTImageProcessor()
    assert p.crop_pct == 0.9 and p.resample == Image.BICUBIC
    assert dict(p.size) == {"shortest_edge": 224} and dict(p.crop_size) == {"height": 224, "width": 224}
    assert tuple(p.image_mean) == (0.485, 0.456, 0.406) and tuple(p.image_std) == (0.229, 0.224, 0.225)
    assert p.do_reduce_labels is False and p.model_input_names == ["pixel_values"]


@pytest.mark.parametrize(
    "width, height, resized_wh, left_top",
    [
        # floor(224 / 0.9) = 248 for the short side; long side int(248 * 338 / 250) = 335.
        # (335 - 224) / 2 = 55.5: torchvision / timm round it (banker's) to 56, a floor would give 55.
        (338, 250, (335, 248), (56, 12)),
        (250, 338, (248, 335), (12, 56)),
        # int(248 * 640 / 480) = int(330.67) = 330 (truncated); (330 - 224) / 2 = 53 exactly.
        (640, 480, (330, 248), (53, 12)),
    ],
)
def test_default_transform_against_hand_built_reference(processor, width, height, resized_wh, left_top):
    assert math.floor(224 / 0.9) == 248
    image = Image.fromarray(noise_rgb(height, width, seed=width))
    out = processor(image, return_tensors="pt")["pixel_values"]
    assert tuple(out.shape) == (1, 3, 224, 224)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(
        out.numpy(), reference(image, resized_wh, left_top, backend=processor.backend), rtol=0, atol=1e-5
    )


def test_return_tensors_np_and_list(processor):
    image = Image.fromarray(noise_rgb(100, 130))
    as_np = processor(image, return_tensors="np")["pixel_values"]
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.float32 and as_np.shape == (1, 3, 224, 224)
    as_list = processor(image)["pixel_values"]
    assert len(as_list) == 1
    np.testing.assert_array_equal(as_list[0], as_np[0])


def test_crop_pct_one_resizes_short_side_to_crop(processor):
    image = Image.fromarray(noise_rgb(200, 300, seed=3))
    out = run(processor, image, crop_pct=1.0)
    # 200x300 (h x w) -> 224 x 336, crop left (336 - 224) / 2 = 56, top 0.
    np.testing.assert_allclose(
        out, reference(image, (336, 224), (56, 0), backend=processor.backend), rtol=0, atol=1e-5
    )


def test_per_call_and_constructor_overrides(processor):
    image = Image.fromarray(noise_rgb(200, 300, seed=4))
    # Without the crop, crop_pct has no role: the short side goes straight to shortest_edge (aspect kept).
    assert run(processor, image, do_center_crop=False).shape == (1, 3, 224, 336)
    assert run(processor, image, do_center_crop=False, size={"height": 64, "width": 96}).shape == (1, 3, 64, 96)
    assert run(processor, image, do_center_crop=False, size=100).shape == (1, 3, 100, 150)
    assert run(processor, image, do_resize=False, do_center_crop=False).shape == (1, 3, 200, 300)
    custom = PaCaViTImageProcessor(do_center_crop=False, size={"height": 128, "width": 160})
    assert run(custom, image).shape == (1, 3, 128, 160)
    # The processor object itself is unchanged by per-call overrides.
    assert run(processor, image).shape == (1, 3, 224, 224)


def test_no_rescale_no_normalize_keeps_raw_pixels(processor):
    array = noise_rgb(50, 60)
    raw = {"do_resize": False, "do_center_crop": False, "do_rescale": False, "do_normalize": False}
    out = run(processor, Image.fromarray(array), **raw)
    np.testing.assert_array_equal(out[0], array.transpose(2, 0, 1).astype(np.float32))


def test_center_crop_pads_small_images_with_zeros(processor):
    array = np.full((10, 20, 3), 200, np.uint8)
    raw = {"do_resize": False, "do_rescale": False, "do_normalize": False}
    out = run(processor, array, crop_size={"height": 14, "width": 16}, **raw)
    expected = np.zeros((14, 16, 3), np.float32)
    expected[2:12, :] = (
        200  # height 10 -> 14: pad (14 - 10) // 2 = 2 rows on top; width 20 -> 16: crop 2 from the left
    )
    np.testing.assert_array_equal(out[0], expected.transpose(2, 0, 1))


# ----------------------------------------------------------------------------- PIL modes


PIL_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F"]


def pil_image_in_mode(mode, height=90, width=120, seed=0):
    rgb = Image.fromarray(noise_rgb(height, width, seed))
    if mode == "I;16":
        return Image.fromarray(rng(seed).integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng(seed).integers(0, 65536, (height, width), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng(seed).random((height, width), dtype=np.float32))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", PIL_MODES)
def test_every_pil_mode_gives_three_finite_channels(processor, mode):
    image = pil_image_in_mode(mode)
    assert image.mode == mode
    out = processor(image, return_tensors="pt")["pixel_values"]
    assert tuple(out.shape) == (1, 3, 224, 224) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    for c in range(3):  # every value comes from a pixel in [0, 1]
        assert LOW[c] - 1e-5 <= out[0, c].min() and out[0, c].max() <= HIGH[c] + 1e-5


def test_grey_gives_three_identical_channels(processor):
    out = run(processor, Image.fromarray(noise_rgb(80, 100)[..., 0]), do_normalize=False)
    np.testing.assert_array_equal(out[0, 0], out[0, 1])
    np.testing.assert_array_equal(out[0, 0], out[0, 2])


def test_palette_image_equals_its_rgb(processor):
    image = pil_image_in_mode("P")
    np.testing.assert_array_equal(run(processor, image), run(processor, image.convert("RGB")))


def test_sixteen_bit_white_equals_eight_bit_white(processor):
    white16 = Image.fromarray(np.full((70, 90), 65535, np.uint16))
    assert white16.mode == "I;16"
    white8 = Image.new("L", (90, 70), 255)
    np.testing.assert_allclose(run(processor, white16), run(processor, white8), rtol=0, atol=1e-5)
    white_i = Image.fromarray(np.full((70, 90), 65535, np.int32))
    assert white_i.mode == "I"
    np.testing.assert_allclose(run(processor, white_i), run(processor, white8), rtol=0, atol=1e-5)


def test_sixteen_bit_is_divided_by_257(processor):
    grey8 = smooth_rgb(90, 120)[..., 0]
    grey16 = Image.fromarray(grey8.astype(np.uint16) * 257)  # v * 257 / 257 == v
    kwargs = {"do_normalize": False}
    np.testing.assert_allclose(
        run(processor, grey16, **kwargs),
        run(processor, Image.fromarray(grey8), **kwargs),
        rtol=0,
        atol=RESIZE_ROUNDING_ATOL,
    )
    # Without resizing there is no rounding at all.
    kwargs.update(do_resize=False, do_center_crop=False)
    np.testing.assert_allclose(
        run(processor, grey16, **kwargs), run(processor, Image.fromarray(grey8), **kwargs), rtol=0, atol=1e-6
    )


def test_rgba_drops_alpha(processor):
    array = np.concatenate([noise_rgb(60, 80), rng(1).integers(0, 256, (60, 80, 1), dtype=np.uint8)], axis=-1)
    with_alpha = Image.fromarray(array)
    assert with_alpha.mode == "RGBA"
    np.testing.assert_array_equal(run(processor, with_alpha), run(processor, Image.fromarray(array[..., :3])))
    # Same for a 4-channel array.
    np.testing.assert_array_equal(run(processor, array), run(processor, array[..., :3]))


def test_float_pil_image_equals_uint8_over_255(processor):
    grey8 = smooth_rgb(90, 120)[..., 1]
    as_f = Image.fromarray(grey8.astype(np.float32) / 255)
    assert as_f.mode == "F"
    np.testing.assert_allclose(
        run(processor, as_f, do_normalize=False),
        run(processor, Image.fromarray(grey8), do_normalize=False),
        rtol=0,
        atol=RESIZE_ROUNDING_ATOL,
    )


# ----------------------------------------------------------------------------- arrays and tensors


def test_hwc_chw_and_torch_agree(processor):
    hwc = noise_rgb(90, 120, seed=7)
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    expected = run(processor, Image.fromarray(hwc))
    np.testing.assert_array_equal(run(processor, hwc), expected)
    np.testing.assert_array_equal(run(processor, chw), expected)
    np.testing.assert_array_equal(run(processor, torch.from_numpy(chw)), expected)
    # 2-D and single-channel arrays are grey images.
    grey = hwc[..., 0]
    expected_grey = run(processor, Image.fromarray(grey))
    np.testing.assert_array_equal(run(processor, grey), expected_grey)
    np.testing.assert_array_equal(run(processor, grey[None]), expected_grey)
    np.testing.assert_array_equal(run(processor, grey[..., None]), expected_grey)
    np.testing.assert_array_equal(run(processor, torch.from_numpy(grey.copy())), expected_grey)


def test_input_data_format_resolves_ambiguous_layout(processor):
    hwc = noise_rgb(3, 40, seed=2)  # (3, 40, 3): both the first and the last axis could be channels
    expected = run(processor, Image.fromarray(hwc))
    np.testing.assert_array_equal(run(processor, hwc, input_data_format="channels_last"), expected)


def test_uint16_arrays_are_divided_by_257(processor):
    rgb8 = smooth_rgb(90, 120, seed=5)
    rgb16 = rgb8.astype(np.uint16) * 257
    kwargs = {"do_normalize": False}
    np.testing.assert_allclose(
        run(processor, rgb16, **kwargs), run(processor, rgb8, **kwargs), rtol=0, atol=RESIZE_ROUNDING_ATOL
    )
    np.testing.assert_allclose(
        run(processor, np.full((50, 60, 3), 65535, np.uint16)),
        run(processor, np.full((50, 60, 3), 255, np.uint8)),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_arrays_in_unit_range_equal_uint8_over_255(processor, dtype):
    rgb8 = smooth_rgb(90, 120, seed=6)
    as_float = (rgb8 / 255.0).astype(dtype)
    raw = {"do_normalize": False}
    got = run(processor, as_float, **raw)
    want = run(processor, rgb8, **raw)
    # float16 stores v / 255 with a relative error of 2**-11 (<= 0.13 grey levels), hence the small extra margin.
    atol = RESIZE_ROUNDING_ATOL + (1 / 255 / 4 if dtype == np.float16 else 0)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    # The differences are rounding noise, not a bias (a wrong scale or offset would shift the mean).
    assert abs((got - want).mean()) < 0.05 / 255
    # Float input counts as already rescaled: do_rescale does not divide it by 255 again.
    np.testing.assert_array_equal(run(processor, as_float, do_rescale=False, **raw), got)
    # Normalised outputs agree too (the difference is scaled by 1 / std).
    np.testing.assert_allclose(
        run(processor, as_float), run(processor, rgb8), rtol=0, atol=RESIZE_ROUNDING_ATOL / STD.min() + 1e-6
    )


def test_float_torch_tensor_and_bool_array(processor):
    rgb8 = smooth_rgb(64, 64, seed=8)
    tensor = torch.from_numpy(rgb8.transpose(2, 0, 1).copy()).to(torch.bfloat16) / 255
    out = run(processor, tensor)
    assert out.shape == (1, 3, 224, 224) and np.isfinite(out).all()
    mask = rng(3).random((40, 50)) > 0.5
    np.testing.assert_array_equal(run(processor, mask), run(processor, mask.astype(np.uint8) * 255))


def test_int64_array_in_byte_range_equals_uint8(processor):
    rgb8 = noise_rgb(50, 70)
    np.testing.assert_array_equal(run(processor, rgb8.astype(np.int64)), run(processor, rgb8))


def test_mixed_list_batches_to_same_shape(processor):
    images = [
        Image.fromarray(noise_rgb(50, 100, seed=1)),
        noise_rgb(300, 200, seed=2),
        torch.from_numpy(noise_rgb(64, 64, seed=3).transpose(2, 0, 1).copy()),
        Image.fromarray(noise_rgb(31, 17, seed=4)[..., 0]),
    ]
    out = processor(images, return_tensors="pt")["pixel_values"]
    assert tuple(out.shape) == (4, 3, 224, 224)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(out[i].numpy(), run(processor, image)[0])
    # A rank-4 array is a batch; a nested list is flattened.
    batch = np.stack([noise_rgb(40, 60, seed=s) for s in range(3)])
    assert run(processor, batch).shape == (3, 3, 224, 224)
    assert run(processor, [[images[0]], [images[1], images[2]]]).shape == (3, 3, 224, 224)


def test_same_shape_batch_equals_one_by_one(processor):
    # The torchvision backend resizes images of one shape and dtype as one batch; uint8 and float inputs of the
    # same shape go to different batches (only the uint8 ones are rescaled).
    images = [noise_rgb(60, 80, seed=s) for s in range(3)] + [noise_rgb(60, 80, seed=9) / 255.0]
    out = run(processor, images)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(out[i], run(processor, image)[0])


# ----------------------------------------------------------------------------- refused inputs


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((32, 32, 2), np.uint8), "expected 1, 3 or 4 channels, got 2"),
        (np.zeros((5, 32, 32), np.uint8), "expected 1, 3 or 4 channels, got 5"),
        (torch.zeros(5, 32, 32), "expected 1, 3 or 4 channels, got 5"),
        (np.zeros((32,), np.uint8), "rank 1"),
        (np.zeros((2, 3, 4, 5, 6), np.uint8), "rank 5"),
        ([np.zeros((1, 3, 8, 8), np.uint8)], "rank 4"),
        (np.zeros((0, 0), np.uint8), "empty"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (Image.new("RGB", (0, 5)), "empty"),
        (np.full((8, 8, 3), "a"), "dtype"),
        (np.full((8, 8, 3), None, dtype=object), "dtype"),
        (np.full((8, 8, 3), 1 + 1j), "dtype"),
        (np.full((8, 8), np.nan, np.float32), "NaN"),
        (np.full((8, 8, 3), np.inf), "NaN or infinite"),
        (np.full((8, 8, 3), 200.0), r"\[0, 1\]"),
        (np.full((8, 8, 3), -0.5), r"\[0, 1\]"),
        (np.full((8, 8, 3), 300, np.int32), r"\[0, 255\]"),
        (np.full((8, 8, 3), -1, np.int8), r"\[0, 255\]"),
        (Image.fromarray(np.full((8, 8), -5, np.int32)), "16-bit"),
        (Image.new("La", (8, 8)), "cannot convert PIL mode 'La'"),
        ([], "no images"),
        (12, "unsupported image type"),
        ({"pixel_values": 1}, "unsupported image type"),
    ],
)
def test_bad_inputs_raise_value_error(processor, bad, match):
    with pytest.raises(ValueError, match=match):
        processor(bad, return_tensors="np")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"crop_pct": 0.0}, "crop_pct"),
        ({"crop_pct": -1.0}, "crop_pct"),
        ({"size": {"longest_edge": 100}}, "size"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),
    ],
)
def test_bad_settings_raise_value_error(processor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        processor(noise_rgb(20, 20), return_tensors="np", **kwargs)


# ----------------------------------------------------------------------------- property-based


@st.composite
def valid_image(draw):
    height = draw(st.integers(1, 300))
    width = draw(st.integers(1, 300))
    kind = draw(st.sampled_from(["pil", "numpy", "torch"]))
    seed = draw(st.integers(0, 2**16))
    r = rng(seed)
    if kind == "pil":
        mode = draw(st.sampled_from(PIL_MODES))
        return pil_image_in_mode(mode, height, width, seed)
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    layout = draw(st.sampled_from(["first", "last"]))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32", "float64", "bool", "int64"]))
    if channels is None:
        shape = (height, width)
    else:
        shape = (channels, height, width) if layout == "first" else (height, width, channels)
    if dtype == "uint8":
        array = r.integers(0, 256, shape, dtype=np.uint8)
    elif dtype == "uint16":
        array = r.integers(0, 65536, shape, dtype=np.uint16)
    elif dtype == "int64":
        array = r.integers(0, 256, shape, dtype=np.int64)
    elif dtype == "bool":
        array = r.random(shape) > 0.5
    else:
        array = r.random(shape).astype(dtype)
    return torch.from_numpy(array) if kind == "torch" else array


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(images=st.lists(valid_image(), min_size=1, max_size=3))
def test_property_valid_inputs_always_give_normalised_batch(processor, images):
    out = run(processor, images)
    assert out.shape == (len(images), 3, 224, 224) and out.dtype == np.float32
    assert np.isfinite(out).all()
    for c in range(3):
        assert LOW[c] - 1e-5 <= out[:, c].min() and out[:, c].max() <= HIGH[c] + 1e-5


@st.composite
def any_array(draw):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(0, 64), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(["uint8", "uint16", "int32", "float32", "float64"]))
    special = draw(st.sampled_from([None, "nan", "big", "negative"]))
    r = rng(draw(st.integers(0, 2**16)))
    if dtype.startswith("float"):
        array = r.random(shape).astype(dtype)
    else:
        array = r.integers(0, 256 if dtype != "uint16" else 65536, shape).astype(dtype)
    if array.size and special == "nan" and dtype.startswith("float"):
        array.flat[0] = np.nan
    elif array.size and special == "big" and dtype not in ("uint8", "uint16"):
        array.flat[0] = 70000  # beyond 16 bits for int32, beyond [0, 1] for floats
    elif array.size and special == "negative" and dtype not in ("uint8", "uint16"):
        array.flat[0] = -3
    return array


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=any_array(), crop_pct=st.floats(0.5, 1.0), crop=st.integers(8, 64))
def test_property_arbitrary_arrays_give_valid_output_or_value_error(processor, array, crop_pct, crop):
    try:
        out = run(processor, array, crop_pct=crop_pct, crop_size={"height": crop, "width": crop})
    except ValueError as error:
        assert str(error)  # refused with a message
        return
    n = array.shape[0] if array.ndim == 4 else 1
    assert out.shape == (n, 3, crop, crop) and np.isfinite(out).all()
    for c in range(3):
        assert LOW[c] - 1e-5 <= out[:, c].min() and out[:, c].max() <= HIGH[c] + 1e-5


# ----------------------------------------------------------------------------- segmentation


def test_reduce_labels_hand_computed(processor):
    label = np.array([[0, 1, 2], [255, 150, 3]], dtype=np.uint8)
    expected = np.array([[255, 0, 1], [255, 149, 2]], dtype=np.int64)
    np.testing.assert_array_equal(PaCaViTImageProcessor.reduce_label(label), expected)
    geometry = {"do_resize": False, "do_center_crop": False, "return_tensors": "np"}
    image = noise_rgb(2, 3)
    out = processor(image, segmentation_maps=label, do_reduce_labels=True, **geometry)
    np.testing.assert_array_equal(out["labels"], expected[None])
    assert out["labels"].dtype == np.int64
    # Default: labels untouched; constructor setting works too.
    np.testing.assert_array_equal(processor(image, segmentation_maps=label, **geometry)["labels"], label[None])
    ade = PaCaViTImageProcessor(do_reduce_labels=True)
    np.testing.assert_array_equal(ade(image, segmentation_maps=label, **geometry)["labels"], expected[None])
    # The map given by the caller is not modified in place.
    np.testing.assert_array_equal(label, [[0, 1, 2], [255, 150, 3]])


def test_segmentation_map_nearest_keeps_split_and_label_set(processor):
    seg = np.full((40, 100), 3, np.uint8)
    seg[:, 50:] = 7
    image = noise_rgb(40, 100)
    out = processor(
        image, segmentation_maps=seg, do_center_crop=False, size={"shortest_edge": 80}, return_tensors="pt"
    )
    labels = out["labels"]
    assert tuple(out["pixel_values"].shape) == (1, 3, 80, 200)
    assert tuple(labels.shape) == (1, 80, 200) and labels.dtype == torch.int64
    assert (labels[0, :, :100] == 3).all() and (labels[0, :, 100:] == 7).all()


def test_segmentation_labels_stay_in_label_set():
    p = PaCaViTImageProcessor()
    label_set = np.array([0, 5, 17, 150, 255, 1000])  # 1000: more than 8 bits must survive the resize
    seg = rng(4).choice(label_set, size=(97, 131)).astype(np.int64)
    out = p(noise_rgb(97, 131), segmentation_maps=seg, return_tensors="np")
    assert out["labels"].shape == (1, 224, 224)
    assert set(np.unique(out["labels"])) <= set(label_set.tolist())
    assert len(np.unique(out["labels"])) == len(label_set)


def test_segmentation_map_stays_aligned_with_image_through_resize_and_crop(processor):
    height, width, split = 250, 338, 100  # asymmetric split: a wrong crop offset would move it
    image = np.zeros((height, width, 3), np.uint8)
    image[:, split:] = 255
    seg = np.zeros((height, width), np.uint8)
    seg[:, split:] = 1
    out = processor(image, segmentation_maps=seg, return_tensors="np", do_normalize=False)
    labels, pixels = out["labels"][0], out["pixel_values"][0, 0]
    # By hand: resize 338 -> 335, crop left 56. Output column x samples source column (x + 0.5) * 338 / 335 (nearest:
    # its floor; bicubic: its neighbourhood), which reaches the edge at 100 when x >= 100 * 335 / 338 - 0.5 = 98.6,
    # i.e. resized column 99 = cropped column 43, for the labels and for the image alike.
    assert (labels[:, :43] == 0).all() and (labels[:, 43:] == 1).all()
    np.testing.assert_array_equal(labels, (pixels > 0.5).astype(np.int64))


def test_segmentation_map_input_types_agree(processor):
    seg = rng(5).integers(0, 20, (60, 80)).astype(np.uint8)
    image = noise_rgb(60, 80)
    expected = processor(image, segmentation_maps=seg, return_tensors="np")["labels"]
    palette = Image.frombytes("P", (80, 60), seg.tobytes())  # palette indices are the labels
    palette.putpalette(rng(6).integers(0, 256, 768, dtype=np.uint8).tolist())
    for variant in [
        Image.fromarray(seg),
        Image.fromarray(seg.astype(np.int32)),
        palette,
        torch.from_numpy(seg.astype(np.int64)),
        seg[None],
        [seg],
    ]:
        got = processor(image, segmentation_maps=variant, return_tensors="np")["labels"]
        np.testing.assert_array_equal(got, expected)


def test_segmentation_batch_and_padding(processor):
    images = [noise_rgb(30, 40, seed=1), noise_rgb(50, 20, seed=2)]
    maps = [np.ones((30, 40), np.uint8), np.ones((50, 20), np.uint8)]
    out = processor(images, segmentation_maps=maps, return_tensors="pt", do_resize=False, crop_size=36)
    assert tuple(out["pixel_values"].shape) == (2, 3, 36, 36) and tuple(out["labels"].shape) == (2, 36, 36)
    # First map is 30 rows high: 3 rows of padding above and below, filled with the ignore label 255.
    assert (out["labels"][0, :3] == 255).all() and (out["labels"][0, 3:33] == 1).all()
    assert (out["labels"][0, 33:] == 255).all()


@pytest.mark.parametrize(
    "maps, match",
    [
        ([np.zeros((30, 40), np.uint8)] * 2, "1 images but 2 segmentation maps"),
        (np.zeros((31, 40), np.uint8), "has size"),
        ([np.zeros((30, 40, 3), np.uint8)], "rank 2"),
        (np.zeros((2, 30, 40), np.uint8), "1 images but 2 segmentation maps"),  # rank 3 = a batch of maps
        (Image.new("RGB", (40, 30)), "single-channel"),
        (np.full((30, 40), 0.5), "integer labels"),
        (np.full((30, 40), "x"), "dtype"),
    ],
)
def test_bad_segmentation_maps_raise_value_error(processor, maps, match):
    with pytest.raises(ValueError, match=match):
        processor(noise_rgb(30, 40), segmentation_maps=maps)


# ----------------------------------------------------------------------------- post-processing


class Output:
    def __init__(self, logits):
        self.logits = logits


def test_post_process_without_target_sizes_is_plain_argmax(processor):
    # logits[b, class, y, x]; the winning class is written by hand in `expected`.
    logits = torch.tensor(
        [
            [[[5.0, 0.0], [0.0, 1.0]], [[1.0, 3.0], [0.0, 0.0]], [[0.0, 2.0], [9.0, 0.5]]],
            [[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]],
        ]
    )
    expected = [torch.tensor([[0, 1], [2, 0]]), torch.tensor([[1, 2], [1, 1]])]
    maps = processor.post_process_semantic_segmentation(Output(logits))
    assert len(maps) == 2
    for got, want in zip(maps, expected):
        assert got.dtype == torch.int64
        assert torch.equal(got, want)


def test_post_process_with_target_sizes(processor):
    logits = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    sizes = [(7, 11), (2, 3)]
    for target_sizes in (sizes, torch.tensor(sizes)):
        maps = processor.post_process_semantic_segmentation(Output(logits), target_sizes=target_sizes)
        for i, (height, width) in enumerate(sizes):
            upsampled = F.interpolate(logits[i : i + 1], size=(height, width), mode="bilinear", align_corners=False)
            want = upsampled[0].argmax(0)
            assert tuple(maps[i].shape) == (height, width) and maps[i].dtype == torch.int64
            assert torch.equal(maps[i], want)
    # Upsampling by an integer factor keeps the hand-computable case: a class winning everywhere stays the winner.
    flat = torch.zeros(1, 3, 2, 2)
    flat[0, 2] = 1.0
    assert torch.equal(processor.post_process_semantic_segmentation(Output(flat), [(4, 6)])[0], torch.full((4, 6), 2))
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(Output(logits), target_sizes=[(4, 4)])


@pytest.mark.parametrize(
    "target_sizes, match",
    [
        ((32, 20), r"target_sizes\[0\] is 32; each entry must be one \(height, width\) pair"),
        ([(32, 20), (0, 5)], r"target_sizes\[1\] .* positive integers"),
        ([(32, 20), (4, -1)], r"target_sizes\[1\] .* positive integers"),
        ([(32, 20), (4, 2.5)], r"target_sizes\[1\] .* positive integers"),
        ([(32, 20), (4, 5, 6)], r"target_sizes\[1\] .* one \(height, width\) pair"),
        (torch.tensor([[32, 20], [0, 5]]), r"target_sizes\[1\] .* positive integers"),
    ],
)
def test_post_process_rejects_malformed_target_sizes(processor, target_sizes, match):
    logits = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match=match):
        processor.post_process_semantic_segmentation(Output(logits), target_sizes=target_sizes)


def test_image_segmentation_pipeline_uses_the_processor():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, pipeline

    torch.manual_seed(0)
    id2label = {0: "a", 1: "b", 2: "c"}
    config = SegformerConfig(
        num_encoder_blocks=1,
        depths=[1],
        sr_ratios=[1],
        hidden_sizes=[8],
        patch_sizes=[7],
        strides=[4],
        num_attention_heads=[1],
        mlp_ratios=[1],
        decoder_hidden_size=8,
        num_labels=3,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = SegformerForSemanticSegmentation(config).eval()
    seg_processor = PaCaViTImageProcessor(do_center_crop=False, size={"height": 64, "width": 64})
    segmenter = pipeline("image-segmentation", model=model, image_processor=seg_processor)
    result = segmenter(Image.fromarray(noise_rgb(50, 70)))
    assert result and all(item["mask"].size == (70, 50) for item in result)
    assert {item["label"] for item in result} <= set(id2label.values())


# ----------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path):
    settings_ = {
        "crop_pct": 0.95,
        "do_reduce_labels": True,
        "size": {"height": 96, "width": 128},
        "do_center_crop": False,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        "resample": Image.BILINEAR,
    }
    original = PaCaViTImageProcessor(**settings_)
    original.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "PaCaViTImageProcessor"
    assert saved["crop_pct"] == 0.95 and saved["do_reduce_labels"] is True and saved["resample"] == 2
    assert saved["size"] == {"height": 96, "width": 128} and saved["do_center_crop"] is False

    loaded = PaCaViTImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == original.to_dict()
    assert loaded.crop_pct == 0.95 and loaded.do_reduce_labels is True and loaded.do_center_crop is False
    image, seg = noise_rgb(70, 90), rng(2).integers(0, 10, (70, 90))
    a = original(image, segmentation_maps=seg, return_tensors="np")
    b = loaded(image, segmentation_maps=seg, return_tensors="np")
    assert a["pixel_values"].shape == (1, 3, 96, 128)
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
    np.testing.assert_array_equal(a["labels"], b["labels"])

    # The defaults also survive a round trip, and from_pretrained keyword overrides apply.
    PaCaViTImageProcessor().save_pretrained(tmp_path / "default")
    default = PaCaViTImageProcessor.from_pretrained(tmp_path / "default", crop_pct=0.875)
    assert default.crop_pct == 0.875 and dict(default.size) == {"shortest_edge": 224}


# ----------------------------------------------------------------------------- channels kept (do_convert_rgb=False)


def test_four_channels_with_four_value_mean_and_std(processor):
    array = noise_rgb(30, 40, seed=7)
    rgbn = np.concatenate([array, array[..., :1] // 2], axis=-1)  # e.g. RGB + near infrared
    mean, std = [0.5, 0.25, 0.0, 0.1], [0.5, 0.5, 1.0, 0.2]
    geometry = {"do_resize": False, "do_center_crop": False}
    out = run(processor, rgbn, do_convert_rgb=False, image_mean=mean, image_std=std, **geometry)
    expected = (rgbn / 255.0 - np.array(mean)) / np.array(std)
    assert out.shape == (1, 4, 30, 40)
    np.testing.assert_allclose(out[0], expected.transpose(2, 0, 1), rtol=0, atol=1e-5)
    # With the geometry on, the 4th channel is resized like the others (not treated as alpha).
    resized = run(processor, rgbn, do_convert_rgb=False, image_mean=mean, image_std=std, crop_size=16, size=20)
    assert resized.shape == (1, 4, 16, 16)
    alone = run(processor, rgbn[..., 3], do_convert_rgb=False, image_mean=0.1, image_std=0.2, crop_size=16, size=20)
    assert alone.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(resized[0, 3], alone[0, 0], rtol=0, atol=1e-6)
    # do_convert_rgb=True (the default) drops the 4th channel and needs 3 values.
    assert run(processor, rgbn, **geometry).shape == (1, 3, 30, 40)
    with pytest.raises(ValueError, match="4 values"):
        run(processor, rgbn, do_convert_rgb=False, **geometry)
    with pytest.raises(ValueError, match="3 values"):
        run(processor, rgbn, image_mean=mean, image_std=std, **geometry)


# ----------------------------------------------------------------------------- both backends


def photo_like(height=375, width=500, seed=0):
    """A photo-like uint8 image: smooth shading, a few hard edges and sensor noise (JPEG-like statistics)."""
    r = rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([0.5 + 0.35 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], axis=-1)
    base[(x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.04] *= 0.4  # a dark disc
    base[:, int(width * 0.2) : int(width * 0.25)] = [0.9, 0.85, 0.2]  # a bright vertical bar
    noisy = base * 255 + r.normal(0, 6, base.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def test_backends_agree_on_a_photo_like_image():
    tv, pil = PaCaViTImageProcessor(), PaCaViTImageProcessorPil()
    images = [Image.fromarray(photo_like()), photo_like(240, 180, seed=1), photo_like(97, 131, seed=2) / 255.0]
    labels = [
        rng(s).integers(0, 150, image.shape[:2] if isinstance(image, np.ndarray) else image.size[::-1])
        for s, image in enumerate(images)
    ]
    raw = {"do_normalize": False, "return_tensors": "pt"}
    a = tv(images, segmentation_maps=labels, **raw)
    b = pil(images, segmentation_maps=labels, **raw)
    assert a["pixel_values"].shape == b["pixel_values"].shape == (3, 3, 224, 224)
    # Pixel values in [0, 1]: torchvision's and PIL's bicubic kernels differ by at most one 8-bit level.
    assert (a["pixel_values"] - b["pixel_values"]).abs().max() <= 1e-2
    assert (a["pixel_values"] - b["pixel_values"]).abs().mean() <= 1e-3
    assert torch.equal(a["labels"], b["labels"])  # nearest neighbour: the same source pixels
    normalized = tv(images, return_tensors="pt")["pixel_values"] - pil(images, return_tensors="pt")["pixel_values"]
    assert normalized.abs().max() <= 1 / 255 / min(STD) + 1e-5


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 400),
    width=st.integers(1, 400),
    new_height=st.integers(1, 400),
    new_width=st.integers(1, 400),
)
def test_label_resize_picks_the_same_pixels_in_both_backends(height, width, new_height, new_width):
    labels = np.arange(height * width, dtype=np.int64).reshape(1, height, width)  # every pixel its own label
    size = SizeDict(height=new_height, width=new_width)
    tv = PaCaViTImageProcessor().resize_labels(torch.from_numpy(labels), size).numpy()
    pil = PaCaViTImageProcessorPil().resize_labels(labels, size)
    np.testing.assert_array_equal(tv, pil)
    by_pil = Image.fromarray(labels[0].astype(np.int32)).resize((new_width, new_height), Image.NEAREST)
    np.testing.assert_array_equal(pil[0], np.asarray(by_pil))  # the authors' rule: PIL's own nearest neighbour


def test_saved_configs_load_with_either_backend(tmp_path):
    from transformers import AutoImageProcessor

    import paca_hf  # noqa: F401  (registers the processors)

    for cls in (PaCaViTImageProcessor, PaCaViTImageProcessorPil):
        folder = tmp_path / cls.__name__
        cls(crop_pct=0.95, size=160, crop_size=144).save_pretrained(folder)
        saved = json.loads((folder / "preprocessor_config.json").read_text())
        assert saved["image_processor_type"] == "PaCaViTImageProcessor"  # the same file from both backends
        assert type(AutoImageProcessor.from_pretrained(folder)) is PaCaViTImageProcessor  # torchvision by default
        for backend, expected in (("torchvision", PaCaViTImageProcessor), ("pil", PaCaViTImageProcessorPil)):
            loaded = AutoImageProcessor.from_pretrained(folder, backend=backend)
            assert type(loaded) is expected
            assert loaded.crop_pct == 0.95 and dict(loaded.size) == {"shortest_edge": 160}
        for other in (PaCaViTImageProcessor, PaCaViTImageProcessorPil):
            assert other.from_pretrained(folder).to_dict() == other(crop_pct=0.95, size=160, crop_size=144).to_dict()


def test_pil_backend_runs_with_torchvision_blocked(tmp_path):
    """The package imports and its PIL backend works where torchvision is missing (as transformers' own)."""
    import subprocess
    import sys
    import textwrap

    image = photo_like(60, 80)
    np.save(tmp_path / "image.npy", image)
    PaCaViTImageProcessorPil(size=40, crop_size=32).save_pretrained(tmp_path)
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torchvision"] = None  # `import torchvision` raises ImportError
        import numpy as np
        from transformers import AutoImageProcessor
        import paca_hf

        processor = AutoImageProcessor.from_pretrained(sys.argv[1])
        assert type(processor).__name__ == "PaCaViTImageProcessorPil", type(processor)
        out = processor(np.load(sys.argv[1] + "/image.npy"), return_tensors="np")["pixel_values"]
        np.save(sys.argv[1] + "/out.npy", out)
        try:
            paca_hf.PaCaViTImageProcessor()
        except ImportError as error:
            print("torchvision backend refused:", error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torchvision backend refused" in result.stdout
    expected = PaCaViTImageProcessorPil(size=40, crop_size=32)(image, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_post_process_returns_segmentation_scores(processor):
    logits = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    plain = processor.post_process_semantic_segmentation(Output(logits), target_sizes=[(6, 10), (3, 5)])
    scored = processor.post_process_semantic_segmentation(
        Output(logits), target_sizes=[(6, 10), (3, 5)], return_segmentation_scores=True
    )
    for i, item in enumerate(scored):
        assert torch.equal(item.segmentation, plain[i])
        assert torch.equal(item.segmentation_scores.argmax(0), plain[i])
    assert tuple(scored[0].segmentation_scores.shape) == (4, 6, 10)
    upsampled = F.interpolate(logits[:1], size=(6, 10), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(scored[0].segmentation_scores, upsampled)
    assert torch.equal(scored[1].segmentation_scores, logits[1])  # same size: the logits themselves
    no_sizes = processor.post_process_semantic_segmentation(Output(logits), return_segmentation_scores=True)
    assert torch.equal(no_sizes[0].segmentation_scores, logits[0])


@pytest.mark.parametrize("task", ["image-classification", "image-segmentation"])
def test_pipelines_load_the_default_torchvision_processor(tmp_path, task):
    """A saved folder opened by `pipeline(task)` gets the torchvision backend (the default) and runs."""
    from tiny_configs import tiny_config
    from transformers import pipeline

    import paca_hf

    torch.manual_seed(0)
    config = tiny_config(num_labels=3)
    model_class = (
        "PaCaViTForImageClassification" if task == "image-classification" else "PaCaViTForSemanticSegmentation"
    )
    getattr(paca_hf, model_class)(config).save_pretrained(tmp_path)
    PaCaViTImageProcessorPil(size={"height": 64, "width": 64}, do_center_crop=False).save_pretrained(tmp_path)
    runner = pipeline(task, model=str(tmp_path))
    assert type(runner.image_processor) is PaCaViTImageProcessor
    photo = Image.fromarray(photo_like(48, 80))
    result = runner(photo)
    if task == "image-classification":
        assert len(result) == 3 and abs(sum(item["score"] for item in result) - 1) < 1e-4
    else:
        assert result and all(item["mask"].size == (80, 48) for item in result)


def test_resize_without_antialias_samples_the_source_pixels(processor):
    """`antialias=False` (the segmentation evaluation's resize, mmseg's OpenCV INTER_LINEAR): halving a row
    [0, 100, 200, 40] bilinearly with half-pixel centres samples x = 0.5 and 2.5, i.e. the means of pixel pairs,
    (0 + 100) / 2 and (200 + 40) / 2; an antialiased resize averages over a wider window. Same in both backends."""
    row = np.array([0, 100, 200, 40], dtype=np.uint8)
    image = np.repeat(np.repeat(row[None, :, None], 2, axis=0), 3, axis=2)  # (2, 4, 3)
    settings = {
        "size": {"height": 2, "width": 2},
        "do_center_crop": False,
        "do_normalize": False,
        "resample": 2,
    }  # PILImageResampling.BILINEAR
    plain = run(processor, image, antialias=False, **settings)
    np.testing.assert_allclose(plain[0], np.full((3, 2, 2), [50 / 255, 120 / 255]), atol=1e-6)
    filtered = run(processor, image, **settings)  # the default: antialiased, as timm's ImageNet transform
    assert np.abs(filtered[0, 0, 0] - [50 / 255, 120 / 255]).max() > 10 / 255


def test_segmentation_processors_resize_without_antialias():
    """The processor the fine-tune saves and evaluates with, and the converter's default for segmentors, resize as
    the authors' mmseg evaluation (no antialiasing), in both backends once saved."""
    from paca_hf.loading import default_image_processor
    from paca_hf.training.segmentation import recipe_image_processor

    for processor in (recipe_image_processor((256, 64), True), default_image_processor("semantic-segmentation")):
        assert processor.antialias is False and processor.to_dict()["antialias"] is False


# ----------------------------------------------------------------------------- the backends' own hooks


def test_decoding_enters_through_the_backend_per_image_hook(processor):
    """`process_image`, the backends' per-image hook, is where `paca_hf.images` decodes: a 16-bit grey photo stored
    8 wide x 4 high with EXIF Orientation 6 comes out upright (4 wide x 8 high, turned clockwise), channels first, as
    value / 65535 (transformers' own hook saturates 16-bit data and ignores the tag)."""
    import io

    stored = (np.arange(32, dtype=np.int64).reshape(4, 8) * 2000 + 1000).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif)
    photo = Image.open(io.BytesIO(buffer.getvalue()))
    assert photo.mode.startswith("I") and photo.size == (8, 4)

    pixels = np.asarray(processor.process_image(photo, do_convert_rgb=True))
    expected = np.rot90(stored, k=-1).astype(np.float64) / 65535  # clockwise quarter turn
    assert pixels.shape == (3, 8, 4) and pixels.dtype == np.float32
    for channel in pixels:
        np.testing.assert_allclose(channel, expected, rtol=0, atol=1e-7)


def test_segmentation_maps_enter_through_the_per_image_hook(processor, monkeypatch):
    """Segmentation maps take Segformer's route, `_prepare_image_like_inputs` and the per-image hook `process_image`,
    as the images do: a 2 x 3 palette map comes out of the hook as int64 labels `(1, 2, 3)` holding its palette
    indices, beside its image's `(3, 2, 3)` pixels, and a map the decoder refuses is named by its index."""
    seen = []
    hook = processor.process_image

    def recording_hook(image, *args, **kwargs):
        out = hook(image, *args, **kwargs)
        seen.append(np.asarray(out))
        return out

    monkeypatch.setattr(processor, "process_image", recording_hook)
    indices = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    palette_map = Image.fromarray(indices, mode="P")
    palette_map.putpalette([200, 10, 10] * 256)  # one colour for every index: only the indices are labels
    geometry = {"do_resize": False, "do_center_crop": False, "return_tensors": "np"}
    out = processor(noise_rgb(2, 3), segmentation_maps=palette_map, **geometry)
    assert [(array.shape, array.dtype) for array in seen] == [((3, 2, 3), np.uint8), ((1, 2, 3), np.int64)]
    np.testing.assert_array_equal(seen[1], indices[None])
    np.testing.assert_array_equal(out["labels"], indices[None])
    with pytest.raises(ValueError, match=r"segmentation map 1: .*integer labels"):
        processor([noise_rgb(2, 3)] * 2, segmentation_maps=[indices, indices / 2], **geometry)


def test_same_shape_8_and_16_bit_images_in_one_batch(processor):
    """With grouping on (one batch per shape, as on a GPU) an 8-bit and a 16-bit image of one shape still give what
    each gives alone: 8-bit white and 16-bit white are both 1.0."""
    eight = np.full((20, 24, 3), 255, np.uint8)
    sixteen = np.full((20, 24, 3), 65535, np.uint16)
    raw = {
        "do_normalize": False,
        "do_resize": False,
        "do_center_crop": False,
        "return_tensors": "np",
        "disable_grouping": False,
    }
    out = processor([eight, sixteen], **raw)["pixel_values"]
    np.testing.assert_array_equal(out, np.ones((2, 3, 20, 24), np.float32))


@pytest.mark.parametrize("cls", list(BACKENDS.values()))
def test_docstrings_are_transformers_auto_docstrings(cls):
    """`@auto_docstring` documents every argument in transformers' format, PaCa's own ones from their one entry in
    `PaCaViTImageProcessorKwargs`; each module starts with its license header."""
    import inspect
    import sys

    for doc in (cls.__doc__, cls.preprocess.__doc__):
        for entry in (
            "crop_pct (`float`, *kwargs*",
            "antialias (`bool`, *kwargs*",
            "do_reduce_labels (`bool`, *kwargs*",
            "do_resize (`bool`, *kwargs*",
        ):
            assert entry in doc
    assert "segmentation_maps (`ImageInput`, *optional*):\n" in cls.preprocess.__doc__
    assert inspect.getsource(sys.modules[cls.__module__]).startswith("# Copyright")
