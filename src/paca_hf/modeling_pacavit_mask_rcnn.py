"""PaCa-ViT Mask R-CNN: the authors' COCO detectors (mmdetection's `mask-rcnn_r50_fpn_1x` with a PaCa-ViT backbone)
built from torchvision's detection parts, computing what mmdetection computes.

torchvision's FPN, RPN, RoI heads, box coder, RoIAlign and NMS are used as they are, except for the pieces where they
compute something else than mmdetection; each such piece is a small subclass below (see `../shared/reference/README.md`
of the project, "If you build the detector from torchvision.models.detection"):

- anchors: not rounded, on the configured strides (`PaCaViTMaskRCNNAnchorGenerator`);
- box deltas: dw, dh clamped on both sides, targets / deltas scaled as mmdet does (`PaCaViTMaskRCNNBoxCoder`);
- RoIAlign: `aligned=True`, `sampling_ratio=0`, fixed strides (`PaCaViTMaskRCNNRoIAlign`);
- RPN: no minimum box size beyond "not empty", L1 box loss (`PaCaViTMaskRCNNRegionProposalNetwork`);
- assignment: mmdet's `MaxIoUAssigner` low-quality rule (`PaCaViTMaskRCNNMatcher`);
- RoI heads: ground truth boxes added as proposals as mmdet adds them, no small-box filter on the detections, L1 box
  loss, binarised mask targets from aligned RoIAlign, mask logits returned (`PaCaViTMaskRCNNRoIHeads`).

Class order inside torchvision's heads is torchvision's (background = 0); the model's outputs use 0..C-1 for the
classes of `config.id2label`.
"""

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, box_iou, roi_align
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, initLevelMapper
from transformers import initialization as init
from transformers.modeling_utils import PreTrainedModel
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES,
    MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
)
from transformers.utils import ModelOutput

from .configuration_pacavit_mask_rcnn import PaCaViTMaskRCNNConfig
from .modeling_pacavit import PaCaViTBackbone, check_pixel_values


# How far (pixels) a ground truth box may reach outside its image (before padding) and still be accepted: float
# noise of boxes scaled with the image.
BOX_TOLERANCE = 0.01


@dataclass
class PaCaViTMaskRCNNOutput(ModelOutput):
    """
    Output of [`PaCaViTMaskRCNNForInstanceSegmentation`]. Coordinates are pixels of `pixel_values` (x1, y1, x2, y2;
    pixel (row i, column j) covers [j, j+1) x [i, i+1)).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned with `labels`):
            Sum of the five losses below (mmdetection's Mask R-CNN losses, each weight 1).
        loss_rpn_cls, loss_rpn_bbox (`torch.FloatTensor` of shape `()`, *optional*):
            RPN objectness (binary cross-entropy) and box (L1 of the deltas) losses over the sampled anchors.
        loss_cls, loss_bbox, loss_mask (`torch.FloatTensor` of shape `()`, *optional*):
            Box classifier (cross-entropy), box regression (L1 of the normalised deltas) and mask (binary
            cross-entropy) losses over the sampled RoIs.
        pred_boxes (`torch.FloatTensor` of shape `(batch_size, num_detections, 4)`, *optional*, in eval mode):
            Detected boxes, each image's sorted by score (descending), then padded with zero boxes up to the batch's
            largest count.
        scores (`torch.FloatTensor` of shape `(batch_size, num_detections)`, *optional*):
            Softmax probability of each detection's class; 0 on padding rows.
        labels (`torch.LongTensor` of shape `(batch_size, num_detections)`, *optional*):
            Class index in `0 .. num_labels - 1`; -1 on padding rows.
        mask_logits (`torch.FloatTensor` of shape `(batch_size, num_detections, 28, 28)`, *optional*):
            The mask head's logits of each detection's own class over its box (before sigmoid and pasting); 0 on
            padding rows.
        image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`):
            (height, width) of each image in `pixel_values` before padding.
        proposals (`tuple(torch.FloatTensor)`, *optional*):
            Each image's RPN proposals `(num_proposals, 4)`, sorted by objectness, descending.
        proposal_scores (`tuple(torch.FloatTensor)`, *optional*):
            Each image's proposal objectness (sigmoid of the RPN logit), `(num_proposals,)`.
        fpn_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The FPN levels (strides 4 ... 64), each `(batch_size, fpn_hidden_size, height, width)`.
    """

    loss: torch.FloatTensor | None = None
    loss_rpn_cls: torch.FloatTensor | None = None
    loss_rpn_bbox: torch.FloatTensor | None = None
    loss_cls: torch.FloatTensor | None = None
    loss_bbox: torch.FloatTensor | None = None
    loss_mask: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    mask_logits: torch.FloatTensor | None = None
    image_sizes: torch.LongTensor | None = None
    proposals: tuple[torch.FloatTensor, ...] | None = None
    proposal_scores: tuple[torch.FloatTensor, ...] | None = None
    fpn_hidden_states: tuple[torch.FloatTensor, ...] | None = None


class PaCaViTMaskRCNNAnchorGenerator(AnchorGenerator):
    """torchvision's anchor grid with mmdetection's anchors: the base anchors are not rounded, and each level's
    stride is the configured one (torchvision derives it from padded image size // feature size)."""

    def __init__(self, sizes, aspect_ratios, strides):
        super().__init__(sizes, aspect_ratios)
        self.strides = [int(stride) for stride in strides]

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        """Base anchors centred at (0, 0), ratio-major (`(len(aspect_ratios) * len(scales), 4)`): side `scale`,
        height / width = ratio."""
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        height_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        widths = (scales[None, :] / height_ratios[:, None]).reshape(-1)
        heights = (scales[None, :] * height_ratios[:, None]).reshape(-1)
        return torch.stack([-0.5 * widths, -0.5 * heights, 0.5 * widths, 0.5 * heights], dim=1)

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The anchors of every image `(sum over levels of height * width * anchors, 4)`, levels in order, (y, x,
        anchor) within a level."""
        grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(stride, device=device)] * 2 for stride in self.strides[: len(feature_maps)]]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors] * len(image_list.image_sizes)


class PaCaViTMaskRCNNBoxCoder(BoxCoder):
    """mmdetection's `DeltaXYWHBBoxCoder` with means 0 and stds 1 / `weights`: deltas are multiplied by the stds
    before decoding, and dw, dh are clamped to +-log(1000 / 16) on both sides (torchvision clamps the upper side)."""

    def encode_single(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        proposals = proposals.to(reference_boxes.dtype)
        proposal_centers = (proposals[:, :2] + proposals[:, 2:]) * 0.5
        proposal_sizes = proposals[:, 2:] - proposals[:, :2]
        target_centers = (reference_boxes[:, :2] + reference_boxes[:, 2:]) * 0.5
        target_sizes = reference_boxes[:, 2:] - reference_boxes[:, :2]
        deltas = torch.cat(
            [(target_centers - proposal_centers) / proposal_sizes, torch.log(target_sizes / proposal_sizes)], dim=1
        )
        return deltas / self._stds(deltas)

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes.to(rel_codes.dtype)
        deltas = rel_codes.reshape(rel_codes.shape[0], -1, 4) * self._stds(rel_codes)
        centers = ((boxes[:, :2] + boxes[:, 2:]) * 0.5)[:, None]
        sizes = (boxes[:, 2:] - boxes[:, :2])[:, None]
        new_centers = centers + sizes * deltas[..., :2]
        new_sizes = sizes * deltas[..., 2:].clamp(min=-self.bbox_xform_clip, max=self.bbox_xform_clip).exp()
        decoded = torch.cat([new_centers - new_sizes * 0.5, new_centers + new_sizes * 0.5], dim=-1)
        return decoded.reshape(rel_codes.shape[0], -1)

    def _stds(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0 / weight for weight in self.weights], dtype=like.dtype, device=like.device)


class PaCaViTMaskRCNNMatcher(Matcher):
    """torchvision's matcher with mmdetection's low-quality rule (`MaxIoUAssigner(match_low_quality=True,
    gt_max_assign_all=True)`): every box whose IoU with a ground truth box equals that ground truth's best IoU, if
    at least `min_positive_iou`, is matched to it (later ground truth boxes win)."""

    def __init__(self, high_threshold: float, low_threshold: float, min_positive_iou: float):
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches=True)
        self.min_positive_iou = min_positive_iou

    def set_low_quality_matches_(self, matches, all_matches, match_quality_matrix):
        best_per_target = match_quality_matrix.max(dim=1).values
        for target, best in enumerate(best_per_target.tolist()):
            if best >= self.min_positive_iou:
                matches[match_quality_matrix[target] == best] = target


class PresetSampler:
    """A sampler that returns samples chosen in advance instead of drawing them, for example those mmdetection drew,
    to reproduce its losses exactly. It replaces `model.rpn.fg_bg_sampler` or `model.roi_heads.fg_bg_sampler` (both
    torchvision's `BalancedPositiveNegativeSampler` by default, which draws with `torch.randperm`).

    `positive[i]` and `negative[i]` are index tensors into image i's candidates: for the RPN its anchors (levels in
    order, (y, x, anchor) within a level: `model.rpn.anchor_generator`'s order); for the RoI heads the image's ground
    truth boxes followed by its proposals. Raises `ValueError` when a preset index is not a positive (negative) of
    the model's own assignment, which shows a difference in assignment rather than a wrong loss."""

    def __init__(self, positive: list[torch.Tensor], negative: list[torch.Tensor]):
        if len(positive) != len(negative):
            raise ValueError(f"`positive` has {len(positive)} images but `negative` has {len(negative)}.")
        self.positive = [torch.as_tensor(indices, dtype=torch.long) for indices in positive]
        self.negative = [torch.as_tensor(indices, dtype=torch.long) for indices in negative]

    def __call__(self, labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if len(labels) != len(self.positive):
            raise ValueError(f"The preset samples are for {len(self.positive)} images, the batch has {len(labels)}.")
        positive_masks, negative_masks = [], []
        for image, (labels_in_image, positive, negative) in enumerate(zip(labels, self.positive, self.negative)):
            for name, indices, wanted in (
                ("positive", positive, labels_in_image >= 1),
                ("negative", negative, labels_in_image == 0),
            ):
                if indices.numel() and (indices.max() >= labels_in_image.numel() or indices.min() < 0):
                    raise ValueError(
                        f"Image {image}: a preset {name} index is outside the {labels_in_image.numel()} candidates."
                    )
                wrong = indices[~wanted[indices.to(labels_in_image.device)].cpu()]
                if wrong.numel():
                    raise ValueError(
                        f"Image {image}: preset {name} samples {wrong[:8].tolist()} are not {name} in the model's "
                        f"assignment."
                    )
            positive_mask = torch.zeros_like(labels_in_image, dtype=torch.uint8)
            negative_mask = torch.zeros_like(labels_in_image, dtype=torch.uint8)
            positive_mask[positive.to(labels_in_image.device)] = 1
            negative_mask[negative.to(labels_in_image.device)] = 1
            positive_masks.append(positive_mask)
            negative_masks.append(negative_mask)
        return positive_masks, negative_masks


class PaCaViTMaskRCNNRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with mmdetection's settings: anchors, box coder and assignment as above, proposals kept when
    not empty (torchvision drops boxes under 1e-3 px), and mmdet's losses (binary cross-entropy and L1 summed over
    the sampled anchors, divided by their number). `forward` also returns the proposals' scores, and computes the
    losses whenever targets are given (torchvision: in training mode)."""

    def __init__(self, config: PaCaViTMaskRCNNConfig):
        strides = config.anchor_strides
        anchor_generator = PaCaViTMaskRCNNAnchorGenerator(
            sizes=tuple(tuple(scale * stride for scale in config.anchor_scales) for stride in strides),
            aspect_ratios=(tuple(config.anchor_ratios),) * len(strides),
            strides=strides,
        )
        super().__init__(
            anchor_generator,
            RPNHead(config.fpn_hidden_size, config.num_anchors_per_location),
            fg_iou_thresh=config.rpn_positive_iou_threshold,
            bg_iou_thresh=config.rpn_negative_iou_threshold,
            batch_size_per_image=config.rpn_batch_size_per_image,
            positive_fraction=config.rpn_positive_fraction,
            pre_nms_top_n={"training": config.rpn_pre_nms_top_n_train, "testing": config.rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": config.rpn_post_nms_top_n_train, "testing": config.rpn_post_nms_top_n_test},
            nms_thresh=config.rpn_nms_threshold,
        )
        self.box_coder = PaCaViTMaskRCNNBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = PaCaViTMaskRCNNMatcher(
            config.rpn_positive_iou_threshold, config.rpn_negative_iou_threshold, config.rpn_min_positive_iou
        )
        self.min_size = torch.finfo(torch.float32).tiny  # mmdet drops boxes with w <= 0 or h <= 0 only

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        positive, negative = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        num_sampled = max(sampled.numel(), 1)
        labels = torch.cat(labels)
        regression_targets = torch.cat(regression_targets)
        objectness_loss = (
            F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled], reduction="sum")
            / num_sampled
        )
        box_loss = F.l1_loss(pred_bbox_deltas[positive], regression_targets[positive], reduction="sum") / num_sampled
        return objectness_loss, box_loss

    def forward(self, images: ImageList, features: dict[str, torch.Tensor], targets=None):
        """Returns `(proposals, scores, losses)`: per image the proposals `(n, 4)` and their objectness `(n,)`, and
        `{"loss_rpn_cls", "loss_rpn_bbox"}` when `targets` (dicts with `boxes`) are given, else `{}`."""
        features = list(features.values())
        objectness, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        num_anchors_per_level = [level[0].numel() for level in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        losses = {}
        if targets is not None:
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_cls, loss_bbox = self.compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
            losses = {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}
        return boxes, scores, losses


class PaCaViTMaskRCNNRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-scale RoIAlign as mmdetection's `SingleRoIExtractor` runs it: `aligned=True`, adaptive
    sampling (`sampling_ratio=0`), and the configured strides instead of scales inferred from the image size. The
    level of a w x h box is clamp(floor(log2(sqrt(w h) / 56)), 0, levels - 1), torchvision's `LevelMapper`."""

    def __init__(self, featmap_names: list[str], output_size: int, strides: list[int]):
        super().__init__(featmap_names, output_size, sampling_ratio=0)
        self.scales = [1.0 / stride for stride in strides]
        self.map_levels = initLevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])))

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes=None) -> torch.Tensor:
        """`(sum of len(boxes[i]), channels, output_size, output_size)` features of every box, images in order."""
        features = _filter_input(x, self.featmap_names)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        pooled = rois.new_zeros((rois.shape[0], features[0].shape[1], *self.output_size), dtype=features[0].dtype)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            pooled[index] = roi_align(
                feature, rois[index], self.output_size, spatial_scale=scale, sampling_ratio=0, aligned=True
            ).to(pooled.dtype)
        return pooled


class PaCaViTMaskRCNNRoIHeads(RoIHeads):
    """torchvision's box and mask heads (`TwoMLPHead`, `FastRCNNPredictor`, `MaskRCNNHeads`, `MaskRCNNPredictor`)
    with mmdetection's post-processing and losses: no small-box filter on the detections, the mask logits of each
    detection's class returned (not their sigmoid), ground truth boxes added before the proposals after assignment
    (each matched to itself), L1 box loss over the sampled RoIs, and binarised mask targets (aligned RoIAlign of
    the ground truth mask >= 0.5)."""

    def __init__(self, config: PaCaViTMaskRCNNConfig):
        num_classes = config.num_labels + 1  # torchvision's heads: background first
        levels = [str(level) for level in range(config.num_fpn_levels - 1)]  # the max-pooled level has no RoIs
        strides = config.anchor_strides[: len(levels)]
        hidden = config.fpn_hidden_size
        super().__init__(
            box_roi_pool=PaCaViTMaskRCNNRoIAlign(levels, config.box_roi_output_size, strides),
            box_head=TwoMLPHead(hidden * config.box_roi_output_size**2, config.box_head_hidden_size),
            box_predictor=FastRCNNPredictor(config.box_head_hidden_size, num_classes),
            fg_iou_thresh=config.roi_positive_iou_threshold,
            bg_iou_thresh=config.roi_negative_iou_threshold,
            batch_size_per_image=config.roi_batch_size_per_image,
            positive_fraction=config.roi_positive_fraction,
            bbox_reg_weights=tuple(config.box_regression_weights),
            score_thresh=config.box_score_threshold,
            nms_thresh=config.box_nms_threshold,
            detections_per_img=config.detections_per_image,
            mask_roi_pool=PaCaViTMaskRCNNRoIAlign(levels, config.mask_roi_output_size, strides),
            mask_head=MaskRCNNHeads(hidden, [config.mask_head_hidden_size] * config.num_mask_head_convs, dilation=1),
            mask_predictor=MaskRCNNPredictor(config.mask_head_hidden_size, config.mask_head_hidden_size, num_classes),
        )
        self.box_coder = PaCaViTMaskRCNNBoxCoder(tuple(config.box_regression_weights))
        self.proposal_matcher = PaCaViTMaskRCNNMatcher(
            config.roi_positive_iou_threshold, config.roi_negative_iou_threshold, config.roi_min_positive_iou
        )
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(
            config.roi_batch_size_per_image, config.roi_positive_fraction
        )

    def select_training_samples(self, proposals, targets):
        """mmdet's sampling: proposals assigned by IoU, then each image's ground truth boxes put before them (matched
        to themselves), then `self.fg_bg_sampler` picks positives (label >= 1) and negatives (label 0). Returns, per
        image, the sampled RoIs, their ground truth index (0 for negatives), their label (torchvision's: class + 1,
        0 = background) and their regression targets."""
        rois, matched, labels, targets_boxes = [], [], [], []
        for proposals_in_image, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(proposals_in_image.dtype)
            num_gt = gt_boxes.shape[0]
            if num_gt:
                matches = self.proposal_matcher(box_iou(gt_boxes, proposals_in_image))
            else:
                matches = torch.full_like(proposals_in_image[:, 0], Matcher.BELOW_LOW_THRESHOLD, dtype=torch.long)
            matches = torch.cat([torch.arange(num_gt, device=matches.device), matches])
            labels_in_image = target["labels"][matches.clamp(min=0)] if num_gt else torch.zeros_like(matches)
            labels_in_image = torch.where(matches >= 0, labels_in_image, 0)
            labels_in_image[matches == Matcher.BETWEEN_THRESHOLDS] = -1
            rois.append(torch.cat([gt_boxes, proposals_in_image]))
            matched.append(matches.clamp(min=0))
            labels.append(labels_in_image)
            targets_boxes.append(gt_boxes if num_gt else gt_boxes.new_zeros((1, 4)))
        positive, negative = self.fg_bg_sampler(labels)
        regression_targets = []
        for image, (positive_mask, negative_mask) in enumerate(zip(positive, negative)):
            # Positives first, as mmdet orders its samples.
            keep = torch.cat([torch.where(positive_mask)[0], torch.where(negative_mask)[0]])
            rois[image], matched[image], labels[image] = rois[image][keep], matched[image][keep], labels[image][keep]
            regression_targets.append(self.box_coder.encode_single(targets_boxes[image][matched[image]], rois[image]))
        return rois, matched, labels, regression_targets

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """Per image: boxes `(n, 4)`, scores `(n,)` and labels `(n,)` (torchvision's, 1..C) of the candidates with
        probability > `score_thresh` after per-class NMS, at most `detections_per_img`, sorted by score."""
        num_classes = class_logits.shape[-1]
        per_image = [len(boxes) for boxes in proposals]
        decoded = self.box_coder.decode(box_regression, proposals).split(per_image)
        probabilities = F.softmax(class_logits, -1).split(per_image)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(decoded, probabilities, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, 1:].reshape(-1, 4)
            labels = torch.arange(1, num_classes, device=scores.device).repeat(scores.shape[0])
            scores = scores[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    def mask_logits(self, features, boxes, labels, image_shapes) -> torch.Tensor:
        """The mask head's logits `(sum of len(boxes[i]), mask_size, mask_size)` of each box's label (torchvision's
        class index)."""
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
        labels = torch.cat(labels)
        return logits[torch.arange(labels.shape[0], device=labels.device), labels]

    def forward(self, features, proposals, image_shapes, targets=None, detect: bool = True):
        """Returns `(detections, losses)`. `detections` (with `detect`): per image a dict of `boxes`, `scores`,
        `labels` (torchvision's, 1..C) and `mask_logits` `(n, mask_size, mask_size)`. `losses` (with `targets`, dicts
        of `boxes`, `labels` (1..C) and `masks` `(n, H, W)`): `loss_cls`, `loss_bbox`, `loss_mask`."""
        losses = {}
        if targets is not None:
            rois, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
            features_per_roi = self.box_head(self.box_roi_pool(features, rois, image_shapes))
            class_logits, box_regression = self.box_predictor(features_per_roi)
            losses.update(self.box_losses(class_logits, box_regression, labels, regression_targets))
            positive = [torch.where(labels_in_image > 0)[0] for labels_in_image in labels]
            positive_rois = [boxes[index] for boxes, index in zip(rois, positive)]
            positive_labels = [labels_in_image[index] for labels_in_image, index in zip(labels, positive)]
            logits = self.mask_logits(features, positive_rois, positive_labels, image_shapes)
            mask_targets = [
                self.mask_targets(target["masks"], boxes, matched_in_image[index], logits.shape[-1])
                for target, boxes, matched_in_image, index in zip(targets, positive_rois, matched, positive)
            ]
            mask_targets = torch.cat(mask_targets)
            if mask_targets.numel() == 0:
                losses["loss_mask"] = logits.sum() * 0
            else:
                losses["loss_mask"] = F.binary_cross_entropy_with_logits(logits, mask_targets)
        detections = None
        if detect:
            features_per_box = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
            class_logits, box_regression = self.box_predictor(features_per_box)
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            mask_logits = self.mask_logits(features, boxes, labels, image_shapes).split([len(b) for b in boxes])
            detections = [
                {"boxes": found, "scores": score, "labels": label, "mask_logits": logits}
                for found, score, label, logits in zip(boxes, scores, labels, mask_logits)
            ]
        return detections, losses

    @staticmethod
    def box_losses(class_logits, box_regression, labels, regression_targets) -> dict[str, torch.Tensor]:
        """mmdet's `loss_cls` (mean cross-entropy over the sampled RoIs) and `loss_bbox` (L1 of the label's deltas
        over the positives, divided by the number of sampled RoIs)."""
        labels = torch.cat(labels)
        regression_targets = torch.cat(regression_targets)
        positive = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(box_regression.shape[0], -1, 4)[positive, labels[positive]]
        num_sampled = max(labels.numel(), 1)
        return {
            "loss_cls": F.cross_entropy(class_logits, labels, reduction="sum") / num_sampled,
            "loss_bbox": F.l1_loss(deltas, regression_targets[positive], reduction="sum") / num_sampled,
        }

    @staticmethod
    def mask_targets(gt_masks, rois, matched, mask_size) -> torch.Tensor:
        """mmdet's mask targets: each RoI's ground truth mask resampled to `mask_size` with aligned RoIAlign,
        >= 0.5."""
        gt_masks = gt_masks[:, None].to(rois.dtype)
        index = matched.to(rois.dtype)[:, None]
        sampled = roi_align(gt_masks, torch.cat([index, rois], dim=1), mask_size, 1.0, sampling_ratio=0, aligned=True)
        return (sampled[:, 0] >= 0.5).to(rois.dtype)


class PaCaViTMaskRCNNPreTrainedModel(PreTrainedModel):
    config: PaCaViTMaskRCNNConfig
    config_class = PaCaViTMaskRCNNConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # The backbone's attention implementations (the heads have no attention): the choice reaches its sub-config.
    _supports_sdpa = True
    _supports_flex_attn = True
    _no_split_modules = ["PaCaViTLayer", "PaCaViTClusteringTeacher"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """mmdetection's init of each head layer (tagged `_mmdet_init` when built); the backbone has its own."""
        kind = getattr(module, "_mmdet_init", None)
        if kind is None:
            return
        if kind == "xavier":
            init.xavier_uniform_(module.weight)
        elif kind == "kaiming":
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        else:
            init.normal_(module.weight, 0.0, float(kind))
        init.zeros_(module.bias)


class PaCaViTMaskRCNNForInstanceSegmentation(PaCaViTMaskRCNNPreTrainedModel):
    """Mask R-CNN with a PaCa-ViT backbone (the authors' COCO detectors): `PaCaViTBackbone` (all stages), torchvision's
    FPN with a max-pooled extra level, RPN and RoI heads, computing what mmdetection computes."""

    def __init__(self, config: PaCaViTMaskRCNNConfig):
        super().__init__(config)
        self.backbone = PaCaViTBackbone(config.backbone_config)
        self.fpn = FeaturePyramidNetwork(
            list(config.backbone_config.hidden_sizes), config.fpn_hidden_size, extra_blocks=LastLevelMaxPool()
        )
        self.rpn = PaCaViTMaskRCNNRegionProposalNetwork(config)
        self.roi_heads = PaCaViTMaskRCNNRoIHeads(config)
        for layer in self.fpn.modules():
            if isinstance(layer, nn.Conv2d):
                layer._mmdet_init = "xavier"
        for layer in self.rpn.head.modules():
            if isinstance(layer, nn.Conv2d):
                layer._mmdet_init = 0.01
        self.roi_heads.box_head.fc6._mmdet_init = self.roi_heads.box_head.fc7._mmdet_init = "xavier"
        self.roi_heads.box_predictor.cls_score._mmdet_init = 0.01
        self.roi_heads.box_predictor.bbox_pred._mmdet_init = 0.001
        for layer in [*self.roi_heads.mask_head.modules(), *self.roi_heads.mask_predictor.modules()]:
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                layer._mmdet_init = "kaiming"
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PaCaViTMaskRCNNOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images, zero-padded at the bottom / right to a common size (a multiple of 32 as mmdetection
            pads; the image processor does all this).
        image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
            (height, width) of each image before padding; boxes are clipped to it. Default: the full size.
        labels (`list[dict]`, *optional*):
            One dict per image: `boxes` `(n, 4)` float x1, y1, x2, y2 in `pixel_values` pixels (inside the image,
            x1 < x2, y1 < y2), `class_labels` `(n,)` int64 in 0..num_labels-1, and `masks` `(n, H, W)` binary (bool,
            0/1 integers or floats, >= 0.5 is foreground) at `pixel_values`' size (H, W), or at the image's size
            before padding (zero-padded here). An image with n = 0 trains the RPN and the classifier on negatives
            only. With `labels`, the losses are computed (in either mode; the samplers draw at random).
        return_dict (`bool`, *optional*): return a tuple (the non-None fields in order) when False.

        The detections (`pred_boxes`, `scores`, `labels`, `mask_logits`) are computed in eval mode, or in training
        mode without `labels`; the RPN keeps `config.rpn_pre_nms_top_n_train` anchors per level in training mode and
        `..._test` in eval mode.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments: {', '.join(sorted(kwargs))}.")
        check_pixel_values(pixel_values, self.config.backbone_config.num_channels)
        image_sizes = self._check_image_sizes(pixel_values, image_sizes)
        shapes = [(int(height), int(width)) for height, width in image_sizes.tolist()]
        targets = None if labels is None else self._check_labels(labels, pixel_values, shapes)

        feature_maps = self.backbone(pixel_values, return_dict=True).feature_maps
        fpn_levels = self.fpn(OrderedDict((str(level), feature) for level, feature in enumerate(feature_maps)))
        proposals, proposal_scores, rpn_losses = self.rpn(ImageList(pixel_values, shapes), fpn_levels, targets)
        detect = not self.training or labels is None
        detections, roi_losses = self.roi_heads(fpn_levels, proposals, shapes, targets, detect=detect)

        # Built at once: a tuple (`return_dict=False`) follows the order in which the fields were set.
        fields = {}
        if targets is not None:
            losses = {**rpn_losses, **roi_losses}
            fields = {"loss": sum(losses.values()), **losses}
        if detections is not None:
            fields.update(zip(("pred_boxes", "scores", "labels", "mask_logits"), self._pad_detections(detections)))
        output = PaCaViTMaskRCNNOutput(
            **fields,
            image_sizes=image_sizes,
            proposals=tuple(proposals),
            proposal_scores=tuple(proposal_scores),
            fpn_hidden_states=tuple(fpn_levels.values()),
        )
        if return_dict is None:
            return_dict = self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _pad_detections(self, detections):
        count = max(len(detection["boxes"]) for detection in detections)
        first = detections[0]
        size = self.config.mask_size
        boxes = first["boxes"].new_zeros((len(detections), count, 4))
        scores = first["scores"].new_zeros((len(detections), count))
        labels = torch.full((len(detections), count), -1, dtype=torch.long, device=boxes.device)
        mask_logits = first["mask_logits"].new_zeros((len(detections), count, size, size))
        for image, detection in enumerate(detections):
            found = len(detection["boxes"])
            boxes[image, :found] = detection["boxes"]
            scores[image, :found] = detection["scores"]
            labels[image, :found] = detection["labels"] - 1
            mask_logits[image, :found] = detection["mask_logits"]
        return boxes, scores, labels, mask_logits

    @staticmethod
    def _check_image_sizes(pixel_values: torch.Tensor, image_sizes) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        if image_sizes is None:
            return torch.tensor([[height, width]] * batch, dtype=torch.long, device=pixel_values.device)
        image_sizes = torch.as_tensor(image_sizes, device=pixel_values.device)
        if image_sizes.shape != (batch, 2) or image_sizes.is_floating_point():
            raise ValueError(
                f"`image_sizes` must be an integer tensor of shape (batch_size, 2) = ({batch}, 2) holding each "
                f"image's (height, width) before padding, got shape {tuple(image_sizes.shape)} dtype "
                f"{image_sizes.dtype}."
            )
        for image, (image_height, image_width) in enumerate(image_sizes.tolist()):
            if not (1 <= image_height <= height and 1 <= image_width <= width):
                raise ValueError(
                    f"`image_sizes[{image}]` = ({image_height}, {image_width}) is not a size between (1, 1) and the "
                    f"padded size ({height}, {width}) of `pixel_values`."
                )
        return image_sizes.to(torch.long)

    def _check_labels(self, labels, pixel_values: torch.Tensor, shapes: list[tuple[int, int]]) -> list[dict]:
        """torchvision's targets (labels + 1, float masks at the padded size) from `labels`, or `ValueError` naming
        the image and the field."""
        batch, _, padded_height, padded_width = pixel_values.shape
        if not isinstance(labels, (list, tuple)) or len(labels) != batch:
            raise ValueError(
                f"`labels` must be a list of {batch} dicts (one per image), got {type(labels).__name__}"
                f"{f' of length {len(labels)}' if isinstance(labels, (list, tuple)) else ''}."
            )
        targets = []
        for image, (label, (height, width)) in enumerate(zip(labels, shapes)):
            if not isinstance(label, dict) or any(key not in label for key in ("boxes", "class_labels", "masks")):
                raise ValueError(f"`labels[{image}]` must be a dict with `boxes`, `class_labels` and `masks`.")
            boxes = torch.as_tensor(label["boxes"], device=pixel_values.device)
            classes = torch.as_tensor(label["class_labels"], device=pixel_values.device)
            masks = torch.as_tensor(label["masks"], device=pixel_values.device)
            if boxes.ndim != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
                raise ValueError(
                    f"`labels[{image}]['boxes']` must be a float tensor of shape (n, 4), got {tuple(boxes.shape)} "
                    f"{boxes.dtype}."
                )
            count = boxes.shape[0]
            if not torch.isfinite(boxes).all():
                raise ValueError(f"`labels[{image}]['boxes']` holds NaN or infinite coordinates.")
            degenerate = torch.where((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
            if degenerate.numel():
                raise ValueError(
                    f"`labels[{image}]['boxes']` rows {degenerate.tolist()[:8]} are empty or inverted (need x1 < x2 "
                    f"and y1 < y2): {boxes[degenerate[:3]].tolist()}."
                )
            outside = torch.where(
                (boxes[:, :2] < -BOX_TOLERANCE).any(1)
                | (boxes[:, 2] > width + BOX_TOLERANCE)
                | (boxes[:, 3] > height + BOX_TOLERANCE)
            )[0]
            if outside.numel():
                raise ValueError(
                    f"`labels[{image}]['boxes']` rows {outside.tolist()[:8]} lie outside the image (width {width}, "
                    f"height {height} before padding): {boxes[outside[:3]].tolist()}."
                )
            if classes.shape != (count,) or classes.is_floating_point():
                raise ValueError(
                    f"`labels[{image}]['class_labels']` must be an integer tensor of shape ({count},), got "
                    f"{tuple(classes.shape)} {classes.dtype}."
                )
            if count and (classes.min() < 0 or classes.max() >= self.config.num_labels):
                raise ValueError(
                    f"`labels[{image}]['class_labels']` must be in 0..{self.config.num_labels - 1} (config.id2label), "
                    f"got {classes.tolist()[:8]}."
                )
            if (
                masks.ndim != 3
                or masks.shape[0] != count
                or tuple(masks.shape[1:]) not in ((padded_height, padded_width), (height, width))
            ):
                raise ValueError(
                    f"`labels[{image}]['masks']` must have shape ({count}, {padded_height}, {padded_width}) "
                    f"(`pixel_values`' size) or ({count}, {height}, {width}) (the image before padding), got "
                    f"{tuple(masks.shape)}."
                )
            masks = masks.to(pixel_values.dtype)
            masks = F.pad(masks, (0, padded_width - masks.shape[2], 0, padded_height - masks.shape[1]))
            targets.append({"boxes": boxes.to(pixel_values.dtype), "labels": classes.long() + 1, "masks": masks})
        return targets


# The object-detection and image-segmentation pipelines check a model's class name against transformers' tables
# keyed by model type, where registered and remote-code classes are missing (they would log an error although they
# work). The entries are made here, so that both `import paca_hf` and a repo's remote code make them (as
# modeling_pacavit.py does for the segmentor); no built-in model uses this model type.
for _table in (MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES):
    _table.setdefault(PaCaViTMaskRCNNConfig.model_type, PaCaViTMaskRCNNForInstanceSegmentation.__name__)

__all__ = [
    "PaCaViTMaskRCNNForInstanceSegmentation",
    "PaCaViTMaskRCNNOutput",
    "PaCaViTMaskRCNNPreTrainedModel",
    "PresetSampler",
]
