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

Then PaCa-ViT's own model tests: outputs, attention paths, gradient checkpointing, Auto classes, input checks; weight
names as transformers 5.25's vision models name them, and folders saved with the names of before still loading
(transformers' conversion mapping) with identical outputs."""

import copy
import json
import os
import re
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tiny_configs import tiny_config as shared_tiny_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSemanticSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.models.auto import modeling_auto
from transformers.testing_utils import torch_device
from transformers.utils import logging as transformers_logging
from transformers_tests import load_transformers_tests

from paca_hf import (
    PaCaViTBackbone,
    PaCaViTConfig,
    PaCaViTForImageClassification,
    PaCaViTForSemanticSegmentation,
    PaCaViTImageProcessor,
    PaCaViTImageProcessorPil,
    PaCaViTModel,
)


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
    processor = PaCaViTImageProcessor(
        size={"height": config.image_size, "width": config.image_size}, do_center_crop=False
    )
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
        # the weight-name tests below).
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


def tiny_config(**overrides):
    # Two blocks in stages 1 and 3, so that a stage's later blocks reuse its cluster assignment.
    return shared_tiny_config(
        **{
            "hidden_sizes": [16, 32, 48, 64],
            "depths": [2, 1, 2, 1],
            "num_attention_heads": [1, 2, 2, 4],
            "clustering_kernel_size": 7,
            "num_labels": 5,
            **overrides,
        }
    )


def test_output_shapes_follow_hierarchical_models(seed):
    model = PaCaViTModel._from_config(tiny_config(), attn_implementation="eager").eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outputs = model(
            pixel_values, output_hidden_states=True, output_attentions=True, output_cluster_assignments=True
        )
    assert outputs.last_hidden_state.shape == (2, 64, 2, 3)
    assert [tuple(h.shape) for h in outputs.hidden_states] == [
        (2, 16, 16, 24),
        (2, 32, 8, 12),
        (2, 48, 4, 6),
        (2, 64, 2, 3),
    ]
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state.mean(dim=(2, 3)))
    # One attention map per block: keys are the clusters, or the patches in the stage without clusters.
    assert [tuple(a.shape) for a in outputs.attentions] == [
        (2, 1, 384, 4),
        (2, 1, 384, 4),
        (2, 2, 96, 4),
        (2, 2, 24, 4),
        (2, 2, 24, 4),
        (2, 4, 6, 6),
    ]
    assignments = outputs.cluster_assignments
    assert [None if a is None else tuple(a.shape) for a in assignments] == [
        (2, 4, 16, 24),
        (2, 4, 8, 12),
        (2, 4, 4, 6),
        None,
    ]
    for assignment in assignments[:3]:
        assert (assignment >= 0).all()
        torch.testing.assert_close(assignment.sum(dim=(2, 3)), torch.ones(2, 4))


def test_optional_outputs_are_absent_unless_requested(seed):
    outputs = PaCaViTModel(tiny_config()).eval()(torch.randn(1, 3, 32, 32))
    assert outputs.hidden_states is None and outputs.attentions is None and outputs.cluster_assignments is None
    as_tuple = PaCaViTModel(tiny_config()).eval()(torch.randn(1, 3, 32, 32), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2


@pytest.mark.parametrize("clustering_type", ["conv", "mlp", "linear"])
def test_sdpa_and_eager_attention_agree(clustering_type, seed):
    config = tiny_config(clustering_type=clustering_type)
    sdpa = PaCaViTForImageClassification(config).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(pixel_values).logits, eager(pixel_values).logits, atol=1e-5, rtol=1e-5)
        # As transformers' models: the attention weights come from the eager implementation; SDPA computes none (it
        # stays SDPA for the call, with the same result).
        with_weights = eager(pixel_values, output_attentions=True)
        without_weights = sdpa(pixel_values, output_attentions=True)
    assert len(with_weights.attentions) == sum(config.depths) and without_weights.attentions == ()
    torch.testing.assert_close(without_weights.logits, with_weights.logits, atol=1e-5, rtol=1e-5)
    for weights in with_weights.attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


def test_attention_weights_reproduce_the_attention_output(seed):
    """The returned weights are the softmax(q k^T / sqrt(d)) the block really used: recompute the block by hand."""
    model = PaCaViTModel._from_config(tiny_config(depths=[1, 1, 1, 1]), attn_implementation="eager").eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    captured = {}
    attention = model.stages[0].layers[0].attention
    attention.register_forward_hook(lambda module, args, output: captured.update(inputs=args, output=output))
    with torch.no_grad():
        outputs = model(pixel_values, output_attentions=True, output_cluster_assignments=True)
        hidden, height, width = captured["inputs"][:3]
        assignment = outputs.cluster_assignments[0].flatten(2)
        clusters = attention.cluster_norm(assignment @ hidden)
        query = attention.q_proj(hidden)
        key = attention.k_proj(clusters)
        weights = torch.softmax(query @ key.transpose(1, 2) / 16**0.5, dim=-1)  # one head of width 16
        expected = attention.o_proj(weights @ attention.v_proj(clusters))
    torch.testing.assert_close(outputs.attentions[0][:, 0], weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(captured["output"][0], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"teacher_depths": [1, 1, 1, 1], "num_clusters": [4, 4, 4, 4]}])
def test_gradient_checkpointing_gives_the_same_gradients(overrides, seed):
    model = PaCaViTForImageClassification(tiny_config(**overrides))
    model.train()
    pixel_values, labels = torch.randn(2, 3, 48, 48), torch.tensor([1, 3])

    def gradients():
        model.zero_grad()
        model(pixel_values, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for stage in model.pacavit.stages for layer in stage.layers)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("height, width", [(64, 96), (72, 40)])
def test_mix_ffn_in_bands_computes_the_whole_map_result(height, width, seed):
    """Bands of rows (with the halo rows their 3x3 convolution reads) give the outputs and gradients of the whole
    map; the expanded activations really are computed band by band."""
    whole = PaCaViTForImageClassification(tiny_config(chunk_size_feed_forward=0))
    banded = PaCaViTForImageClassification(tiny_config(chunk_size_feed_forward=50))
    banded.load_state_dict(whole.state_dict())
    expanded_rows = []
    mlp = banded.pacavit.stages[0].layers[0].mlp
    mlp.fc1.register_forward_hook(lambda module, args, output: expanded_rows.append(output.shape[1] // (width // 4)))
    pixel_values, labels = torch.randn(2, 3, height, width), torch.tensor([0, 4])

    def run(model):
        model.zero_grad()
        outputs = model(pixel_values, labels=labels)
        outputs.loss.backward()
        return outputs.logits, {name: p.grad for name, p in model.named_parameters()}

    logits, gradients = run(whole)
    banded_logits, banded_gradients = run(banded)
    stage1_height, rows_per_band = height // 4, max(1, 50 // (width // 4))
    num_bands = -(-stage1_height // rows_per_band)
    assert len(expanded_rows) == num_bands > 1
    # Every band expands its own rows and the row above and below it (none beyond the map's edges).
    assert sum(expanded_rows) == stage1_height + 2 * (num_bands - 1)
    torch.testing.assert_close(banded_logits, logits, atol=1e-5, rtol=1e-5)
    for name, gradient in gradients.items():
        torch.testing.assert_close(banded_gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


def test_outputs_do_not_depend_on_the_rest_of_the_batch(seed):
    model = PaCaViTForImageClassification(tiny_config(teacher_depths=[1, 1, 1, 1], num_clusters=[4, 4, 4, 4])).eval()
    batch = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        together = model(batch).logits
        alone = torch.cat([model(batch[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(97, 61), (7, 5), (1, 1), (224, 224), (33, 250)])
def test_any_input_size_works(size, seed):
    model = PaCaViTForSemanticSegmentation(tiny_config(teacher_depths=[1, 1, 1, 1], num_clusters=[4, 4, 4, 4])).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, *size))
    assert torch.isfinite(outputs.logits).all()
    expected = size
    for _ in range(2):  # two stride-2 convolutions of the stem
        expected = tuple((side + 1) // 2 for side in expected)
    assert outputs.logits.shape == (1, 5, *expected)


def test_classification_loss_follows_problem_type(seed):
    model = PaCaViTForImageClassification(tiny_config()).eval()
    pixel_values = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([0, 4, 2])
    outputs = model(pixel_values, labels=labels)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, labels))
    model.config.problem_type = "multi_label_classification"
    targets = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], dtype=torch.float)
    outputs = model(pixel_values, labels=targets)
    torch.testing.assert_close(
        outputs.loss, torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, targets)
    )


def test_segmentation_loss_is_decode_plus_weighted_cluster_loss(seed):
    model = PaCaViTForSemanticSegmentation(tiny_config(classifier_dropout_prob=0.0)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 5, (2, 32, 32))
    labels[0, :4] = 255
    outputs = model(pixel_values, labels=labels)

    def cross_entropy(scores):
        up = torch.nn.functional.interpolate(scores, size=(32, 32), mode="bilinear", align_corners=False)
        return torch.nn.functional.cross_entropy(up, labels, ignore_index=255)

    expected = cross_entropy(outputs.logits) + 0.4 * cross_entropy(outputs.cluster_logits)
    torch.testing.assert_close(outputs.loss, expected)
    with pytest.raises(ValueError, match="labels"):
        model(pixel_values, labels=labels[0])


def test_save_load_round_trip_and_auto_classes(tmp_path, seed):
    model = PaCaViTForSemanticSegmentation(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    pixel_values = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(pixel_values).logits
        assert isinstance(AutoConfig.from_pretrained(tmp_path), PaCaViTConfig)
        segmentation = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(segmentation(pixel_values).logits, expected, atol=0, rtol=0)
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert isinstance(base, PaCaViTModel)
        torch.testing.assert_close(
            base(pixel_values, output_hidden_states=True).hidden_states[0],
            model.pacavit(pixel_values, output_hidden_states=True).hidden_states[0],
            atol=0,
            rtol=0,
        )
        classifier = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=5)
        assert isinstance(classifier, PaCaViTForImageClassification)


def test_weight_init_follows_the_authors(seed):
    model = PaCaViTForImageClassification(PaCaViTConfig.from_official_name("pacavit_tiny_p2cconv_100_0"))
    linear = model.pacavit.stages[2].layers[0].attention.q_proj.weight
    # timm's trunc_normal_(std=0.02) truncates at +-2 (absolute), as transformers' does.
    assert linear.std().item() == pytest.approx(0.02, rel=0.05) and abs(linear.mean().item()) < 1e-3
    conv = model.pacavit.stages[0].layers[0].attention.clustering.depthwise
    fan_out = 7 * 7 * 96 // 96
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
    norm = model.pacavit.stages[1].layer_norm
    assert (norm.weight == 1).all() and (norm.bias == 0).all()


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randn(1, 1, 32, 32), r"has 1 channels but the model expects 3"),
        (torch.randn(1, 4, 32, 32), r"has 4 channels but the model expects 3"),
        (torch.randn(3, 32, 32), r"must have 4 dimensions"),
        (torch.randn(1, 1, 3, 32, 32), r"must have 4 dimensions"),
        (torch.randn(0, 3, 32, 32), r"empty batch"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r"floating-point"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.long), r"floating-point"),
        (torch.randn(1, 3, 0, 32), r"empty spatial size"),
    ],
)
def test_bad_inputs_raise_value_error(pixel_values, message):
    model = PaCaViTForImageClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        model(pixel_values)


@pytest.mark.parametrize("size", [(97, 61), (7, 5)])
def test_odd_sizes_through_the_processor(size, seed):
    import numpy as np
    from PIL import Image

    from paca_hf import PaCaViTImageProcessor

    width, height = size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    pixel_values = PaCaViTImageProcessor(do_resize=False, do_center_crop=False)(image, return_tensors="pt")[
        "pixel_values"
    ]
    assert pixel_values.shape == (1, 3, height, width)
    model = PaCaViTForSemanticSegmentation(tiny_config()).eval()
    with torch.no_grad():
        outputs = model(pixel_values, output_cluster_assignments=True)
    assert torch.isfinite(outputs.logits).all()
    for assignment in outputs.cluster_assignments[:3]:
        torch.testing.assert_close(assignment.sum(dim=(2, 3)), torch.ones_like(assignment.sum(dim=(2, 3))))


def test_new_decode_head_is_initialised_as_mmseg(seed):
    """Classifier normal(0, 0.01) and zero bias: the untrained model's loss is near ln(classes) + 0.4 ln(classes)."""
    import math

    model = PaCaViTForSemanticSegmentation(tiny_config(num_labels=6))
    classifier = model.decode_head.classifier
    assert classifier.weight.std().item() == pytest.approx(0.01, rel=0.15) and (classifier.bias == 0).all()
    bound = 1 / math.sqrt(model.config.decode_head_hidden_size)
    assert model.decode_head.to_clusters.weight.abs().max() <= bound  # PyTorch's default Conv2d init
    outputs = model(torch.randn(2, 3, 64, 64), labels=torch.randint(0, 6, (2, 64, 64)))
    assert outputs.loss.item() < 1.4 * math.log(6) * 1.3


@pytest.mark.parametrize("model_class", [PaCaViTForImageClassification, PaCaViTForSemanticSegmentation])
def test_every_stage_output_is_on_the_autograd_graph(model_class, seed):
    """`hidden_states[i]` is the map that stage i+1 reads, so a loss on the logits sends a gradient to every stage's
    map and to every cluster assignment (what Grad-CAM on a stage needs)."""
    model = model_class(tiny_config()).eval()
    outputs = model(torch.randn(1, 3, 64, 64), output_hidden_states=True, output_cluster_assignments=True)
    for tensor in (*outputs.hidden_states, *outputs.cluster_assignments[:3]):
        tensor.retain_grad()
    outputs.logits.max().backward()
    for index, state in enumerate(outputs.hidden_states):
        assert state.grad is not None and state.grad.abs().sum() > 0, f"no gradient on hidden_states[{index}]"
    for index, assignment in enumerate(outputs.cluster_assignments[:3]):
        assert assignment.grad is not None and assignment.grad.abs().sum() > 0, f"cluster_assignments[{index}]"


def test_hidden_states_by_stage_index(seed):
    """transformers 5.x selection: `output_hidden_states` as indices keeps those stages' maps (negative from the end)."""
    model = PaCaViTForSemanticSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        every = model(pixel_values, output_hidden_states=True)
        for backbone_or_head in (model, model.pacavit):
            some = backbone_or_head(pixel_values, output_hidden_states=[0, -1])
            assert [state is None for state in some.hidden_states] == [False, True, True, False]
            torch.testing.assert_close(some.hidden_states[0], every.hidden_states[0])
            torch.testing.assert_close(some.hidden_states[3], every.hidden_states[3])
    torch.testing.assert_close(model(pixel_values, output_hidden_states=[0, -1]).logits, every.logits)


def test_segmentation_loss_upsamples_one_image_at_a_time(seed, monkeypatch):
    """In eager mode each loss upsamples the scores image by image (the full-size scores of one image at a time: the
    training peak), and the loss equals the whole-batch cross-entropy."""
    import paca_hf.modeling_pacavit as modeling

    model = PaCaViTForSemanticSegmentation(tiny_config(num_labels=5))
    pixel_values = torch.randn(3, 3, 64, 64)
    labels = torch.randint(0, 5, (3, 64, 64))
    labels[0, :10] = model.config.semantic_loss_ignore_index
    upsampled_batches = []
    original = F.interpolate

    def recording_interpolate(input, *args, **kwargs):
        output = original(input, *args, **kwargs)
        if output.shape[-2:] == labels.shape[-2:]:
            upsampled_batches.append(output.shape[0])
        return output

    monkeypatch.setattr(modeling.F, "interpolate", recording_interpolate)
    outputs = model(pixel_values, labels=labels)
    assert upsampled_batches == [1] * 6  # 3 images x (decode logits, cluster logits)

    def whole_batch_loss(scores):
        upsampled = original(scores, size=(64, 64), mode="bilinear", align_corners=False)
        return F.cross_entropy(upsampled, labels, ignore_index=model.config.semantic_loss_ignore_index)

    expected = whole_batch_loss(outputs.logits) + model.config.cluster_loss_weight * whole_batch_loss(
        outputs.cluster_logits
    )
    torch.testing.assert_close(outputs.loss, expected, atol=1e-6, rtol=1e-5)


def test_cluster_projection_normalises_as_batchnorm1d_over_the_clusters(seed):
    """The head's key/value projection normalises `(rows, channels)`: the same outputs and running statistics as
    mmseg's BatchNorm1d over `(batch, channels, clusters)`, in training and in evaluation."""
    from paca_hf.modeling_pacavit import PaCaViTClusterProjection

    projection = PaCaViTClusterProjection(8, 6).train()
    reference_norm = copy.deepcopy(projection.norm)
    clusters = torch.randn(3, 5, 8)
    for training in (True, False):
        projection.train(training)
        reference_norm.train(training)
        expected = torch.relu(reference_norm(projection.dense(clusters).transpose(1, 2)).transpose(1, 2))
        torch.testing.assert_close(projection(clusters), expected)
        torch.testing.assert_close(projection.norm.running_mean, reference_norm.running_mean)
        torch.testing.assert_close(projection.norm.running_var, reference_norm.running_var)


ALL_CLASSES = [PaCaViTModel, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation, PaCaViTBackbone]


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_return_dict_false_in_the_call_and_through_from_pretrained(model_class, tmp_path, seed):
    """`return_dict=False` gives the tuple of the output's fields that are set (transformers' `to_tuple`), whether it
    is passed in the call or set in the config by `from_pretrained(..., return_dict=False)`: the heads still read their
    encoder's output by field."""
    model = model_class(tiny_config(out_features=["stage2", "stage4"])).eval()
    model.save_pretrained(tmp_path)
    from_config = model_class.from_pretrained(tmp_path, return_dict=False).eval()
    assert from_config.config.return_dict is False
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values, output_hidden_states=True).to_tuple()
        for as_tuple in (
            model(pixel_values, output_hidden_states=True, return_dict=False),
            from_config(pixel_values, output_hidden_states=True),
        ):
            assert isinstance(as_tuple, tuple) and len(as_tuple) == len(expected)
            torch.testing.assert_close(as_tuple, expected, atol=0, rtol=0)
        # The call's `return_dict=True` wins over the config.
        as_dict = from_config(pixel_values, return_dict=True)
        torch.testing.assert_close(as_dict.to_tuple(), model(pixel_values).to_tuple())


def test_probabilities_of_one_train_without_nan(seed):
    """`drop_path_rate=1`: the deepest block (rate 1 in the linear schedule) drops both residual branches of every
    sample in training, so it passes its input through unchanged (not 0 / 0); dropout probabilities of 1 give zeros.
    The loss and every gradient stay finite; in eval mode nothing is dropped."""
    model = PaCaViTForSemanticSegmentation(
        tiny_config(drop_path_rate=1, hidden_dropout_prob=1, attention_probs_dropout_prob=1, classifier_dropout_prob=1)
    ).train()
    last_block = model.pacavit.stages[-1].layers[-1]
    assert last_block.drop_path.drop_prob == 1
    captured = {}
    last_block.register_forward_hook(lambda module, args, output: captured.update(input=args[0], output=output[0]))
    pixel_values = torch.randn(2, 3, 64, 64)
    outputs = model(pixel_values, labels=torch.randint(0, 5, (2, 64, 64)))
    torch.testing.assert_close(captured["output"], captured["input"], atol=0, rtol=0)
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
    with torch.no_grad():
        model.eval()(pixel_values)
    assert not torch.equal(captured["output"], captured["input"])


def test_flex_attention_gives_the_eager_outputs(seed):
    """`attn_implementation="flex_attention"` runs the patch-to-cluster attention (patch queries, cluster keys and
    values; patch keys in the last stage) through transformers' flex path, with the eager outputs. Compiled with
    dynamo's "aot_eager" backend, under which transformers calls `flex_attention` itself (outside dynamo it compiles
    the kernel with inductor first, about 45 s on a CPU); this test checks the attention, not that compile."""
    # Two stages: clusters in the first, patch-to-patch attention in the second.
    config = tiny_config(
        hidden_sizes=[16, 32], depths=[1, 1], num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_clusters=[4, 0]
    )
    eager = PaCaViTForImageClassification(config).eval()
    eager.set_attn_implementation("eager")
    flex = PaCaViTForImageClassification.from_pretrained(
        None, config=config, state_dict=eager.state_dict(), attn_implementation="flex_attention"
    ).eval()
    assert flex.config._attn_implementation == "flex_attention"
    pixel_values = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    with torch.no_grad():
        actual = torch.compile(flex, backend="aot_eager", fullgraph=True)(pixel_values).logits
        expected = eager(pixel_values).logits
    torch._dynamo.reset()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_outputs_are_transformers_output_classes_with_the_cluster_field(seed):
    """The base model's and the classifier's outputs are transformers' own classes, with `cluster_assignments` added
    last (so the tuple of `return_dict=False` keeps its order)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

    model = PaCaViTForImageClassification(tiny_config()).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        classified = model(pixel_values, output_hidden_states=True, output_cluster_assignments=True)
        encoded = model.pacavit(pixel_values, output_cluster_assignments=True)
    assert isinstance(classified, ImageClassifierOutput) and isinstance(encoded, BaseModelOutputWithPooling)
    assert list(classified.keys()) == ["logits", "hidden_states", "cluster_assignments"]
    assert list(encoded.keys()) == ["last_hidden_state", "pooler_output", "cluster_assignments"]


def test_the_segmentation_output_is_transformers_class_with_the_cluster_fields_last(seed):
    """`PaCaViTSemanticSegmenterOutput` is transformers' `SemanticSegmenterOutput` with `cluster_logits` and
    `cluster_assignments` added after its fields, so that `return_dict=False` gives the library's order (loss, logits,
    hidden_states, attentions, as Segformer's) and the cluster fields after them."""
    from transformers.modeling_outputs import SemanticSegmenterOutput

    model = PaCaViTForSemanticSegmentation(tiny_config(attn_implementation="eager")).eval()
    pixel_values, labels = torch.randn(1, 3, 32, 32), torch.randint(0, 5, (1, 32, 32))
    kwargs = {"output_hidden_states": True, "output_attentions": True, "output_cluster_assignments": True}
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels, **kwargs)
        as_tuple = model(pixel_values, labels=labels, return_dict=False, **kwargs)
        plain = model(pixel_values, return_dict=False)
    assert isinstance(outputs, SemanticSegmenterOutput)
    assert list(outputs.keys()) == [
        "loss",
        "logits",
        "hidden_states",
        "attentions",
        "cluster_logits",
        "cluster_assignments",
    ]
    loss, logits, hidden_states, attentions, cluster_logits, cluster_assignments = as_tuple
    assert logits.shape == cluster_logits.shape == (1, 5, 8, 8)
    assert [tuple(h.shape) for h in hidden_states] == [(1, 16, 8, 8), (1, 32, 4, 4), (1, 48, 2, 2), (1, 64, 1, 1)]
    assert len(attentions) == 6 and len(cluster_assignments) == 4
    torch.testing.assert_close(as_tuple, outputs.to_tuple(), atol=0, rtol=0)
    # Without the optional outputs the tuple is (logits, cluster_logits), as before.
    torch.testing.assert_close(plain, (outputs.logits, outputs.cluster_logits), atol=0, rtol=0)


def test_no_forward_declares_output_hidden_states(seed):
    """transformers 5.x: the recorded outputs are switched by keyword arguments that `@capture_outputs` reads, and
    the heads that always need every stage (the PaCa head, the backbone) use `@filter_output_hidden_states`, which
    returns the maps only when asked for (all, or those selected by index); no forward declares the switch."""
    import inspect

    for model_class in ALL_CLASSES:
        assert "output_hidden_states" not in inspect.signature(model_class.forward).parameters, model_class.__name__
    model = PaCaViTForSemanticSegmentation(tiny_config(output_hidden_states=True)).eval()
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        from_config = model(pixel_values)
        switched_off = model(pixel_values, output_hidden_states=False)
    assert len(from_config.hidden_states) == 4 and switched_off.hidden_states is None
    torch.testing.assert_close(from_config.logits, switched_off.logits, atol=0, rtol=0)


def test_mix_ffn_row_bands_cover_the_map_with_the_rows_their_convolution_reads():
    """`row_bands`: bands of `rows_per_band` rows (the last one shorter), each with the row above and below it that
    its 3x3 convolution reads, clipped to the map."""
    from paca_hf.modeling_pacavit import row_bands

    assert row_bands(10, 4) == [((0, 4), (0, 5)), ((4, 8), (3, 9)), ((8, 10), (7, 10))]
    assert row_bands(8, 4) == [((0, 4), (0, 5)), ((4, 8), (3, 8))]
    assert row_bands(3, 1) == [((0, 1), (0, 2)), ((1, 2), (0, 3)), ((2, 3), (1, 3))]
    assert row_bands(5, 5) == [((0, 5), (0, 5))]


def test_no_nn_sequential_in_the_models(seed):
    """Every block is a named module with its own forward (the teacher's, the PaCa head's), none an `nn.Sequential`;
    the state-dict keys are those of the authors' layout as converted (`conv`, `norm`, per-layer indices)."""
    config = tiny_config(teacher_depths=[1, 2, 1, 1], num_clusters=[4, 4, 4, 4])
    model = PaCaViTForSemanticSegmentation(config).eval()
    assert not [name for name, module in model.named_modules() if isinstance(module, torch.nn.Sequential)]
    names = set(model.state_dict())
    assert {
        "pacavit.clustering_teacher.stages.1.1.depthwise.conv.weight",
        "pacavit.clustering_teacher.stages.1.1.pointwise.norm.running_mean",
        "pacavit.clustering_teacher.downsamples.0.projection.norm.weight",
        "decode_head.stage_projections.0.conv.weight",
        "decode_head.query_projection.norm.running_var",
    } <= names
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs.logits.shape == (1, 5, 16, 16)


def test_models_and_outputs_are_documented_by_transformers_auto_docstring():
    """`@auto_docstring` on the models, their forwards and the output classes: transformers writes the common parts
    (the config parameter, the arguments of its table, the returned fields); each PaCa-ViT argument or field is one
    entry in its format. Importing the model prints none of the library's `[ERROR]` findings (undocumented arguments,
    missing types) and both files carry the license header."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    import paca_hf.configuration_pacavit as configuration
    import paca_hf.modeling_pacavit as modeling

    def entries(doc, name):
        return len(re.findall(rf"^ +{name} \(`", doc, flags=re.MULTILINE))

    for model_class in (PaCaViTModel, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation, PaCaViTBackbone):
        assert "config ([`PaCaViTConfig`])" in model_class.__doc__, model_class.__name__
        doc = model_class.forward.__doc__
        assert "output_cluster_assignments=True" in doc and "Returns:" in doc, model_class.__name__
        assert entries(doc, "pixel_values") == 1 and "any height and width" in doc, model_class.__name__
    assert entries(PaCaViTForImageClassification.forward.__doc__, "labels") == 1
    segmentation_doc = PaCaViTForSemanticSegmentation.forward.__doc__
    assert entries(segmentation_doc, "labels") == 1 and "semantic_loss_ignore_index" in segmentation_doc
    for output_class, fields in (
        (modeling.PaCaViTModelOutput, ["last_hidden_state", "pooler_output", "cluster_assignments"]),
        (modeling.PaCaViTImageClassifierOutput, ["loss", "logits", "cluster_assignments"]),
        (modeling.PaCaViTSemanticSegmenterOutput, ["loss", "logits", "cluster_logits", "cluster_assignments"]),
    ):
        doc = output_class.__doc__
        assert "Args:" in doc, output_class.__name__
        for name in [*fields, "hidden_states", "attentions"]:
            assert entries(doc, name) == 1, (output_class.__name__, name)

    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import paca_hf.modeling_pacavit"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "[ERROR]" not in result.stdout + result.stderr
    for module in (configuration, modeling):
        first_line = Path(module.__file__).read_text().splitlines()[0]
        assert re.fullmatch(r"# Copyright 20\d\d The paca-hf authors\. Licensed under the MIT License.*", first_line)


# Today's names -> the names the modules had before (written out here, not read from the package).
OLD_NAMES = [
    (".attention.q_proj.", ".attention.query."),
    (".attention.k_proj.", ".attention.key."),
    (".attention.v_proj.", ".attention.value."),
    (".attention.o_proj.", ".attention.dense."),
    (".mlp.fc1.", ".mlp.dense1."),
    (".mlp.dwconv.", ".mlp.depthwise_conv."),
    (".mlp.fc2.", ".mlp.dense2."),
    ("embeddings.conv1.", "embeddings.projection.0."),
    ("embeddings.conv2.", "embeddings.projection.1."),
]


def to_old_names(key: str) -> str:
    for new, old in OLD_NAMES:
        key = key.replace(new, old)
    return key


def write_old_folder(model, folder):
    """`model` saved as the code of before saved it: the same files, the weights under the old names."""
    model.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    old = {to_old_names(key): tensor for key, tensor in weights.items()}
    assert len(old) == len(weights) and set(old) != set(weights)
    save_file(old, folder / "model.safetensors", metadata={"format": "pt"})
    return weights


def test_modules_are_named_as_transformers_models():
    model = PaCaViTModel(shared_tiny_config())
    names = set(model.state_dict())
    assert "stages.0.layers.0.attention.q_proj.weight" in names
    assert {
        "stages.3.layers.0.mlp.fc1.bias",
        "stages.3.layers.0.mlp.dwconv.weight",
        "stages.3.layers.0.mlp.fc2.bias",
    } <= names
    assert {"embeddings.conv1.weight", "embeddings.conv2.weight"} <= names
    assert not any(
        re.search(r"\.(query|key|value|dense1|dense2|depthwise_conv)\.|projection\.\d", name) for name in names
    )
    assert not any(isinstance(module, torch.nn.Sequential) for module in model.embeddings.modules())


@pytest.mark.parametrize(
    "model_class, overrides",
    [
        (PaCaViTForImageClassification, {"num_labels": 3}),
        (PaCaViTForSemanticSegmentation, {"num_labels": 4}),
        (PaCaViTModel, {"teacher_depths": [1, 1, 1, 1]}),
        (PaCaViTForImageClassification, {"num_labels": 3, "clustering_type": "mlp"}),
    ],
)
def test_folder_with_the_old_names_loads_with_identical_outputs(model_class, overrides, tmp_path, seed):
    model = model_class(shared_tiny_config(**overrides)).eval()
    weights = write_old_folder(model, tmp_path / "old")
    pixel_values = torch.randn(2, 3, 64, 48)

    loaded, info = model_class.from_pretrained(tmp_path / "old", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        expected, actual = model(pixel_values), loaded.eval()(pixel_values)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)

    # Saved again, the folder has today's names.
    loaded.save_pretrained(tmp_path / "new")
    resaved = load_file(tmp_path / "new" / "model.safetensors")
    assert set(resaved) == set(weights)
    assert all(torch.equal(resaved[key], weights[key]) for key in weights)


def test_upernet_folder_with_the_old_backbone_names_loads(tmp_path, seed):
    config = UperNetConfig(
        backbone_config=shared_tiny_config(out_features=["stage1", "stage2", "stage3", "stage4"]),
        hidden_size=16,
        pool_scales=[1, 2],
        auxiliary_in_channels=32,
        auxiliary_channels=16,
        num_labels=3,
    )
    model = UperNetForSemanticSegmentation(config).eval()
    assert isinstance(model.backbone, PaCaViTBackbone)
    weights = write_old_folder(model, tmp_path / "old")
    assert "backbone.stages.0.layers.0.attention.query.weight" in load_file(tmp_path / "old" / "model.safetensors")

    loaded, info = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "old", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixel_values).logits, model(pixel_values).logits, rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "new")
    assert set(load_file(tmp_path / "new" / "model.safetensors")) == set(weights)
