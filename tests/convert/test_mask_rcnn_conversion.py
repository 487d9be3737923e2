"""The Mask R-CNN detectors through the converter: class names, the command line on the reference detector, the
COCO releases."""

import pytest
import torch
from reference import case_checkpoint, case_config, case_io, upernet_maskrcnn_manifest
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
from transformers import AutoConfig, AutoImageProcessor, AutoModelForInstanceSegmentation

from paca_hf.configuration_pacavit import load_id2label
from paca_hf.configuration_pacavit_mask_rcnn import PaCaViTMaskRCNNConfig
from paca_hf.convert import build_config, build_model, convert_detector_state_dict, official_config
from paca_hf.hub import convert_cli
from paca_hf.releases import DETECTOR, RELEASES, get_release


CASE = "det_maskrcnn_conv"
DOWNSTREAM = upernet_maskrcnn_manifest()
MASK_RCNN = [name for name, entry in DOWNSTREAM.items() if entry["kind"] == "instance-segmentation"]


def test_coco_class_names_are_torchvisions_80_in_order():
    # torchvision lists COCO's 91 category ids with "N/A" for the unused ones; mmdetection's labels are the 80 used
    categories = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    expected = [name for name in categories if name not in ("__background__", "N/A")]
    id2label = load_id2label("coco")
    assert list(id2label) == list(range(80))
    assert list(id2label.values()) == expected


# ------------------------------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """`scripts/convert_official_checkpoint.py --task instance-segmentation` on the reference detector, its backbone
    given as a PaCa-ViT config.json."""
    folder = tmp_path_factory.mktemp("detector")
    case_config(CASE).save_pretrained(folder / "backbone")
    code = convert_cli.main(
        [
            "--checkpoint",
            str(case_checkpoint(CASE)),
            "--config",
            str(folder / "backbone" / "config.json"),
            "--output-dir",
            str(folder / "repo"),
            "--task",
            "instance-segmentation",
        ]
    )
    assert code == 0
    return folder / "repo"


def test_cli_converts_the_reference_detector_whole(converted):
    import paca_hf  # noqa: F401  (registers the detector with the Auto classes)

    assert isinstance(AutoConfig.from_pretrained(converted), PaCaViTMaskRCNNConfig)
    model = AutoModelForInstanceSegmentation.from_pretrained(converted).eval()
    assert type(model).__name__ == "PaCaViTMaskRCNNForInstanceSegmentation"
    processor = AutoImageProcessor.from_pretrained(converted)
    assert type(processor).__name__ == "PaCaViTMaskRCNNImageProcessor"
    config = model.config
    # head sizes and classes read from the checkpoint (README: FPN / RPN 32, box head 64, mask head 4 x 32, 5 classes)
    assert (config.fpn_hidden_size, config.rpn_hidden_size, config.box_head_hidden_size) == (32, 32, 64)
    assert (config.mask_head_hidden_size, config.num_mask_head_convs, config.num_labels) == (32, 4, 5)
    classes = torch.load(case_checkpoint(CASE), weights_only=True)["meta"]["dataset_meta"]["classes"]
    assert [config.id2label[index] for index in range(5)] == classes
    # the README's 1,053,070, plus torchvision's background deltas (4 x (64 + 1)) and mask channel (32 + 1)
    assert sum(parameter.numel() for parameter in model.parameters()) == 1_053_070 + 4 * 65 + 33
    io = case_io(CASE)
    for i in (0, 1):
        with torch.no_grad():
            outputs = model(io[f"input_{i}"], image_sizes=io[f"img_shape_{i}"][None])
        raw_size = [tuple(io[f"raw_image_{i}"].shape[:2])]
        detections = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=raw_size)[0]
        torch.testing.assert_close(detections["boxes"], io[f"output_{i}_det_bboxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(detections["scores"], io[f"output_{i}_det_scores"], rtol=0, atol=1e-4)
        assert detections["labels"].tolist() == io[f"output_{i}_det_labels"].tolist()
        masks = processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=raw_size, return_binary_maps=True
        )[0]["segmentation"]
        reference = io[f"output_{i}_det_masks"].bool()
        reference = reference[reference.flatten(1).any(1)]
        assert masks.shape == reference.shape and int((masks != reference).sum()) <= 3


def test_detector_checkpoint_converted_as_a_classifier_is_refused(tmp_path, capsys):
    case_config(CASE).save_pretrained(tmp_path / "backbone")
    code = convert_cli.main(
        [
            "--checkpoint",
            str(case_checkpoint(CASE)),
            "--config",
            str(tmp_path / "backbone" / "config.json"),
            "--output-dir",
            str(tmp_path / "repo"),
            "--task",
            "image-classification",
        ]
    )
    assert code == 1 and not (tmp_path / "repo").exists()
    error = capsys.readouterr().err
    assert "detector" in error and "--task instance-segmentation" in error and "--task backbone" in error


def test_backbone_task_still_extracts_the_backbone_alone(tmp_path):
    config = case_config(CASE)
    config.out_features = ["stage1", "stage2", "stage3", "stage4"]
    config.save_pretrained(tmp_path / "backbone")
    code = convert_cli.main(
        [
            "--checkpoint",
            str(case_checkpoint(CASE)),
            "--config",
            str(tmp_path / "backbone" / "config.json"),
            "--output-dir",
            str(tmp_path / "repo"),
            "--task",
            "backbone",
        ]
    )
    assert code == 0
    from paca_hf import PaCaViTBackbone

    backbone = PaCaViTBackbone.from_pretrained(tmp_path / "repo").eval()
    io = case_io(CASE)
    with torch.no_grad():
        features = backbone(io["input_0"]).feature_maps
    for stage, feature in enumerate(features):
        torch.testing.assert_close(feature, io[f"output_0_feature_{stage}"], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------------------------- the COCO releases


@pytest.mark.parametrize("name", MASK_RCNN)
def test_official_detector_layout_converts_with_the_manifests_exact_parameter_count(name):
    entry = DOWNSTREAM[name]
    source = {key: torch.empty(shape, device="meta") for key, shape in entry["state_dict"].items()}
    with torch.device("meta"):
        config = build_config(name, source, task="instance-segmentation")
        model = build_model(config, "instance-segmentation")
    assert type(model).__name__ == "PaCaViTMaskRCNNForInstanceSegmentation"
    assert config.num_labels == 80 and config.id2label[0] == "person" and config.id2label[79] == "toothbrush"
    assert (config.fpn_hidden_size, config.box_head_hidden_size, config.mask_head_hidden_size) == (256, 1024, 256)
    assert official_config(name).to_dict() == config.to_dict()  # from the name alone, the same config
    weights = convert_detector_state_dict(source, model, config.backbone_config.clustering_type)
    assert set(weights) == set(model.state_dict())  # strict: every tensor used, none missing
    # torchvision's heads hold background box deltas and a background mask channel that mmdetection's do not (both
    # have the classifier's background row): 4 * (box_head_hidden_size + 1) + (mask_head_hidden_size + 1) more
    extra = 4 * 1025 + 257
    assert sum(parameter.numel() for parameter in model.parameters()) == entry["num_parameters"] + extra
    assert round(entry["num_parameters"] / 1e6, 1) == get_release(name).params_m


def test_coco_releases_are_detectors():
    detectors = [release for release in RELEASES if release.form == DETECTOR]
    assert [release.repo_id for release in detectors] == [
        "ivmcl/pacavit-tiny-coco",
        "ivmcl/pacavit-small-coco",
        "ivmcl/pacavit-small-mlp-coco",
        "ivmcl/pacavit-base-coco",
    ]
    assert {release.official_name for release in detectors} == set(MASK_RCNN)
    assert all(release.task == "instance-segmentation" for release in detectors)


def test_detector_conversion_is_strict(tmp_path, capsys):
    """A detector checkpoint with a tensor missing and one too many: refused, both named in the checkpoint's own
    terms, nothing written."""
    checkpoint = torch.load(case_checkpoint(CASE), weights_only=True)
    state_dict = dict(checkpoint["state_dict"])
    del state_dict["roi_head.mask_head.convs.2.conv.bias"]
    state_dict["roi_head.bbox_head.extra_fc.weight"] = torch.zeros(4, 4)
    torch.save({"meta": checkpoint["meta"], "state_dict": state_dict}, tmp_path / "broken.pth")
    case_config(CASE).save_pretrained(tmp_path / "backbone")
    code = convert_cli.main(
        [
            "--checkpoint",
            str(tmp_path / "broken.pth"),
            "--config",
            str(tmp_path / "backbone" / "config.json"),
            "--output-dir",
            str(tmp_path / "repo"),
            "--task",
            "instance-segmentation",
        ]
    )
    assert code == 1 and not (tmp_path / "repo").exists()
    error = capsys.readouterr().err
    assert "roi_head.mask_head.convs.2.conv.bias" in error and "roi_head.bbox_head.extra_fc.weight" in error
