"""transformers' own image-processor test suite (`ImageProcessingTestMixin`) on `PaCaViTMaskRCNNImageProcessor`, as
`tests/models/pacavit_mask_rcnn/test_image_processing_pacavit_mask_rcnn.py` would run inside transformers. The mixin
comes from the installed version's source distribution (see tests/transformers_tests.py).

Skips: only the mixin's own: its `@slow` tests, the backend-equivalence and backend save / load tests (this processor
has the torchvision backend only, as the detector needs torchvision), `test_image_processor_preprocess_arguments` (no
`_valid_processor_keys`) and `test_override_instance_attributes_does_not_affect_other_instances` (`size` is a
`SizeDict`), which Segformer skips for the same reasons."""

import math
import unittest

import numpy as np
from PIL import Image

from paca_hf import PaCaViTMaskRCNNImageProcessor
from transformers_tests import load_transformers_tests


load_transformers_tests()

from tests.test_image_processing_common import ImageProcessingTester, ImageProcessingTestMixin  # noqa: E402


class PaCaViTMaskRCNNImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, batch_size=7, num_channels=3, min_resolution=30, max_resolution=80, **kwargs):
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("size", {"shortest_edge": 40, "longest_edge": 64})
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [123.675, 116.28, 103.53])
        kwargs.setdefault("image_std", [58.395, 57.12, 57.375])
        kwargs.setdefault("do_pad", True)
        kwargs.setdefault("size_divisor", 32)
        super().__init__(parent, batch_size=batch_size, num_channels=num_channels, min_resolution=min_resolution,
                         max_resolution=max_resolution, **kwargs)

    def _get_image_processing_classes(self):
        # transformers reads these from its own auto mapping, which a model outside transformers is not part of;
        # `paca_hf` registers the same class with `AutoImageProcessor.register`.
        return {"torchvision": PaCaViTMaskRCNNImageProcessor}

    def expected_output_image_shape(self, images):
        """mmdetection's keep-ratio size (f = min(64 / long side, 40 / short side), side -> int(side * f + 0.5)) of
        each image, the batch padded to its largest height and width rounded up to multiples of 32."""
        heights, widths = [], []
        for image in images:
            if isinstance(image, Image.Image):
                width, height = image.size
            elif isinstance(image, np.ndarray):
                height, width = image.shape[:2]
            else:
                height, width = image.shape[1:]
            long_edge, short_edge = self.size["longest_edge"], self.size["shortest_edge"]
            factor = min(long_edge / max(height, width), short_edge / min(height, width))
            heights.append(int(height * factor + 0.5))
            widths.append(int(width * factor + 0.5))
        return self.num_channels, math.ceil(max(heights) / 32) * 32, math.ceil(max(widths) / 32) * 32


class PaCaViTMaskRCNNImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = PaCaViTMaskRCNNImageProcessingTester

    def test_image_processor_properties(self):
        for image_processing_class in self.image_processing_classes.values():
            processor = image_processing_class(**self.image_processor_dict)
            for name in ("do_resize", "size", "do_normalize", "image_mean", "image_std", "do_pad", "size_divisor"):
                self.assertTrue(hasattr(processor, name), name)
