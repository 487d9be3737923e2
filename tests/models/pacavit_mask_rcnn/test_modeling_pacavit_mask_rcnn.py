"""PaCa-ViT Mask R-CNN: the converted reference detector computes what mmdetection 3 computed on the authors' model
(../shared/reference/det_maskrcnn_conv.*, README "Mask R-CNN reference"), its losses with mmdetection's samples,
the Auto classes, training and bad input."""

import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from reference import case_checkpoint, case_config, case_io, cases, upernet_maskrcnn_manifest
from safetensors.torch import load_file, save_file
from tiny_configs import tiny_config

from paca_hf import PaCaViTConfig, PaCaViTMaskRCNNConfig, PaCaViTMaskRCNNForInstanceSegmentation
from paca_hf.convert import ConversionError, convert_detector_state_dict
from paca_hf.modeling_pacavit_mask_rcnn import PresetSampler


pytestmark = pytest.mark.usefixtures("one_thread")

CASE = "det_maskrcnn_conv"
LEVELS = ["0", "1", "2", "3", "pool"]


def reference_config() -> PaCaViTMaskRCNNConfig:
    case = cases()[CASE]
    return PaCaViTMaskRCNNConfig(
        backbone_config=case_config(CASE).to_dict(),
        fpn_hidden_size=case["neck"]["out_channels"],
        rpn_hidden_size=case["rpn_head"]["feat_channels"],
        box_head_hidden_size=case["roi_head"]["bbox_head"]["fc_out_channels"],
        mask_head_hidden_size=case["roi_head"]["mask_head"]["conv_out_channels"],
        num_labels=case["num_classes"],
    )


def checkpoint() -> dict[str, torch.Tensor]:
    return torch.load(case_checkpoint(CASE), weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def io():
    return case_io(CASE)


@pytest.fixture(scope="module")
def detector():
    model = PaCaViTMaskRCNNForInstanceSegmentation(reference_config())
    model.load_state_dict(convert_detector_state_dict(checkpoint(), model, "conv"), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def outputs(detector, io):
    with torch.no_grad():
        return [detector(io[f"input_{i}"], image_sizes=io[f"img_shape_{i}"][None]) for i in (0, 1)]


def tiny_detector(**overrides) -> PaCaViTMaskRCNNForInstanceSegmentation:
    options = {
        "backbone_config": tiny_config(),
        "fpn_hidden_size": 16,
        "rpn_hidden_size": 16,
        "box_head_hidden_size": 32,
        "mask_head_hidden_size": 16,
        "num_mask_head_convs": 2,
        "num_labels": 3,
    }
    options.update(overrides)
    return PaCaViTMaskRCNNForInstanceSegmentation(PaCaViTMaskRCNNConfig(**options))


def tiny_labels(height=64, width=96):
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 8:40, 10:50] = True
    masks[1, 30:60, 60:90] = True
    return [
        {
            "boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0], [60.0, 30.0, 90.0, 60.0]]),
            "class_labels": torch.tensor([0, 2]),
            "masks": masks,
        }
    ]


# Configuration.


def test_config_defaults_are_mmdetections_mask_rcnn():
    config = PaCaViTMaskRCNNConfig()
    assert (config.fpn_hidden_size, config.num_fpn_levels) == (256, 5)
    assert (config.anchor_scales, config.anchor_ratios, config.anchor_strides) == (
        [8],
        [0.5, 1.0, 2.0],
        [4, 8, 16, 32, 64],
    )
    assert (config.box_roi_output_size, config.mask_roi_output_size, config.mask_size) == (7, 14, 28)
    assert (config.box_head_hidden_size, config.num_box_head_fcs) == (1024, 2)
    assert (config.mask_head_hidden_size, config.num_mask_head_convs) == (256, 4)
    assert (config.rpn_pre_nms_top_n_test, config.rpn_post_nms_top_n_test, config.rpn_nms_threshold) == (
        1000,
        1000,
        0.7,
    )
    assert (config.rpn_pre_nms_top_n_train, config.rpn_post_nms_top_n_train) == (2000, 1000)
    assert (config.box_score_threshold, config.box_nms_threshold, config.detections_per_image) == (0.05, 0.5, 100)
    assert config.mask_threshold == 0.5
    assert (config.rpn_batch_size_per_image, config.rpn_positive_fraction) == (256, 0.5)
    assert (config.roi_batch_size_per_image, config.roi_positive_fraction) == (512, 0.25)
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]


def test_config_roundtrip_with_backbone_as_dict(tmp_path):
    config = PaCaViTMaskRCNNConfig(
        backbone_config=tiny_config().to_dict(), fpn_hidden_size=16, rpn_hidden_size=16, id2label={0: "cat", 1: "dog"}
    )
    assert config.backbone_config.hidden_sizes == [16, 24, 32, 40]
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    config.save_pretrained(tmp_path)
    loaded = PaCaViTMaskRCNNConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.num_labels == 2 and loaded.id2label[1] == "dog"


def test_config_takes_every_stage_of_a_backbone_config_without_changing_it():
    backbone = tiny_config(out_features=["stage4"])
    config = PaCaViTMaskRCNNConfig(backbone_config=backbone, fpn_hidden_size=16, rpn_hidden_size=16)
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert backbone.out_features == ["stage4"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_fpn_levels", 4),
        ("anchor_strides", [4, 8, 16, 32, 128]),
        ("anchor_ratios", [0.5, -1.0]),
        ("rpn_hidden_size", 128),
        ("num_box_head_fcs", 3),
        ("rpn_nms_threshold", 1.5),
        ("detections_per_image", 0),
        ("box_regression_weights", [10.0, 10.0, 5.0]),
        ("roi_negative_iou_threshold", 0.6),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        PaCaViTMaskRCNNConfig(**{field: value})


# Conversion.


def test_converted_reference_has_the_authors_parameters(detector):
    # torchvision's heads add the background's 4 box deltas (a row of fc_reg each) and mask channel, zero.
    config = detector.config
    added = 4 * (config.box_head_hidden_size + 1) + (config.mask_head_hidden_size + 1)
    assert detector.num_parameters() - added == cases()[CASE]["num_parameters"] == 1_053_070
    predictor = detector.roi_heads.box_predictor
    assert torch.count_nonzero(predictor.bbox_pred.weight[:4]) == 0
    assert torch.count_nonzero(detector.roi_heads.mask_predictor.mask_fcn_logits.weight[0]) == 0
    # Background: mmdet's last row is torchvision's first.
    torch.testing.assert_close(predictor.cls_score.weight[0], checkpoint()["roi_head.bbox_head.fc_cls.weight"][-1])


def test_conversion_names_missing_unexpected_and_misshapen_tensors_in_the_checkpoints_terms():
    model = PaCaViTMaskRCNNForInstanceSegmentation(reference_config())
    source = checkpoint()
    del source["roi_head.mask_head.upsample.weight"], source["backbone.norm2.weight"]
    source["roi_head.bbox_head.extra.weight"] = torch.zeros(1)
    source["rpn_head.rpn_cls.weight"] = torch.zeros(6, 32, 1, 1)
    with pytest.raises(ConversionError) as error:
        convert_detector_state_dict(source, model, "conv")
    message = str(error.value)
    for name in (
        "roi_head.mask_head.upsample.weight",
        "backbone.norm2.weight",
        "roi_head.bbox_head.extra.weight",
        "rpn_head.rpn_cls.weight",
    ):
        assert name in message


COCO_DETECTORS = {
    name: entry for name, entry in upernet_maskrcnn_manifest().items() if entry["kind"] == "instance-segmentation"
}


@pytest.mark.parametrize("name", sorted(COCO_DETECTORS))
def test_released_coco_layouts_convert_whole_with_the_authors_parameter_counts(name):
    # The default config (mmdet's Mask R-CNN 1x) around the release's backbone, COCO's 80 classes: every tensor of
    # the checkpoint's layout is used (meta device: shapes only).
    entry = COCO_DETECTORS[name]
    source = {key: torch.empty(shape, device="meta") for key, shape in entry["state_dict"].items()}
    backbone = PaCaViTConfig.from_official_name(name)
    with torch.device("meta"):
        model = PaCaViTMaskRCNNForInstanceSegmentation(
            PaCaViTMaskRCNNConfig(backbone_config=backbone, num_labels=entry["num_classes"])
        )
    weights = convert_detector_state_dict(source, model, backbone.clustering_type)
    assert set(weights) == set(model.state_dict())
    added = 4 * (1024 + 1) + (256 + 1)  # torchvision's background deltas and mask channel
    assert model.num_parameters() - added == entry["num_parameters"]
    assert sum(p.numel() for p in model.backbone.parameters()) == entry["num_parameters_backbone"]
    assert sum(p.numel() for p in model.fpn.parameters()) == entry["num_parameters_neck"]
    assert sum(p.numel() for p in model.rpn.parameters()) == entry["num_parameters_rpn_head"]


# Parity with mmdetection (eval).


@pytest.mark.parametrize("index", [0, 1])
def test_backbone_fpn_and_rpn_maps_match_mmdetection(detector, outputs, io, index):
    pixel_values = io[f"input_{index}"]
    with torch.no_grad():
        features = detector.backbone(pixel_values).feature_maps
        objectness, deltas = detector.rpn.head(list(outputs[index].fpn_hidden_states))
    for level, feature in enumerate(features):
        torch.testing.assert_close(feature, io[f"output_{index}_feature_{level}"], atol=1e-4, rtol=0)
    for level in range(5):
        torch.testing.assert_close(
            outputs[index].fpn_hidden_states[level], io[f"output_{index}_fpn_{level}"], atol=1e-4, rtol=0
        )
        torch.testing.assert_close(objectness[level], io[f"output_{index}_rpn_cls_{level}"], atol=1e-4, rtol=0)
        torch.testing.assert_close(deltas[level], io[f"output_{index}_rpn_reg_{level}"], atol=1e-4, rtol=0)


def test_anchors_are_mmdetections(detector, io):
    base = torch.stack(list(detector.rpn.anchor_generator.cell_anchors))
    torch.testing.assert_close(base, io["rpn_base_anchors"], atol=1e-5, rtol=0)


def assert_same_set(boxes, reference, atol):
    """Every row of each has a row of the other within `atol` px (max over coordinates)."""
    assert boxes.shape == reference.shape
    distance = torch.cdist(boxes.double(), reference.double(), p=float("inf"))
    assert distance.min(dim=1).values.max() <= atol
    assert distance.min(dim=0).values.max() <= atol


@pytest.mark.parametrize("index", [0, 1])
def test_proposals_match_mmdetection_as_a_set(outputs, io, index):
    reference = io[f"output_{index}_proposals"]
    assert_same_set(outputs[index].proposals[0], reference[:, :4], atol=1e-3)
    torch.testing.assert_close(
        outputs[index].proposal_scores[0].sort(descending=True).values, reference[:, 4], atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("index", [0, 1])
def test_detections_and_mask_logits_match_mmdetection(outputs, io, index):
    output = outputs[index]
    reference_labels = io[f"output_{index}_det_labels"]
    count = len(reference_labels)
    assert count == cases()[CASE]["num_detections"][index]
    assert output.pred_boxes.shape == (1, count, 4) and output.mask_logits.shape == (1, count, 28, 28)
    torch.testing.assert_close(output.labels[0], reference_labels, atol=0, rtol=0)
    torch.testing.assert_close(output.pred_boxes[0], io[f"output_{index}_det_bboxes_input_scale"], atol=1e-3, rtol=0)
    torch.testing.assert_close(output.scores[0], io[f"output_{index}_det_scores"], atol=1e-4, rtol=0)
    own_class = io[f"output_{index}_mask_logits"][torch.arange(count), reference_labels]
    torch.testing.assert_close(output.mask_logits[0], own_class, atol=1e-3, rtol=0)
    assert output.image_sizes.tolist() == [io[f"img_shape_{index}"].tolist()]


def test_tiny_boxes_survive_as_in_mmdetection_and_deltas_clamp_on_both_sides():
    # Parts of mmdet's recipe the reference's margins do not reach (README: differences 5, 6 and the clamp).
    model = tiny_detector().eval()
    # RPN: mmdet keeps every box with w > 0 and h > 0 (torchvision drops those under 1e-3 px).
    proposals = torch.tensor([[[10.0, 10.0, 10.0005, 30.0], [40.0, 40.0, 50.0, 50.0], [5.0, 5.0, 5.0, 9.0]]])
    boxes, _ = model.rpn.filter_proposals(proposals, torch.tensor([[3.0, 2.0, 1.0]]), [(64, 96)], [3])
    assert boxes[0].tolist() == proposals[0, :2].tolist()
    # Detections: no minimum size (torchvision drops boxes under 0.01 px).
    class_logits = torch.tensor([[0.0, 5.0, 0.0, 0.0]])  # background first, then the 3 classes
    found, scores, labels = model.roi_heads.postprocess_detections(
        class_logits, torch.zeros(1, 16), [torch.tensor([[10.0, 10.0, 10.005, 12.0]])], [(64, 96)]
    )
    assert found[0].shape == (1, 4) and labels[0].tolist() == [1]
    # Deltas: dw, dh clamped to +-log(1000 / 16) on both sides (torchvision clamps only above).
    decoded = model.rpn.box_coder.decode_single(
        torch.tensor([[0.0, 0.0, -10.0, 10.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    )
    width, height = (decoded[0, 2] - decoded[0, 0]).item(), (decoded[0, 3] - decoded[0, 1]).item()
    assert width == pytest.approx(16 * 16 / 1000, rel=1e-5) and height == pytest.approx(16 * 1000 / 16, rel=1e-5)


def test_batch_pads_detections_after_each_images_own(detector, outputs, io):
    pixel_values = io["input_0"].repeat(2, 1, 1, 1)
    with torch.no_grad():
        output = detector(pixel_values, image_sizes=torch.tensor([[160, 213], [40, 48]]))
    alone = outputs[0]
    count = alone.labels.shape[1]
    assert output.pred_boxes.shape[:2] == (2, count)
    torch.testing.assert_close(output.pred_boxes[0], alone.pred_boxes[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(output.mask_logits[0], alone.mask_logits[0], atol=1e-3, rtol=0)
    padding = output.labels[1] == -1
    found = int((~padding).sum())
    assert found < count and not padding[:found].any()  # detections first, then padding
    assert (output.pred_boxes[1, :found, 2] <= 48).all() and (output.pred_boxes[1, :found, 3] <= 40).all()
    assert (output.scores[1, :found].diff() <= 0).all()
    assert not output.pred_boxes[1, found:].any() and not output.scores[1, found:].any()
    assert not output.mask_logits[1, found:].any()
    assert output.image_sizes.tolist() == [[160, 213], [40, 48]]


# Training losses with mmdetection's samples.


def training_labels(io):
    return [{"boxes": io["train_gt_bboxes"], "class_labels": io["train_gt_labels"], "masks": io["train_gt_masks"]}]


def roi_indices(io, candidates):
    """Rows of `candidates` (ground truth boxes, then proposals) that mmdet sampled, positives first."""
    return torch.tensor([torch.where((candidates == roi).all(dim=1))[0][0] for roi in io["train_rcnn_rois"]])


def test_training_losses_with_mmdetections_samples_match(detector, io):
    samplers = detector.rpn.fg_bg_sampler, detector.roi_heads.fg_bg_sampler
    detector.train()
    try:
        detector.rpn.fg_bg_sampler = PresetSampler([io["train_rpn_pos_inds"]], [io["train_rpn_neg_inds"]])
        with torch.no_grad():
            output = detector(io["input_0"], image_sizes=io["img_shape_0"][None], labels=training_labels(io))
            assert_same_set(output.proposals[0], io["train_proposals"][:, :4], atol=1e-3)
            # The RoI heads on mmdet's own training proposals, with its samples: GT boxes first, then proposals.
            proposals = io["train_proposals"][:, :4]
            indices = roi_indices(io, torch.cat([io["train_gt_bboxes"], proposals]))
            num_positive = len(io["train_rcnn_pos_gt_labels"])
            detector.roi_heads.fg_bg_sampler = PresetSampler([indices[:num_positive]], [indices[num_positive:]])
            targets = [
                {
                    "boxes": io["train_gt_bboxes"],
                    "labels": io["train_gt_labels"] + 1,
                    "masks": io["train_gt_masks"].float(),
                }
            ]
            _, roi_losses = detector.roi_heads(
                OrderedDict(zip(LEVELS, output.fpn_hidden_states)), [proposals], [(160, 213)], targets, detect=False
            )
            # The whole forward, with mmdet's RoIs found among our own training proposals (within 1e-3 px).
            distance = torch.cdist(
                io["train_rcnn_rois"], torch.cat([io["train_gt_bboxes"], output.proposals[0]]), p=float("inf")
            ).min(dim=1)
            assert distance.values.max() <= 1e-3
            detector.roi_heads.fg_bg_sampler = PresetSampler(
                [distance.indices[:num_positive]], [distance.indices[num_positive:]]
            )
            whole = detector(io["input_0"], image_sizes=io["img_shape_0"][None], labels=training_labels(io))
    finally:
        detector.eval()
        detector.rpn.fg_bg_sampler, detector.roi_heads.fg_bg_sampler = samplers
    for name in ("loss_rpn_cls", "loss_rpn_bbox"):
        torch.testing.assert_close(getattr(output, name), io[f"train_{name}"][0], atol=1e-5, rtol=0)
    for name in ("loss_cls", "loss_bbox", "loss_mask"):
        torch.testing.assert_close(roi_losses[name], io[f"train_{name}"][0], atol=1e-5, rtol=0)
    names = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")
    for name in names:
        torch.testing.assert_close(getattr(whole, name), io[f"train_{name}"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(whole.loss, sum(io[f"train_{name}"][0] for name in names), atol=5e-5, rtol=0)
    assert output.pred_boxes is None  # training mode with labels: losses only


def test_preset_sampler_refuses_samples_the_assignment_does_not_make(detector, io):
    negative_as_positive = io["train_rpn_neg_inds"][:3]
    sampler = detector.rpn.fg_bg_sampler
    detector.rpn.fg_bg_sampler = PresetSampler([negative_as_positive], [io["train_rpn_neg_inds"][3:]])
    try:
        with pytest.raises(ValueError, match="Image 0: preset positive samples"):
            with torch.no_grad():
                detector(io["input_0"], image_sizes=io["img_shape_0"][None], labels=training_labels(io))
    finally:
        detector.rpn.fg_bg_sampler = sampler


# Auto classes, saving, training.


@pytest.mark.parametrize("auto_class", ["AutoModelForInstanceSegmentation", "AutoModelForObjectDetection"])
def test_auto_class_loads_a_saved_detector_with_identical_outputs(tmp_path, auto_class):
    import transformers

    torch.manual_seed(0)
    model = tiny_detector().eval()
    model.save_pretrained(tmp_path)
    loaded = getattr(transformers, auto_class).from_pretrained(tmp_path).eval()
    assert type(loaded) is PaCaViTMaskRCNNForInstanceSegmentation
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = model(pixel_values), loaded(pixel_values)
    for name in ("pred_boxes", "scores", "labels", "mask_logits"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), atol=0, rtol=0)
    assert expected.pred_boxes.shape[1] > 0


_REMOTE_DETECTOR = r"""
import sys
try:
    import paca_hf  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("paca_hf is importable; this check needs it hidden")
import torch
import transformers
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)
folder, inputs, outputs = sys.argv[1:4]
pixel_values = load_file(inputs)["pixel_values"]
results = {}
for auto in ("AutoModelForInstanceSegmentation", "AutoModelForObjectDetection"):
    model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True).eval()
    for loaded in (model, model.config, model.config.backbone_config):
        assert type(loaded).__module__.startswith("transformers_modules."), type(loaded)
    with torch.no_grad():
        output = model(pixel_values)
    for name in ("pred_boxes", "scores", "labels", "mask_logits"):
        results[f"{auto}.{name}"] = getattr(output, name).contiguous()
save_file(results, outputs)
"""


def test_detector_folder_loads_as_remote_code_without_paca_hf(tmp_path):
    from paca_hf import hub
    from paca_hf.hub.remote_code import INSTANCE_SEGMENTATION

    torch.manual_seed(0)
    model = tiny_detector().eval()
    folder = tmp_path / "detector"
    model.save_pretrained(folder)
    copied = hub.add_remote_code(folder, INSTANCE_SEGMENTATION)
    assert {"modeling_pacavit_mask_rcnn.py", "configuration_pacavit_mask_rcnn.py", "modeling_pacavit.py"} <= {
        path.name for path in copied
    }
    pixel_values = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    save_file({"pixel_values": pixel_values}, tmp_path / "inputs.safetensors")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _REMOTE_DETECTOR,
            str(folder),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "outputs.safetensors"),
        ],
        cwd=tmp_path,
        env=hub.hidden_package_environment(tmp_path / "sandbox"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(tmp_path / "outputs.safetensors")
    with torch.no_grad():
        expected = model(pixel_values)
    assert expected.pred_boxes.shape[1] > 0
    for auto in ("AutoModelForInstanceSegmentation", "AutoModelForObjectDetection"):
        for name in ("pred_boxes", "scores", "labels", "mask_logits"):
            torch.testing.assert_close(remote[f"{auto}.{name}"], getattr(expected, name), atol=1e-5, rtol=0)


def test_no_detection_gives_empty_padded_outputs_and_tuples_on_request():
    torch.manual_seed(0)
    model = tiny_detector(box_score_threshold=1.0).eval()  # no probability is above 1
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 96))
        as_tuple = model(torch.randn(2, 3, 64, 96), return_dict=False)
    assert output.pred_boxes.shape == (2, 0, 4) and output.scores.shape == (2, 0) and output.labels.shape == (2, 0)
    assert output.mask_logits.shape == (2, 0, 28, 28) and output.image_sizes.tolist() == [[64, 96], [64, 96]]
    assert isinstance(as_tuple, tuple) and [tuple(item.shape) for item in as_tuple[:5]] == [
        (2, 0, 4),
        (2, 0),
        (2, 0),
        (2, 0, 28, 28),
        (2, 2),
    ]  # the fields' order, None left out


def test_heads_start_from_mmdetections_initialisation():
    torch.manual_seed(0)
    model = tiny_detector(box_head_hidden_size=256)
    predictor = model.roi_heads.box_predictor
    assert predictor.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert predictor.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert model.rpn.head.cls_logits.weight.std().item() == pytest.approx(0.01, rel=0.3)
    fc6 = model.roi_heads.box_head.fc6.weight  # Xavier uniform: bound sqrt(6 / (fan_in + fan_out))
    assert fc6.abs().max().item() <= (6 / sum(fc6.shape)) ** 0.5
    assert fc6.std().item() == pytest.approx((2 / sum(fc6.shape)) ** 0.5, rel=0.1)
    for module in (model.fpn, model.rpn.head, model.roi_heads):
        assert all(not bias.any() for name, bias in module.named_parameters() if name.endswith("bias"))


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = tiny_detector().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    pixel_values, labels = torch.randn(1, 3, 64, 96), tiny_labels()
    losses = []
    for _ in range(8):
        torch.manual_seed(1)  # the same draws of the samplers at every step
        output = model(pixel_values, labels=labels)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.loss.item())
    parts = [output.loss_rpn_cls, output.loss_rpn_bbox, output.loss_cls, output.loss_bbox, output.loss_mask]
    torch.testing.assert_close(output.loss, sum(parts))
    assert losses[-1] < 0.8 * losses[0], losses


def test_image_without_annotations_trains_on_negatives():
    torch.manual_seed(0)
    model = tiny_detector().train()
    empty = [
        {"boxes": torch.zeros(0, 4), "class_labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 64, 96)}
    ]
    output = model(torch.randn(1, 3, 64, 96), labels=empty)
    assert output.loss_rpn_bbox == 0 and output.loss_bbox == 0 and output.loss_mask == 0
    assert output.loss_rpn_cls > 0 and output.loss_cls > 0
    output.loss.backward()
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0


def test_masks_at_the_image_size_before_padding_are_zero_padded():
    model = tiny_detector().train()
    pixel_values, labels = torch.randn(1, 3, 64, 96), tiny_labels()
    cropped = [{**labels[0], "masks": labels[0]["masks"][:, :60, :92]}]
    results = []
    for batch_labels in (labels, cropped):
        torch.manual_seed(3)
        results.append(model(pixel_values, image_sizes=torch.tensor([[60, 92]]), labels=batch_labels).loss_mask)
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)


# Bad input.


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0], [60.0, 30.0, 99.0, 60.0]])},
            r"labels\[0\]\['boxes'\]` rows \[1\] lie outside",
        ),
        (
            {"boxes": torch.tensor([[10.0, 8.0, 10.0, 40.0], [60.0, 30.0, 90.0, 60.0]])},
            r"labels\[0\]\['boxes'\]` rows \[0\] are empty",
        ),
        ({"masks": torch.zeros(2, 32, 32)}, r"labels\[0\]\['masks'\]` must have shape"),
        ({"class_labels": torch.tensor([0, 3])}, r"labels\[0\]\['class_labels'\]` must be in 0..2"),
        ({"class_labels": torch.tensor([0])}, r"labels\[0\]\['class_labels'\]` must be an integer tensor"),
    ],
    ids=["box-outside", "degenerate-box", "mask-size", "class-out-of-range", "class-count"],
)
def test_bad_labels_name_the_image_and_field(change, message):
    model = tiny_detector().train()
    labels = tiny_labels()
    labels[0].update(change)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(1, 3, 64, 96), labels=labels)


def test_bad_image_sizes_and_missing_fields_are_refused():
    model = tiny_detector().eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    with pytest.raises(ValueError, match=r"`image_sizes\[1\]` = \(70, 96\)"):
        model(pixel_values, image_sizes=torch.tensor([[64, 96], [70, 96]]))
    with pytest.raises(ValueError, match=r"`image_sizes` must be an integer tensor of shape \(batch_size, 2\)"):
        model(pixel_values, image_sizes=torch.tensor([[64, 96]]))
    with pytest.raises(ValueError, match=r"`labels\[0\]` must be a dict with `boxes`, `class_labels` and `masks`"):
        model(pixel_values[:1], labels=[{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(ValueError, match="`labels` must be a list of 2 dicts"):
        model(pixel_values, labels=tiny_labels())


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_implementation_reaches_the_backbone(implementation):
    torch.manual_seed(0)
    config = tiny_detector().config
    model = PaCaViTMaskRCNNForInstanceSegmentation._from_config(config, attn_implementation=implementation)
    assert model.backbone.config._attn_implementation == implementation
    assert model.config._attn_implementation == implementation
