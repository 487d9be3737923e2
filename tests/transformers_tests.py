"""transformers' own test mixins (`ModelTesterMixin`, `ConfigTester`, `BackboneTesterMixin`, `PipelineTesterMixin`,
`ImageProcessingTestMixin`, ...), taken from the source distribution of the installed transformers version.

    from transformers_tests import load_transformers_tests
    load_transformers_tests()  # then: from tests.test_modeling_common import ModelTesterMixin

The sdist is fetched once with `pip download --no-deps --no-binary :all: transformers==<installed version>` from the
package index and extracted to `$PACA_HF_CACHE` (default `~/.cache/paca-hf`)`/transformers-<version>-tests`; later
runs reuse it. Nothing of it is committed. A failed download raises (the tests fail, they are not skipped).

The sdist ships `tests/test_*_common.py` and `tests/test_pipeline_mixin.py` but not the modules those import from
the rest of transformers' repository; this helper writes these stand-ins beside them:
- `tests/exporters/test_export.py`: an empty `ExportTesterMixin` (PaCa-ViT's export is tested in our
  tests/export/test_export.py);
- `tests/generation/test_utils.py`: an empty `GenerationTesterMixin` (only used in an `issubclass` check; PaCa-ViT
  does not generate);
- `tests/utils/test_configuration_utils.py`: `config_common_kwargs`, the common `PreTrainedConfig` arguments that
  `ConfigTester` sets and reads back;
- `tests/utils/tiny_model_summary.json`: an empty summary of the Hub's tiny models (hf-internal-testing): there are
  none for PaCa-ViT, and tests run offline. The PaCa-ViT test points `PipelineTesterMixin` at tiny models it saves
  locally instead (the mixin's `TRANSFORMERS_TINY_MODEL_PATH` mode, see tests/models/pacavit);
- `tests/pipelines/test_pipelines_image_{classification,feature_extraction,segmentation}.py`: the per-task checks
  that `PipelineTesterMixin` runs (`XxxPipelineTests.get_test_pipeline` / `run_pipeline_test`). transformers' own
  live in its repository's `tests/pipelines/`, which the sdist does not ship; these are written here (the classes
  below) to the same contract: build the task's pipeline from the given model and processor, run it on images of
  several sizes and modes (RGB, RGBA, LA, L; the mixin then runs them again in batches), and check the outputs'
  fields against the Hub's task spec (`huggingface_hub`'s `*OutputElement`) and their values against the model's
  own outputs;
- `src/transformers`: a link to the installed transformers package, which `test_pipeline_mixin` imports by path;
- `utils/fetch_hub_objects_for_ci.py`: `url_to_local_path`, which maps a URL to a file of the same name in
  `$PACA_HF_TEST_FIXTURES` when there is one (and otherwise returns the URL unchanged).
"""

import dataclasses
import fcntl
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
import transformers
from huggingface_hub import ImageClassificationOutputElement, ImageSegmentationOutputElement
from PIL import Image
from transformers import ImageClassificationPipeline, ImageFeatureExtractionPipeline, ImageSegmentationPipeline

from paca_hf.file_utils import write_dir_atomically, write_text_atomically


STAND_INS = {
    "tests/__init__.py": "",
    "tests/exporters/__init__.py": "",
    "tests/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "tests/generation/__init__.py": "",
    "tests/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "tests/utils/__init__.py": "",
    "tests/utils/test_configuration_utils.py": "config_common_kwargs = "
    + repr(
        {
            "return_dict": False,
            "output_hidden_states": True,
            "output_attentions": True,
            "dtype": "float16",
            "chunk_size_feed_forward": 5,
            "architectures": ["BertModel"],
            "id2label": {0: "label"},
            "label2id": {"label": "0"},
            "problem_type": "regression",
        }
    )
    + "\n",
    "tests/utils/tiny_model_summary.json": json.dumps({}),
    "tests/pipelines/__init__.py": "",
    **{
        f"tests/pipelines/test_pipelines_{task}.py": f"from transformers_tests import {name}  # noqa: F401\n"
        for task, name in (
            ("image_classification", "ImageClassificationPipelineTests"),
            ("image_feature_extraction", "ImageFeatureExtractionPipelineTests"),
            ("image_segmentation", "ImageSegmentationPipelineTests"),
        )
    },
    "utils/fetch_hub_objects_for_ci.py": (
        "import os\n\n\n"
        "def url_to_local_path(url, return_url_if_not_found=True):\n"
        "    folder = os.environ.get('PACA_HF_TEST_FIXTURES')\n"
        "    if folder:\n"
        "        path = os.path.join(folder, url.rsplit('/', 1)[-1])\n"
        "        if os.path.exists(path):\n"
        "            return path\n"
        "    return url\n"
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("PACA_HF_CACHE", Path.home() / ".cache" / "paca-hf"))


def transformers_tests_root(version: str | None = None) -> Path:
    """Folder holding transformers' `tests/` package (and `utils/`) for `version` (default: the installed one),
    downloaded and extracted on first use. Raises `RuntimeError` if the sdist cannot be downloaded."""
    version = version or importlib.metadata.version("transformers")
    root = cache_dir() / f"transformers-{version}-tests"
    root.parent.mkdir(parents=True, exist_ok=True)
    # One download at a time (pytest-xdist workers share the cache): the others wait, then find it complete.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((root / "tests" / "test_modeling_common.py").is_file() and (root / "src" / "transformers").exists()):
            download_and_extract(version, root)
        # Stand-ins added since the cache was extracted.
        for relative, text in STAND_INS.items():
            if not (root / relative).exists():
                write_text_atomically(root / relative, text)
    return root


def download_and_extract(version: str, root: Path) -> None:
    with tempfile.TemporaryDirectory() as download_dir:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"transformers=={version}",
            "-d",
            download_dir,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(download_dir).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or len(archives) != 1:
            raise RuntimeError(
                f"Could not download the transformers {version} source distribution (needed for transformers' test "
                f"mixins): `{' '.join(command)}` exited with {result.returncode}:\n{result.stderr[-2000:]}"
            )

        def extract(folder: Path) -> None:
            with tarfile.open(archives[0]) as archive:
                prefix = f"transformers-{version}/"
                members = [m for m in archive.getmembers() if m.name.startswith(prefix + "tests/") and m.isfile()]
                for member in members:
                    member.name = member.name[len(prefix) :]
                archive.extractall(folder, members=members, filter="data")
            # `test_pipeline_mixin` imports transformers from `<root>/src/transformers`: the installed package.
            (folder / "src").mkdir()
            (folder / "src" / "transformers").symlink_to(Path(transformers.__file__).parent, target_is_directory=True)
            for relative, text in STAND_INS.items():
                path = folder / relative
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)

        write_dir_atomically(root, extract)


def load_transformers_tests(version: str | None = None) -> Path:
    """Make transformers' `tests` package (and its `utils/` helpers) importable; returns its root folder."""
    root = transformers_tests_root(version)
    loaded = sys.modules.get("tests")
    if loaded is not None and Path(loaded.__file__ or "").resolve().parent != (root / "tests").resolve():
        raise RuntimeError(f"Another `tests` package is already imported ({loaded.__file__}); cannot load {root}.")
    for folder in (root, root / "utils"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return root


def pipeline_test_images() -> list[Image.Image]:
    """Random pictures of the modes and sizes a vision pipeline must take: RGB, RGBA, LA and L, none square."""
    generator = np.random.default_rng(0)
    shapes = [(40, 48, 3), (50, 30, 4), (36, 64, 2), (24, 40)]  # (height, width[, channels]): RGB, RGBA, LA, L
    return [Image.fromarray(generator.integers(0, 256, shape, dtype=np.uint8)) for shape in shapes]


class VisionPipelineTests(unittest.TestCase):
    """What the three vision tasks' checks share: the pipeline, built from the model and processor the mixin loaded,
    and the model's own outputs for one image, to compare the pipeline's answers with."""

    pipeline_class = None

    def get_test_pipeline(
        self,
        model,
        tokenizer=None,
        image_processor=None,
        feature_extractor=None,
        processor=None,
        dtype="float32",
        **pipeline_kwargs,
    ):
        # A pipeline class ignores `dtype` for a model already built (only `pipeline()` applies it when loading).
        model = model.to(getattr(torch, dtype))
        pipe = self.pipeline_class(
            model=model,
            tokenizer=tokenizer,
            image_processor=image_processor,
            feature_extractor=feature_extractor,
            processor=processor,
            dtype=dtype,
            **pipeline_kwargs,
        )
        return pipe, pipeline_test_images()

    def model_outputs(self, pipe, image):
        inputs = pipe.image_processor(image.convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            return pipe.model(pixel_values=inputs["pixel_values"].to(pipe.model.dtype))

    def assert_close(self, actual, expected, pipe):
        tolerance = 1e-5 if pipe.model.dtype == torch.float32 else 2e-3
        torch.testing.assert_close(
            torch.as_tensor(actual, dtype=torch.float32), expected.float(), rtol=tolerance, atol=tolerance
        )


def field_names(spec) -> set[str]:
    return {field.name for field in dataclasses.fields(spec)}


class ImageClassificationPipelineTests(VisionPipelineTests):
    pipeline_class = ImageClassificationPipeline

    def get_test_pipeline(self, model, *args, **kwargs):
        return super().get_test_pipeline(model, *args, top_k=2, **kwargs)

    def run_pipeline_test(self, classifier, examples):
        outputs = classifier(examples)
        self.assertEqual(len(outputs), len(examples))
        label2id = {label: index for index, label in classifier.model.config.id2label.items()}
        for image, predictions in zip(examples, outputs):
            self.assertEqual(len(predictions), 2)
            for prediction in predictions:
                self.assertEqual(set(prediction), field_names(ImageClassificationOutputElement))
            probabilities = self.model_outputs(classifier, image).logits.float().softmax(-1)[0]
            top = torch.tensor([probabilities[label2id[p["label"]]] for p in predictions])
            self.assert_close([p["score"] for p in predictions], top, classifier)
            # The two best classes, best first.
            self.assertGreaterEqual(top[0], top[1])
            self.assertGreaterEqual(top[1], probabilities.sort(descending=True).values[2])
        self.assertEqual(classifier(examples[0]), outputs[0])


class ImageFeatureExtractionPipelineTests(VisionPipelineTests):
    pipeline_class = ImageFeatureExtractionPipeline

    def run_pipeline_test(self, extractor, examples):
        for image in examples:
            expected = self.model_outputs(extractor, image)
            self.assert_close(extractor(image), expected.last_hidden_state, extractor)
            pooled = extractor(image, pool=True, return_tensors=True)
            self.assertIsInstance(pooled, torch.Tensor)
            self.assert_close(pooled, expected.pooler_output, extractor)
        self.assertEqual(len(extractor(examples)), len(examples))


class ImageSegmentationPipelineTests(VisionPipelineTests):
    pipeline_class = ImageSegmentationPipeline

    def run_pipeline_test(self, segmenter, examples):
        outputs = segmenter(examples)
        self.assertEqual(len(outputs), len(examples))
        id2label = segmenter.model.config.id2label
        for image, segments in zip(examples, outputs):
            # Semantic segmentation: one binary mask per class present, no scores; the masks tile the image.
            label_map = np.full((image.height, image.width), -1)
            for segment in segments:
                self.assertEqual(set(segment), field_names(ImageSegmentationOutputElement))
                self.assertIsNone(segment["score"])
                self.assertEqual((segment["mask"].mode, segment["mask"].size), ("L", image.size))
                mask = np.asarray(segment["mask"])
                self.assertTrue(set(np.unique(mask)) <= {0, 255})
                self.assertTrue((label_map[mask > 0] == -1).all())
                label_map[mask > 0] = {label: index for index, label in id2label.items()}[segment["label"]]
            expected = segmenter.image_processor.post_process_semantic_segmentation(
                self.model_outputs(segmenter, image), target_sizes=[(image.height, image.width)]
            )[0]
            np.testing.assert_array_equal(label_map, expected.numpy())
