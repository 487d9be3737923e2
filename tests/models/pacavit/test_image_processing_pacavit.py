"""transformers' own image-processor test suite (`ImageProcessingTestMixin`, `PostProcessSemanticSegmentationTestMixin`)
on both PaCa-ViT backends, as `tests/models/pacavit/test_image_processing_pacavit.py` would run inside transformers.
The mixins come from the installed version's source distribution (see tests/transformers_tests.py).

Skips: only the mixin's own, which Segformer gets for the same reasons:
- the `@slow` tests: `test_can_compile_torchvision_backend` and `test_pil_can_run_without_torchvision` (whose
  subprocess would also need `import paca_hf` to know the model type; tests/test_image_processing.py runs that check,
  with the import, on every run);
- `test_image_processor_preprocess_arguments`: no `_valid_processor_keys`;
- `test_override_instance_attributes_does_not_affect_other_instances`: `size` is a `SizeDict`, `image_mean` a tuple.
`test_backends_equivalence` downloads the COCO cats photo: it is replaced by the same assertions on a local
photo-like image. The segmentation-map tests Segformer runs on downloaded ADE20k samples use local images and maps."""

import unittest

import numpy as np
import torch
from PIL import Image

from paca_hf import PaCaViTImageProcessor, PaCaViTImageProcessorPil
from transformers_tests import load_transformers_tests


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
        inputs = {"outputs": SemanticSegmenterOutput(logits=torch.randn(self.batch_size, self.num_labels, height, width))}
        return inputs, {"num_labels": self.num_labels, "height": height, "width": width}

    def prepare_semantic_segmentation_inputs(self, batched=False, seed=0):
        """Photo-like images with label maps that follow their content (local stand-ins for the ADE20k samples)."""
        rng = np.random.default_rng(seed)
        images, maps = [], []
        for height, width in [(64, 48), (50, 70)][: 2 if batched else 1]:
            y, x = np.mgrid[0:height, 0:width]
            labels = (x * 3 // width + 3 * (y * 2 // height)).astype(np.uint8)  # 6 blocks, labels 0..5
            pixels = np.stack([labels * 40 + 10, 255 - labels * 40, (x * 4) % 256], -1) + rng.integers(0, 8, (height, width, 3))
            images.append(Image.fromarray(pixels.astype(np.uint8)))
            maps.append(Image.fromarray(labels))
        return (images, maps) if batched else (images[0], maps[0])


class PaCaViTImageProcessingTest(ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase):
    image_processor_tester_class = PaCaViTImageProcessingTester

    def test_image_processor_properties(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processing = image_processing_class(**self.image_processor_dict)
            for name in ("do_resize", "size", "crop_pct", "do_center_crop", "crop_size", "do_normalize", "image_mean",
                         "image_std", "do_reduce_labels", "post_process_semantic_segmentation"):
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
