"""The authors' UperNet segmentors convert to transformers' `UperNetForSemanticSegmentation` over a PaCa-ViT backbone:
the reference model built from their backbone code and mmseg 1.0.0's UPerHead / FCNHead reproduces its logits and
auxiliary logits, through the converter's command line, and works in `pipeline("image-segmentation")`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference import case_checkpoint, case_config, case_io
from transformers import UperNetForSemanticSegmentation, pipeline

from paca_hf.hub import check_model_card, repo_files
from paca_hf.hub.model_card import custom_release
from paca_hf.loading import default_image_processor


ROOT = Path(__file__).resolve().parents[2]
CASE = "seg_upernet_conv"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The reference UperNet converted by the command line, with only the backbone's config.json given: the UperNet
    heads are recognised and sized from the checkpoint's keys."""
    tmp = tmp_path_factory.mktemp("upernet")
    config = case_config(CASE)
    config.save_pretrained(tmp / "backbone-config")
    output = tmp / "converted"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "convert_official_checkpoint.py"),
            "--checkpoint",
            str(case_checkpoint(CASE)),
            "--config",
            str(tmp / "backbone-config" / "config.json"),
            "--output-dir",
            str(output),
            "--task",
            "semantic-segmentation",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_reference_upernet_logits_and_auxiliary_logits(converted):
    model = UperNetForSemanticSegmentation.from_pretrained(converted).eval()
    config = model.config
    assert config.hidden_size == 32 and config.auxiliary_channels == 16 and config.num_labels == 6
    assert config.pool_scales == [1, 2, 3, 6] and config.use_auxiliary_head
    assert config.backbone_config.num_clusters == [16, 16, 16, 0]
    io = case_io(CASE)
    inputs = sorted(key for key in io if key.startswith("input_"))
    assert len(inputs) == 2
    with torch.no_grad():
        for key in inputs:
            index = key.split("_")[1]
            features = model.backbone(io[key]).feature_maps
            for stage, feature in enumerate(features):
                torch.testing.assert_close(feature, io[f"output_{index}_feature_{stage}"], atol=1e-4, rtol=0)
            # mmseg's logits are before any upsampling: the heads' own outputs.
            torch.testing.assert_close(model.decode_head(features), io[f"output_{index}_logits"], atol=1e-4, rtol=0)
            torch.testing.assert_close(
                model.auxiliary_head(features), io[f"output_{index}_aux_logits"], atol=1e-4, rtol=0
            )
            # And the full forward upsamples exactly those logits to the input size.
            outputs = model(io[key])
            expected = torch.nn.functional.interpolate(
                io[f"output_{index}_logits"], size=io[key].shape[2:], mode="bilinear", align_corners=False
            )
            torch.testing.assert_close(outputs.logits, expected, atol=1e-4, rtol=0)


def test_converted_upernet_is_a_complete_repo(converted):
    files = sorted(path.name for path in converted.iterdir())
    assert files == sorted(repo_files("upernet"))
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "upernet" and config["backbone_config"]["model_type"] == "pacavit"
    assert "auto_map" not in config  # transformers has UperNet; `import paca_hf` registers the backbone
    processor = json.loads((converted / "preprocessor_config.json").read_text())
    expected = default_image_processor("semantic-segmentation").to_dict()  # as the PaCa-head segmentors'
    for key in ("size", "resample", "antialias", "do_center_crop", "do_reduce_labels", "image_mean", "image_std"):
        assert json.loads(json.dumps(expected[key])) == processor[key], key
    card = (converted / "README.md").read_text()
    check_model_card(card, custom_release("upernet", str(converted), case_checkpoint(CASE).name))


def test_pipeline_on_the_converted_upernet(converted):
    segmenter = pipeline("image-segmentation", model=str(converted), device="cpu")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    segments = segmenter(image)
    assert segments and all(segment["mask"].size == image.size for segment in segments)
    labels = {segment["label"] for segment in segments}
    assert labels <= {f"LABEL_{index}" for index in range(6)}
    masks = np.stack([np.array(segment["mask"]) > 0 for segment in segments])
    assert (masks.sum(axis=0) == 1).all()  # every pixel in exactly one segment


def _conv_module(x, tensors, prefix):
    """mmseg's `ConvModule` (3x3 conv without bias, BatchNorm in eval mode, ReLU) from the checkpoint's tensors."""
    x = torch.nn.functional.conv2d(x, tensors[f"{prefix}.conv.weight"], padding=1)
    x = torch.nn.functional.batch_norm(
        x,
        tensors[f"{prefix}.bn.running_mean"],
        tensors[f"{prefix}.bn.running_var"],
        tensors[f"{prefix}.bn.weight"],
        tensors[f"{prefix}.bn.bias"],
        eps=1e-5,
    )
    return torch.relu(x)


def test_auxiliary_head_with_concat_input_converts():
    """mmseg's `FCNHead(concat_input=True)`: `conv_cat` over the stage-3 map concatenated with the convs' output, then
    `conv_seg`; the converted auxiliary head computes it from the checkpoint's own tensors."""
    from paca_hf.convert import convert_source, load_checkpoint

    source = load_checkpoint(case_checkpoint(CASE))
    in_channels, channels = source["auxiliary_head.convs.0.conv.weight"].shape[1], 16
    generator = torch.Generator().manual_seed(0)
    source["auxiliary_head.conv_cat.conv.weight"] = (
        torch.randn(channels, in_channels + channels, 3, 3, generator=generator) * 0.05
    )
    source["auxiliary_head.conv_cat.bn.weight"] = torch.rand(channels, generator=generator) + 0.5
    source["auxiliary_head.conv_cat.bn.bias"] = torch.randn(channels, generator=generator)
    source["auxiliary_head.conv_cat.bn.running_mean"] = torch.randn(channels, generator=generator)
    source["auxiliary_head.conv_cat.bn.running_var"] = torch.rand(channels, generator=generator) + 0.5
    source["auxiliary_head.conv_cat.bn.num_batches_tracked"] = torch.tensor(7)
    model, unused = convert_source(source, case_config(CASE), "semantic-segmentation")
    assert unused == [] and model.config.auxiliary_concat_input
    io = case_io(CASE)
    with torch.no_grad():
        features = [io[f"output_0_feature_{stage}"] for stage in range(4)]
        hidden = _conv_module(features[2], source, "auxiliary_head.convs.0")
        hidden = _conv_module(torch.cat([features[2], hidden], dim=1), source, "auxiliary_head.conv_cat")
        expected = torch.nn.functional.conv2d(
            hidden, source["auxiliary_head.conv_seg.weight"], source["auxiliary_head.conv_seg.bias"]
        )
        torch.testing.assert_close(model.auxiliary_head(features), expected, atol=1e-4, rtol=0)
        # The same hand computation without conv_cat gives the authors' auxiliary logits of the reference case.
        plain = torch.nn.functional.conv2d(
            _conv_module(features[2], source, "auxiliary_head.convs.0"),
            source["auxiliary_head.conv_seg.weight"],
            source["auxiliary_head.conv_seg.bias"],
        )
        torch.testing.assert_close(plain, io["output_0_aux_logits"], atol=1e-4, rtol=0)
