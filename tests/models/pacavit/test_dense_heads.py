"""PaCaViTBackbone inside transformers' dense-prediction models: UperNet (semantic segmentation) and Mask2Former
(instance segmentation, the closest transformers model to the authors' Mask R-CNN results)."""

import pytest
import torch
from tiny_configs import tiny_config
from transformers import (
    AutoBackbone,
    AutoConfig,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

import paca_hf  # noqa: F401  (registers PaCa-ViT with the Auto classes)
from paca_hf import PaCaViTBackbone, PaCaViTConfig, PaCaViTForImageClassification


ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]
HIDDEN_SIZES = [16, 32, 48, 64]
NUM_LABELS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_backbone_config(**overrides) -> PaCaViTConfig:
    return tiny_config(hidden_sizes=HIDDEN_SIZES, **overrides)


def quadrant_batch(batch_size: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels carry (noisily) the class of a fixed quadrant layout: 0 top-left, 1 top-right, 2 bottom."""
    labels = torch.zeros(batch_size, size, size, dtype=torch.long)
    labels[:, :, size // 2 :] = 1
    labels[:, size // 2 :, :] = 2
    pixel_values = torch.randn(batch_size, 3, size, size) + labels[:, None].float()
    return pixel_values, labels


def tiny_upernet_config(**backbone_overrides) -> UperNetConfig:
    return UperNetConfig(
        backbone_config=tiny_backbone_config(out_features=ALL_STAGES, **backbone_overrides),
        num_labels=NUM_LABELS,
        hidden_size=16,
        pool_scales=[1, 2],
        auxiliary_in_channels=HIDDEN_SIZES[2],  # the auxiliary FCN head reads stage3
        auxiliary_channels=16,
    )


def train(model, step, num_steps: int, lr: float) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(num_steps):
        loss = step(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------------------------------------------
# AutoBackbone and out_features / out_indices


def test_auto_backbone_returns_paca_backbone():
    backbone = AutoBackbone.from_config(tiny_backbone_config(out_features=["stage2", "stage4"]))
    assert isinstance(backbone, PaCaViTBackbone)
    assert backbone.stage_names == ALL_STAGES
    assert backbone.out_feature_channels == dict(zip(ALL_STAGES, HIDDEN_SIZES))


def test_default_out_features_is_last_stage():
    config = tiny_backbone_config()
    assert config.out_features == ["stage4"] and config.out_indices == [3]
    backbone = AutoBackbone.from_config(config)
    assert backbone.channels == [HIDDEN_SIZES[3]]


def test_out_indices_select_maps_with_their_channels_and_strides():
    torch.manual_seed(0)
    config = tiny_backbone_config(out_indices=[1, 3])
    assert config.out_features == ["stage2", "stage4"]
    backbone = AutoBackbone.from_config(config).eval()
    assert backbone.out_indices == [1, 3]
    assert backbone.channels == [HIDDEN_SIZES[1], HIDDEN_SIZES[3]]

    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outputs = backbone(pixel_values)
    assert [tuple(feature_map.shape) for feature_map in outputs.feature_maps] == [
        (2, HIDDEN_SIZES[1], 64 // 8, 96 // 8),
        (2, HIDDEN_SIZES[3], 64 // 32, 96 // 32),
    ]
    assert outputs.hidden_states is None

    with torch.no_grad():
        outputs = backbone(pixel_values, output_hidden_states=True)
    assert [feature_map.shape[1] for feature_map in outputs.hidden_states] == HIDDEN_SIZES
    assert [feature_map.shape[-1] for feature_map in outputs.hidden_states] == [96 // 4, 96 // 8, 96 // 16, 96 // 32]
    torch.testing.assert_close(outputs.feature_maps[0], outputs.hidden_states[1])
    torch.testing.assert_close(outputs.feature_maps[1], outputs.hidden_states[3])


def test_out_features_and_out_indices_stay_aligned():
    config = tiny_backbone_config(out_features=["stage1", "stage3"])
    assert config.out_indices == [0, 2]
    config = tiny_backbone_config(out_indices=[-2, -1])
    assert config.out_features == ["stage3", "stage4"]

    backbone = AutoBackbone.from_config(tiny_backbone_config(out_features=ALL_STAGES))
    backbone.out_features = ["stage1"]
    assert backbone.out_indices == [0] and backbone.channels == [HIDDEN_SIZES[0]]
    with torch.no_grad():
        feature_maps = backbone.eval()(torch.randn(1, 3, 32, 32)).feature_maps
    assert len(feature_maps) == 1 and feature_maps[0].shape[1] == HIDDEN_SIZES[0]

    restored = PaCaViTConfig.from_dict(tiny_backbone_config(out_indices=[1, 2]).to_dict())
    assert restored.out_features == ["stage2", "stage3"] and restored.out_indices == [1, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"out_features": ["stage5"]},
        {"out_features": ["stem"]},
        {"out_features": ["stage3", "stage1"]},
        {"out_features": ["stage2", "stage2"]},
        {"out_indices": [4]},
        {"out_indices": [2, 1]},
        {"out_features": ["stage1"], "out_indices": [2]},
        {"out_features": ["stage1", "stage2"], "out_indices": [0]},
    ],
)
def test_invalid_out_features_raise(kwargs):
    with pytest.raises(ValueError):
        tiny_backbone_config(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# UperNet


def test_upernet_builds_paca_backbone_from_object_or_dict():
    config = tiny_upernet_config()
    assert isinstance(UperNetForSemanticSegmentation(config).backbone, PaCaViTBackbone)

    # What a user writes without importing the config class: a dict naming the registered model type.
    from_dict = UperNetConfig(
        backbone_config={**tiny_backbone_config().to_dict(), "out_features": ALL_STAGES, "out_indices": None},
        num_labels=NUM_LABELS,
        hidden_size=16,
        pool_scales=[1, 2],
        auxiliary_channels=16,
    )
    assert isinstance(from_dict.backbone_config, PaCaViTConfig)
    assert from_dict.backbone_config.out_indices == [0, 1, 2, 3]
    model = UperNetForSemanticSegmentation(from_dict)
    assert isinstance(model.backbone, PaCaViTBackbone)
    # Without `auxiliary_in_channels`, UperNet's auxiliary head reads stage3's width from the backbone.
    assert model.auxiliary_head.in_channels == HIDDEN_SIZES[2]


def test_upernet_training_loss_falls():
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(tiny_upernet_config())
    assert isinstance(model.backbone, PaCaViTBackbone)
    assert model.backbone.channels == HIDDEN_SIZES
    pixel_values, labels = quadrant_batch()

    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    assert logits.shape == (2, NUM_LABELS, 64, 64)

    def step(model):
        outputs = model(pixel_values=pixel_values, labels=labels)
        assert outputs.logits.shape == (2, NUM_LABELS, 64, 64)
        return outputs.loss

    # The backbone is in the gradient path.
    model.train()
    step(model).backward()
    assert model.backbone.embeddings.conv1.weight.grad.abs().sum() > 0
    assert model.backbone.stages[0].layers[0].attention.clustering.to_clusters.weight.grad.abs().sum() > 0
    model.zero_grad()

    losses = train(model, step, num_steps=10, lr=1e-2)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


def test_upernet_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(tiny_upernet_config())
    pixel_values, labels = quadrant_batch()
    # One step, so that every weight (and the BatchNorm statistics) differs from a fresh initialisation.
    train(model, lambda model: model(pixel_values=pixel_values, labels=labels).loss, num_steps=1, lr=1e-2)
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits

    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path).backbone_config, PaCaViTConfig)
    loaded, info = UperNetForSemanticSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(loaded.backbone, PaCaViTBackbone)
    assert loaded.backbone.out_features == ALL_STAGES
    loaded.eval()
    with torch.no_grad():
        actual = loaded(pixel_values=pixel_values).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Mask2Former (instance segmentation)


def test_mask2former_instance_segmentation_training_loss_falls():
    torch.manual_seed(0)
    config = Mask2FormerConfig(
        backbone_config=tiny_backbone_config(out_features=ALL_STAGES),
        num_labels=2,
        feature_size=32,  # the pixel decoder's GroupNorm(32, feature_size) needs a multiple of 32
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=4,
        train_num_points=256,
    )
    model = Mask2FormerForUniversalSegmentation(config)
    assert isinstance(model.model.pixel_level_module.encoder, PaCaViTBackbone)

    # Two instances per image (the right and the bottom regions of the quadrant layout), classes 0 and 1.
    pixel_values, labels = quadrant_batch()
    mask_labels = [torch.stack([(label == 1).float(), (label == 2).float()]) for label in labels]
    class_labels = [torch.tensor([0, 1]) for _ in labels]

    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    assert outputs.class_queries_logits.shape == (2, 4, 2 + 1)  # + the "no object" class
    assert outputs.masks_queries_logits.shape == (2, 4, 64 // 4, 64 // 4)

    def step(model):
        return model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss

    model.train()
    step(model).backward()
    assert model.model.pixel_level_module.encoder.embeddings.conv1.weight.grad.abs().sum() > 0
    model.zero_grad()

    losses = train(model, step, num_steps=15, lr=5e-3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses

    # transformers' post-processing turns the outputs into instances at the image size (PIL backend: no torchvision).
    from transformers import Mask2FormerImageProcessorPil

    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    instances = Mask2FormerImageProcessorPil().post_process_instance_segmentation(
        outputs, threshold=0.5, target_sizes=[(64, 64)] * 2
    )
    assert [tuple(result["segmentation"].shape) for result in instances] == [(64, 64)] * 2
    # After these few steps each image's two confident instances are the two annotated classes.
    assert [sorted(segment["label_id"] for segment in result["segments_info"]) for result in instances] == [[0, 1]] * 2


def test_upernet_with_a_backbone_loaded_from_a_folder(tmp_path):
    """The README's route from a saved folder to UperNet (AutoBackbone.from_pretrained / UperNetConfig(backbone=...)
    query the Hub for local folders in transformers 5.23-5.24): PaCaViTBackbone.from_pretrained, then UperNet with
    its config and weights."""
    torch.manual_seed(0)
    classifier = PaCaViTForImageClassification(tiny_backbone_config(num_labels=3))
    classifier.save_pretrained(tmp_path)
    backbone = PaCaViTBackbone.from_pretrained(tmp_path, out_features=ALL_STAGES)
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(tensor, classifier.pacavit.state_dict()[name], rtol=0, atol=0, msg=name)
    upernet = UperNetForSemanticSegmentation(
        UperNetConfig(backbone_config=backbone.config, hidden_size=16, auxiliary_in_channels=None, num_labels=4)
    )
    upernet.backbone.load_state_dict(backbone.state_dict())
    upernet.eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            upernet.backbone(pixel_values).feature_maps[-1], classifier.pacavit(pixel_values).last_hidden_state
        )
        assert upernet(pixel_values).logits.shape == (1, 4, 64, 64)
