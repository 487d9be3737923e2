"""transformers' own model test suite for PaCa-ViT (`ModelTesterMixin`, `ConfigTester`, `BackboneTesterMixin`,
`PipelineTesterMixin`), as `tests/models/pacavit/test_modeling_pacavit.py` would run inside transformers. The mixins
come from the installed version's source distribution (see tests/transformers_tests.py).

Every skip written below is one that PVTv2 or Segformer make in transformers for the same reason. The other skips
come from conditions inside the common tests, and they skip PVTv2 and Segformer alike in this environment:
- hardware and optional libraries absent on a CPU-only machine: accelerator / multi-accelerator / MPS, Flash
  Attention 2-4, kernels, DeepSpeed, av, PyTesseract, and `@slow` tests;
- features these vision encoders do not have: RoPE, sliding windows, position embeddings to resize
  (`test_resize_embeddings = False`), inputs_embeds, sub-configs / composite models, caches, language-model heads,
  sparse experts and router logits, grouped_mm, a tensor-parallel plan, `_keep_in_fp32_modules`, a checkpoint
  conversion mapping (which only renamed legacy checkpoints have);
- pipelines: tasks PaCa-ViT does not do (not in `pipeline_model_mapping`; mask generation is skipped for every
  model by the mixin itself, "`run_pipeline_test` is currently not implemented").

`PipelineTesterMixin` runs the three tasks PaCa-ViT does (image classification, image feature extraction, image
segmentation, each in float32 and float16) on tiny models: in transformers' CI those are downloaded from the Hub
(hf-internal-testing) as listed in a summary file. Tests here run offline, so this module saves tiny PaCa-ViT models
with an image processor locally (`save_tiny_models`; the mixin loads it with both processor classes) and points
the mixin at them with its local mode (`TRANSFORMERS_TINY_MODEL_PATH`: `<path>/reports/tiny_model_summary.json`,
models in `<path>/<model_type>/<class>`).
"""

import copy
import json
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.models.auto import modeling_auto
from transformers.utils import logging as transformers_logging
from transformers.testing_utils import torch_device

from paca_hf import (
    PaCaViTBackbone,
    PaCaViTConfig,
    PaCaViTForImageClassification,
    PaCaViTForSemanticSegmentation,
    PaCaViTImageProcessor,
    PaCaViTImageProcessorPil,
    PaCaViTModel,
)
from transformers_tests import load_transformers_tests


load_transformers_tests()

# The tiny models for the pipeline tests: the summary is read when the mixin is imported, the models are saved by
# setUpModule. The folder goes with the interpreter.
TINY_MODELS = tempfile.TemporaryDirectory(prefix="tiny-pacavit-")
PIPELINE_MODEL_CLASSES = (PaCaViTModel, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation)
IMAGE_PROCESSOR_CLASSES = (PaCaViTImageProcessor, PaCaViTImageProcessorPil)
(Path(TINY_MODELS.name) / "reports").mkdir()
(Path(TINY_MODELS.name) / "reports" / "tiny_model_summary.json").write_text(
    json.dumps(
        {
            model_class.__name__: {
                "tokenizer_classes": [],
                "processor_classes": [processor_class.__name__ for processor_class in IMAGE_PROCESSOR_CLASSES],
                "model_classes": [model_class.__name__],
            }
            for model_class in PIPELINE_MODEL_CLASSES
        }
    )
)
with mock.patch.dict(os.environ, {"TRANSFORMERS_TINY_MODEL_PATH": TINY_MODELS.name}):
    from tests import test_pipeline_mixin  # noqa: E402
if test_pipeline_mixin.TRANSFORMERS_TINY_MODEL_PATH != TINY_MODELS.name:
    raise RuntimeError("tests.test_pipeline_mixin was imported before this module could point it at its tiny models")

from tests.test_backbone_common import BackboneTesterMixin  # noqa: E402
from tests.test_configuration_common import ConfigTester  # noqa: E402
from tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402
from tests.test_pipeline_mixin import PipelineTesterMixin  # noqa: E402


# What transformers' auto mappings would list for PaCa-ViT if it were part of transformers: the common tests use them
# to tell base models, classifiers, segmenters and backbones apart (e.g. which labels to build).
AUTO_MAPPING_NAMES = {
    "MODEL_MAPPING_NAMES": "PaCaViTModel",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": "PaCaViTForImageClassification",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES": "PaCaViTForSemanticSegmentation",
    "MODEL_FOR_BACKBONE_MAPPING_NAMES": "PaCaViTBackbone",
}
_patches = [
    mock.patch.dict(getattr(modeling_auto, mapping), {PaCaViTConfig.model_type: name})
    for mapping, name in AUTO_MAPPING_NAMES.items()
]
# ... and what it would export: the pipeline mixin looks the summary's processor classes up by name in its own import
# of transformers (`transformers_module`, which replaced `sys.modules["transformers"]`).
_patches += [
    mock.patch.object(test_pipeline_mixin.transformers_module, processor_class.__name__, processor_class, create=True)
    for processor_class in IMAGE_PROCESSOR_CLASSES
]


pytestmark = pytest.mark.usefixtures("one_thread")

_verbosity = []


def setUpModule():
    for patch in _patches:
        patch.start()
    # The common tests read transformers' warnings (e.g. "Reinit due to size mismatch"); tests/conftest.py silences
    # them below ERROR for the rest of the suite.
    _verbosity.append(transformers_logging.get_verbosity())
    transformers_logging.set_verbosity_warning()
    save_tiny_models(Path(TINY_MODELS.name))


def save_tiny_models(folder: Path):
    """The tester's tiny models for the pipeline tests, each saved with an image processor sized for the tester's
    64-pixel images (as the Hub's tiny models are saved with processors fit for them). The mixin loads it with each
    class of the summary's `processor_classes`: both processors read the same `preprocessor_config.json`."""
    config = PaCaViTModelTester(None).get_config()
    processor = PaCaViTImageProcessor(size={"height": config.image_size, "width": config.image_size},
                                      do_center_crop=False)
    torch.manual_seed(0)
    for model_class in PIPELINE_MODEL_CLASSES:
        model_folder = folder / PaCaViTConfig.model_type / model_class.__name__
        if not model_folder.exists():
            model_class(config).save_pretrained(model_folder)
            processor.save_pretrained(model_folder)


def tearDownModule():
    for patch in _patches:
        patch.stop()
    transformers_logging.set_verbosity(_verbosity.pop())


class PaCaViTModelTester:
    """Builds a tiny two-stage PaCa-ViT (patch-to-cluster attention in stage 1, patch-to-patch attention in the last
    stage, as in the released models; one block each, as the common tests want at most two layers) and its inputs."""

    def __init__(
        self,
        parent,
        batch_size=2,
        image_size=64,
        num_channels=3,
        hidden_sizes=(16, 32),
        depths=(1, 1),
        attention_heads_per_stage=(1, 2),
        mlp_ratios=(2, 2),
        num_clusters=(4, 0),
        out_features=("stage1", "stage2"),
        num_labels=3,
        is_training=True,
        use_labels=True,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = num_channels
        self.hidden_sizes = list(hidden_sizes)
        self.depths = list(depths)
        self.attention_heads_per_stage = list(attention_heads_per_stage)
        self.mlp_ratios = list(mlp_ratios)
        self.num_clusters = list(num_clusters)
        self.out_features = list(out_features)
        self.num_labels = num_labels
        # What the common attention test reads: one attention map per block; the first block's has
        # `num_attention_heads` heads, a query per patch of the first stage and a key per cluster.
        self.num_hidden_layers = sum(self.depths)
        self.num_attention_heads = self.attention_heads_per_stage[0]
        self.encoder_seq_length = (image_size // 4) ** 2
        self.key_length = self.num_clusters[0]
        self.is_training = is_training
        self.use_labels = use_labels

    def get_config(self):
        return PaCaViTConfig(
            num_channels=self.num_channels,
            hidden_sizes=self.hidden_sizes,
            depths=self.depths,
            num_attention_heads=self.attention_heads_per_stage,
            mlp_ratios=self.mlp_ratios,
            num_clusters=self.num_clusters,
            clustering_interval=[0] * len(self.depths),
            image_size=self.image_size,
            drop_path_rate=0.0,
            decode_head_hidden_size=16,
            num_labels=self.num_labels,
            out_features=self.out_features,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.num_labels) if self.use_labels else None
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, config, pixel_values, labels):
        model = PaCaViTModel(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values)
        side = self.image_size // 2 ** (len(self.depths) + 1)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.hidden_sizes[-1], side, side))
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_sizes[-1]))

    def create_and_check_for_image_classification(self, config, pixel_values, labels):
        model = PaCaViTForImageClassification(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertTrue(torch.isfinite(result.loss))

    def create_and_check_for_semantic_segmentation(self, config, pixel_values, labels):
        model = PaCaViTForSemanticSegmentation(config).to(torch_device).eval()
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], self.num_labels)
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        side = self.image_size // 4
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels, side, side))
        self.parent.assertTrue(torch.isfinite(result.loss))

    def create_and_check_backbone(self, config, pixel_values, labels):
        model = PaCaViTBackbone(config).to(torch_device).eval()
        with torch.no_grad():
            result = model(pixel_values)
        self.parent.assertEqual(
            [tuple(feature_map.shape) for feature_map in result.feature_maps],
            [
                (self.batch_size, size, self.image_size // 2 ** (index + 2), self.image_size // 2 ** (index + 2))
                for index, size in enumerate(self.hidden_sizes)
            ],
        )
        self.parent.assertEqual(model.channels, self.hidden_sizes)


class PaCaViTModelTest(ModelTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (PaCaViTModel, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation)
    pipeline_model_mapping = {
        "image-feature-extraction": PaCaViTModel,
        "image-classification": PaCaViTForImageClassification,
        "image-segmentation": PaCaViTForSemanticSegmentation,
    }
    test_resize_embeddings = False
    test_torch_exportable = True
    # The common test skips this check for models older than 2023 (by the copyright year of their config file).
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = PaCaViTModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=PaCaViTConfig,
            has_text_modality=False,
            common_properties=["hidden_sizes", "num_attention_heads", "depths"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def run_task_tests(self, task, dtype="float32"):
        # The mixin skips a task whose tiny model or processor does not load (some are missing on the Hub); this
        # module saves them itself, so for PaCa-ViT's own tasks that is a failure.
        if task not in self.pipeline_model_mapping:
            return super().run_task_tests(task, dtype=dtype)
        try:
            super().run_task_tests(task, dtype=dtype)
        except unittest.SkipTest as skip:
            self.fail(f"the {task} pipeline test ({dtype}) did not run: {skip}")

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_image_classification(self):
        self.model_tester.create_and_check_for_image_classification(*self.model_tester.prepare_config_and_inputs())

    def test_for_semantic_segmentation(self):
        self.model_tester.create_and_check_for_semantic_segmentation(*self.model_tester.prepare_config_and_inputs())

    def test_backbone(self):
        self.model_tester.create_and_check_backbone(*self.model_tester.prepare_config_and_inputs())

    def test_hidden_states_output(self):
        # Overridden as in PVTv2 and Segformer: the hidden states are NCHW feature maps, one per stage (the common
        # test expects `(batch, sequence, hidden_size)` tokens, one per layer plus the embeddings).
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        tester = self.model_tester
        expected = [
            [tester.batch_size, size, tester.image_size // 2 ** (index + 2), tester.image_size // 2 ** (index + 2)]
            for index, size in enumerate(tester.hidden_sizes)
        ]
        for model_class in self.all_model_classes:
            for from_config in (False, True):
                with self.subTest(model_class.__name__, from_config=from_config):
                    config.output_hidden_states = from_config
                    model = model_class(config).to(torch_device).eval()
                    inputs = self._prepare_for_class(inputs_dict, model_class)
                    with torch.no_grad():
                        outputs = model(**inputs) if from_config else model(**inputs, output_hidden_states=True)
                    self.assertEqual([list(state.shape) for state in outputs.hidden_states], expected)
            config.output_hidden_states = False

    def test_reverse_loading_mapping(self):
        # Overridden: the common test expects `save_pretrained` to write the names of before a rename (transformers
        # keeps the layout of checkpoints published with them). No PaCa-ViT checkpoint was published with the old
        # names, so its renames apply on loading only and folders are saved with today's names (the old names load:
        # tests/test_weight_names.py).
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with self.subTest(model_class.__name__):
                model = model_class(copy.deepcopy(config))
                self.assertTrue(get_model_conversion_mapping(model, add_legacy=False))
                with tempfile.TemporaryDirectory() as folder:
                    model.save_pretrained(folder)
                    saved = load_file(os.path.join(folder, "model.safetensors"))
                self.assertEqual(sorted(saved), sorted(model.state_dict()))

    @unittest.skip(reason="PaCa-ViT does not use inputs_embeds (as PVTv2 and Segformer)")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(
        reason="PaCa-ViT has no get_input_embeddings / get_output_embeddings (as PVTv2 and Segformer: a convolutional "
        "stem, no token embeddings)"
    )
    def test_model_get_set_embeddings(self):
        pass


class PaCaViTBackboneTest(BackboneTesterMixin, unittest.TestCase):
    all_model_classes = (PaCaViTBackbone,)
    config_class = PaCaViTConfig
    has_attentions = True

    def setUp(self):
        self.model_tester = PaCaViTModelTester(self)

    def test_config(self):
        # Overridden as in PVTv2's backbone test: PaCa-ViT's stages are `stage1`..`stageN`, without a `stem` entry
        # (the common test expects `stem` as stage 0), so out_indices count from the first stage.
        config = self.config_class()
        self.assertEqual(config.stage_names, ["stage1", "stage2", "stage3", "stage4"])
        self.assertEqual(config.out_features, ["stage4"])
        self.assertEqual(config.out_indices, [3])
        config = self.config_class(out_features=["stage1", "stage2"], out_indices=[0, 1])
        self.assertEqual((config.out_features, config.out_indices), (["stage1", "stage2"], [0, 1]))
        config = self.config_class(out_features=["stage2", "stage4"])
        self.assertEqual(config.out_indices, [1, 3])
        config = self.config_class(out_indices=[0, 2])
        self.assertEqual(config.out_features, ["stage1", "stage3"])
        with self.assertRaises(ValueError):
            self.config_class(out_features=["stage1", "stage2"], out_indices=[0, 2])

    def test_config_save_pretrained(self):
        # Overridden as in PVTv2's backbone test, for the same stage naming (the common test sets a `stem` index).
        config = self.config_class(out_indices=[0, 1, 2, 3])
        with tempfile.TemporaryDirectory() as folder:
            config.save_pretrained(folder)
            reloaded = self.config_class.from_pretrained(folder)
        self.assertEqual(reloaded.to_dict(), config.to_dict())
