"""Weight names as transformers 5.25's vision models name them, and folders saved with the names of before still
loading (transformers' conversion mapping) with identical outputs."""

import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import UperNetConfig, UperNetForSemanticSegmentation

from paca_hf import PaCaViTBackbone, PaCaViTForImageClassification, PaCaViTForSemanticSegmentation, PaCaViTModel
from tiny_configs import tiny_config


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
    model = PaCaViTModel(tiny_config())
    names = set(model.state_dict())
    assert "stages.0.layers.0.attention.q_proj.weight" in names
    assert {"stages.3.layers.0.mlp.fc1.bias", "stages.3.layers.0.mlp.dwconv.weight", "stages.3.layers.0.mlp.fc2.bias"} <= names
    assert {"embeddings.conv1.weight", "embeddings.conv2.weight"} <= names
    assert not any(re.search(r"\.(query|key|value|dense1|dense2|depthwise_conv)\.|projection\.\d", name) for name in names)
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
    model = model_class(tiny_config(**overrides)).eval()
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
        backbone_config=tiny_config(out_features=["stage1", "stage2", "stage3", "stage4"]),
        hidden_size=16, pool_scales=[1, 2], auxiliary_in_channels=32, auxiliary_channels=16, num_labels=3,
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
