"""Every released checkpoint's layout converts by official name; parameters and GMACs match the manifest."""

import pytest
import torch
from reference import manifest, random_state_dict, upernet_maskrcnn_manifest
from torch.utils.flop_counter import FlopCounterMode

from paca_hf import PaCaViTConfig, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation
from paca_hf.configuration_pacavit import OFFICIAL_NAMES
from paca_hf.convert import ConversionError, build_config, build_model, convert_state_dict, official_config


MANIFEST = manifest()
IMAGENET = [name for name, entry in MANIFEST.items() if entry["kind"] == "classification"]
ADE20K = [name for name, entry in MANIFEST.items() if entry["kind"] == "semantic-segmentation"]
DOWNSTREAM = upernet_maskrcnn_manifest()
UPERNET = [name for name, entry in DOWNSTREAM.items() if entry["kind"] == "semantic-segmentation"]
MASK_RCNN = [name for name, entry in DOWNSTREAM.items() if entry["kind"] == "instance-segmentation"]


def gmacs(model, size, device="cpu"):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size, device=device))
    return counter.get_total_flops() / 2 / 1e9


def test_manifest_covers_all_official_names():
    assert sorted(IMAGENET + ADE20K + UPERNET + MASK_RCNN) == sorted(OFFICIAL_NAMES)
    assert len(IMAGENET) == 13 and len(ADE20K) == 6 and len(UPERNET) == 3 and len(MASK_RCNN) == 4


def meta_layout(entry) -> dict:
    """The checkpoint's keys and shapes as tensors on the meta device (no memory, no values)."""
    return {key: torch.empty(shape, device="meta") for key, shape in entry["state_dict"].items()}


@pytest.mark.parametrize("name", UPERNET)
def test_upernet_layout_converts_by_name(name):
    entry = DOWNSTREAM[name]
    source = meta_layout(entry)
    with torch.device("meta"):
        config = build_config(name, source, task="semantic-segmentation")
        model = build_model(config, "semantic-segmentation")
    assert type(model).__name__ == "UperNetForSemanticSegmentation" and config.use_auxiliary_head
    backbone = PaCaViTConfig.from_official_name(name)
    assert backbone.num_clusters == [200, 200, 200, 0] and backbone.drop_path_rate == 0.1
    assert config.backbone_config.to_dict() == backbone.to_dict()
    assert config.num_labels == 150 and config.id2label[0] == "wall" and config.hidden_size == 512
    assert official_config(name).to_dict() == config.to_dict()  # from the name alone, the same config
    weights, unused = convert_state_dict(source, model, "conv")
    assert unused == [] and set(weights) == set(model.state_dict())  # every key used, none missing
    assert sum(p.numel() for p in model.parameters()) == entry["num_parameters"]
    auxiliary = sum(p.numel() for p in model.auxiliary_head.parameters())
    assert auxiliary == entry["num_parameters_auxiliary_head"]
    model.auxiliary_head = None  # the published GMACs count inference only
    assert gmacs(model.eval(), 512, device="meta") == pytest.approx(entry["gmacs_512"], rel=0.02)


@pytest.mark.parametrize("name", MASK_RCNN)
def test_mask_rcnn_backbone_is_extracted_by_name(name):
    entry = DOWNSTREAM[name]
    source = meta_layout(entry)
    with torch.device("meta"):
        config = build_config(name, source, task="backbone")
        model = build_model(config, "backbone")
    assert type(model).__name__ == "PaCaViTBackbone"
    assert config.num_clusters == [100, 100, 100, 0] and config.drop_path_rate == 0.1
    assert config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    weights, unused = convert_state_dict(source, model, config.clustering_type)
    assert set(weights) == set(model.state_dict())
    backbone_keys = {key for key in source if key.startswith("backbone.")}
    assert set(unused) == set(source) - backbone_keys  # every backbone tensor used, the rest reported
    assert {key.split(".")[0] for key in unused} == {"neck", "rpn_head", "roi_head"}
    assert sum(p.numel() for p in model.parameters()) == entry["num_parameters_backbone"]
    # With the prefix removed, the backbone's keys are the matching ImageNet classifier's without the head.
    classifier = MANIFEST[name.removeprefix("mask_rcnn_").split("_mstrain")[0]]["state_dict"]
    without_head = {key for key in classifier if not key.startswith("head.")}
    assert {key.removeprefix("backbone.") for key in backbone_keys} == without_head


def test_wrong_config_names_the_checkpoints_keys_and_the_matching_official_name():
    small = {
        key: torch.empty(shape, device="meta")
        for key, shape in MANIFEST["pacavit_small_p2cconv_100_0"]["state_dict"].items()
    }
    with torch.device("meta"):
        model = build_model(PaCaViTConfig.from_official_name("pacavit_tiny_p2cconv_100_0"), "image-classification")
    with pytest.raises(ConversionError) as error:
        convert_state_dict(small, model, "conv")
    message = str(error.value)
    assert "this looks like pacavit_small_p2cconv_100_0" in message
    assert "stage1.2.attn.q.weight" in message  # the checkpoint's own key names, as in the file
    assert len(message) < 2500, len(message)  # grouped and capped, not one entry per tensor


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_checkpoint_converts_by_name(name):
    entry = MANIFEST[name]
    config = PaCaViTConfig.from_official_name(name, attn_implementation="eager")
    assert config.num_labels == 1000 and config.id2label[0] == "tench, Tinca tinca"
    model = PaCaViTForImageClassification(config).eval()
    source = random_state_dict(entry)
    weights, unused = convert_state_dict(source, model, config.clustering_type)
    assert unused == []
    model.load_state_dict(weights, strict=True)
    assert sum(p.numel() for p in model.parameters()) == entry["num_parameters"]
    # Every value lands where it belongs: the head is copied, not re-initialised.
    torch.testing.assert_close(model.classifier.weight, source["head.weight"], atol=0, rtol=0)
    if name in ("pacavit_tiny_p2cconv_100_0", "pacavit_small_p2cconv_100_0", "pacavit_base_p2cconv_100_0"):
        assert gmacs(model, 224) == pytest.approx(entry["gmacs_224"], rel=0.02)


@pytest.mark.parametrize("name", ADE20K)
def test_ade20k_checkpoint_converts_by_name(name):
    entry = MANIFEST[name]
    config = PaCaViTConfig.from_official_name(name, attn_implementation="eager")
    assert config.num_clusters == entry["downstream_clusters"]
    assert config.num_labels == 150 and config.id2label[0] == "wall"
    model = PaCaViTForSemanticSegmentation(config).eval()
    weights, unused = convert_state_dict(random_state_dict(entry), model, config.clustering_type)
    assert unused == []
    model.load_state_dict(weights, strict=True)
    assert sum(p.numel() for p in model.parameters()) == entry["num_parameters"]
    if any(size in name for size in ("pacavit_tiny_p2cconv", "pacavit_small_p2cconv", "pacavit_base_p2cconv")):
        assert gmacs(model, 512) == pytest.approx(entry["gmacs_512"], rel=0.02)


def test_unknown_official_name_lists_known_names():
    with pytest.raises(ValueError, match="pacavit_small_p2cconv_100_0"):
        PaCaViTConfig.from_official_name("pacavit_huge")
