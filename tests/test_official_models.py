"""Every released checkpoint's layout converts by official name; parameters and GMACs match the manifest."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from paca_hf import PaCaViTConfig, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation
from paca_hf.configuration_pacavit import OFFICIAL_NAMES
from paca_hf.convert import convert_state_dict
from reference import manifest

MANIFEST = manifest()
IMAGENET = [name for name, entry in MANIFEST.items() if entry["kind"] == "classification"]
ADE20K = [name for name, entry in MANIFEST.items() if entry["kind"] == "semantic-segmentation"]


def random_state_dict(entry):
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for key, shape in entry["state_dict"].items():
        if key.endswith("blur_filter"):  # a constant of the authors' BlurConv2d, not a weight
            taps = torch.tensor([1.0, 2.0, 1.0])
            state_dict[key] = (taps[:, None] * taps[None, :] / 16).expand(shape).clone()
        elif key.endswith("num_batches_tracked"):
            state_dict[key] = torch.tensor(7)
        else:
            state_dict[key] = torch.randn(shape, generator=generator)
    return state_dict


def gmacs(model, size):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2 / 1e9


def test_manifest_covers_all_official_names():
    assert sorted(IMAGENET + ADE20K) == sorted(OFFICIAL_NAMES)
    assert len(IMAGENET) == 13 and len(ADE20K) == 6


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
