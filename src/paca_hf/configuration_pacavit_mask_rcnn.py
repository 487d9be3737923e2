"""Configuration of the PaCa-ViT Mask R-CNN detector (the authors' COCO models, on torchvision's detection parts)."""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from .configuration_pacavit import PaCaViTConfig


ALL_STAGES = ["stage1", "stage2", "stage3", "stage4"]


@strict
class PaCaViTMaskRCNNConfig(PreTrainedConfig):
    r"""
    Configuration of [`PaCaViTMaskRCNNForInstanceSegmentation`]: a PaCa-ViT backbone, an FPN, an RPN and Mask R-CNN's
    box and mask heads, with mmdetection's `mask-rcnn_r50_fpn_1x` settings as defaults (the authors' COCO configs).
    Sizes are in pixels of `pixel_values` unless said otherwise.

    Args:
        backbone_config (`PaCaViTConfig` or `dict`, *optional*):
            The PaCa-ViT backbone (default: PaCa-Tiny). Its `out_features` are set to all stages: the FPN reads them
            all.
        fpn_hidden_size (`int`, *optional*, defaults to 256):
            Channels of every FPN level (and of the RPN's 3x3 conv, which reads them).
        num_fpn_levels (`int`, *optional*, defaults to 5):
            FPN outputs: one per backbone stage plus a max-pooled (kernel 1, stride 2) extra level; must be the
            number of stages + 1.
        anchor_scales (`list[float]`, *optional*, defaults to `[8]`):
            Anchor side in units of its level's stride (anchor side = scale x stride).
        anchor_ratios (`list[float]`, *optional*, defaults to `[0.5, 1.0, 2.0]`):
            Anchor aspect ratios height / width.
        anchor_strides (`list[int]`, *optional*, defaults to `[4, 8, 16, 32, 64]`):
            Stride of each FPN level, in pixels; the anchor grid uses these, not image size / feature size.
        rpn_hidden_size (`int`, *optional*, defaults to 256):
            Channels of the RPN's 3x3 conv; must equal `fpn_hidden_size` (torchvision's `RPNHead`).
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test (`int`, *optional*, defaults to 2000 and 1000):
            Highest-scored anchors kept per FPN level before the RPN's NMS (with `labels` / without).
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test (`int`, *optional*, defaults to 1000):
            Proposals kept per image after the RPN's NMS (run per level).
        rpn_nms_threshold (`float`, *optional*, defaults to 0.7):
            IoU above which the RPN's NMS drops a lower-scored box.
        rpn_positive_iou_threshold, rpn_negative_iou_threshold, rpn_min_positive_iou (`float`, *optional*, defaults
        to 0.7, 0.3, 0.3):
            Training: an anchor is positive at IoU >= the first with its best ground truth box, or when it is a box's
            best anchor with IoU >= the third; negative below the second (mmdet's `MaxIoUAssigner`).
        rpn_batch_size_per_image, rpn_positive_fraction (`int`, `float`, *optional*, defaults to 256 and 0.5):
            Training: anchors sampled per image for the RPN losses, at most this fraction positive.
        roi_positive_iou_threshold, roi_negative_iou_threshold, roi_min_positive_iou (`float`, *optional*, defaults
        to 0.5):
            Training: the same assignment for the RoI heads' proposals (ground truth boxes are added as proposals).
        roi_batch_size_per_image, roi_positive_fraction (`int`, `float`, *optional*, defaults to 512 and 0.25):
            Training: RoIs sampled per image for the box and mask losses.
        box_roi_output_size, mask_roi_output_size (`int`, *optional*, defaults to 7 and 14):
            RoIAlign output of the box and the mask head; the mask logits are twice the mask size (28 x 28).
        box_head_hidden_size (`int`, *optional*, defaults to 1024):
            Width of the box head's shared fully connected layers.
        num_box_head_fcs (`int`, *optional*, defaults to 2):
            Shared fully connected layers of the box head (torchvision's `TwoMLPHead`: 2 only).
        mask_head_hidden_size (`int`, *optional*, defaults to 256):
            Channels of the mask head's convs and upsampling.
        num_mask_head_convs (`int`, *optional*, defaults to 4):
            3x3 convs of the mask head.
        box_regression_weights (`list[float]`, *optional*, defaults to `[10, 10, 5, 5]`):
            Inverse of mmdet's target stds (0.1, 0.1, 0.2, 0.2) of the box head's deltas (dx, dy, dw, dh).
        box_score_threshold (`float`, *optional*, defaults to 0.05):
            Detections keep class probabilities strictly above this.
        box_nms_threshold (`float`, *optional*, defaults to 0.5):
            IoU of the per-class NMS of the detections.
        detections_per_image (`int`, *optional*, defaults to 100):
            Most detections per image.
        mask_threshold (`float`, *optional*, defaults to 0.5):
            Probability above which a pasted mask pixel is foreground (used by post-processing).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Kept for transformers' utilities; the heads use mmdetection's initialisations.
    """

    model_type = "pacavit_mask_rcnn"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=PaCaViTConfig, init_kwargs={"out_features": ALL_STAGES})
    }

    backbone_config: dict | PreTrainedConfig | None = None
    fpn_hidden_size: int = 256
    num_fpn_levels: int = 5
    anchor_scales: list[float | int] | tuple[float | int, ...] = (8,)
    anchor_ratios: list[float | int] | tuple[float | int, ...] = (0.5, 1.0, 2.0)
    anchor_strides: list[int] | tuple[int, ...] = (4, 8, 16, 32, 64)
    rpn_hidden_size: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_threshold: float = 0.7
    rpn_positive_iou_threshold: float = 0.7
    rpn_negative_iou_threshold: float = 0.3
    rpn_min_positive_iou: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    roi_positive_iou_threshold: float = 0.5
    roi_negative_iou_threshold: float = 0.5
    roi_min_positive_iou: float = 0.5
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float = 0.25
    box_roi_output_size: int = 7
    mask_roi_output_size: int = 14
    box_head_hidden_size: int = 1024
    num_box_head_fcs: int = 2
    mask_head_hidden_size: int = 256
    num_mask_head_convs: int = 4
    box_regression_weights: list[float | int] | tuple[float | int, ...] = (10.0, 10.0, 5.0, 5.0)
    box_score_threshold: float = 0.05
    box_nms_threshold: float = 0.5
    detections_per_image: int = 100
    mask_threshold: float = 0.5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # Built here rather than through transformers' registry, so that the config also loads as remote code where
        # the `pacavit` model type is not registered.
        if self.backbone_config is None:
            self.backbone_config = PaCaViTConfig(out_features=ALL_STAGES)
        elif isinstance(self.backbone_config, dict):
            backbone = {key: value for key, value in self.backbone_config.items() if key != "model_type"}
            self.backbone_config = PaCaViTConfig(**backbone)
        elif not isinstance(self.backbone_config, PaCaViTConfig):
            raise ValueError(
                f"`backbone_config` must be a PaCaViTConfig (or its dict), got {type(self.backbone_config).__name__}."
            )
        if list(self.backbone_config.out_features) != list(self.backbone_config.stage_names):
            # A copy: the caller's config (a classifier's, say) keeps its own out_features.
            self.backbone_config = PaCaViTConfig.from_dict(self.backbone_config.to_dict())
            self.backbone_config.out_features = list(self.backbone_config.stage_names)
        for name in ("anchor_scales", "anchor_ratios", "anchor_strides", "box_regression_weights"):
            setattr(self, name, list(getattr(self, name)))
        super().__post_init__(**kwargs)
        self.validate_architecture()

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios)

    @property
    def mask_size(self) -> int:
        """Side of the mask head's logits (its RoIAlign size, doubled by the transposed conv)."""
        return 2 * self.mask_roi_output_size

    def validate_architecture(self):
        """Raise `ValueError` naming the field when a value is out of range or the parts do not fit together."""
        num_stages = self.backbone_config.num_stages
        if self.num_fpn_levels != num_stages + 1:
            raise ValueError(
                f"`num_fpn_levels` must be the backbone's {num_stages} stages + 1 max-pooled level = "
                f"{num_stages + 1}, got {self.num_fpn_levels}."
            )
        if len(self.anchor_strides) != self.num_fpn_levels:
            raise ValueError(
                f"`anchor_strides` needs one stride per FPN level ({self.num_fpn_levels}), got {self.anchor_strides}."
            )
        expected = [4 * 2**level for level in range(self.num_fpn_levels)]
        if self.anchor_strides != expected:
            raise ValueError(
                f"`anchor_strides` must be the FPN levels' strides {expected} (the backbone's stages are at 1/4 ... "
                f"and the extra level halves the last), got {self.anchor_strides}."
            )
        for name in ("anchor_scales", "anchor_ratios"):
            values = getattr(self, name)
            if not values or any(not value > 0 for value in values):
                raise ValueError(f"`{name}` must be a non-empty list of positive numbers, got {values}.")
        positive = (
            "fpn_hidden_size",
            "rpn_hidden_size",
            "rpn_pre_nms_top_n_train",
            "rpn_post_nms_top_n_train",
            "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_test",
            "rpn_batch_size_per_image",
            "roi_batch_size_per_image",
            "box_roi_output_size",
            "mask_roi_output_size",
            "box_head_hidden_size",
            "mask_head_hidden_size",
            "num_mask_head_convs",
            "detections_per_image",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.rpn_hidden_size != self.fpn_hidden_size:
            raise ValueError(
                f"`rpn_hidden_size` ({self.rpn_hidden_size}) must equal `fpn_hidden_size` ({self.fpn_hidden_size}): "
                f"the RPN's 3x3 conv keeps the FPN's channels (torchvision's RPNHead, mmdet's `feat_channels`)."
            )
        if self.num_box_head_fcs != 2:
            raise ValueError(
                f"`num_box_head_fcs` must be 2 (mmdet's Shared2FCBBoxHead, torchvision's TwoMLPHead), got "
                f"{self.num_box_head_fcs}."
            )
        fractions = (
            "rpn_nms_threshold",
            "rpn_positive_iou_threshold",
            "rpn_negative_iou_threshold",
            "rpn_min_positive_iou",
            "rpn_positive_fraction",
            "roi_positive_iou_threshold",
            "roi_negative_iou_threshold",
            "roi_min_positive_iou",
            "roi_positive_fraction",
            "box_score_threshold",
            "box_nms_threshold",
            "mask_threshold",
        )
        for name in fractions:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")
        for stage in ("rpn", "roi"):
            low = getattr(self, f"{stage}_negative_iou_threshold")
            high = getattr(self, f"{stage}_positive_iou_threshold")
            if low > high:
                raise ValueError(
                    f"`{stage}_negative_iou_threshold` ({low}) must not exceed `{stage}_positive_iou_threshold` "
                    f"({high})."
                )
        if len(self.box_regression_weights) != 4 or any(not weight > 0 for weight in self.box_regression_weights):
            raise ValueError(
                f"`box_regression_weights` must be 4 positive numbers (dx, dy, dw, dh), got "
                f"{self.box_regression_weights}."
            )
        if self.num_labels < 1:
            raise ValueError(f"`num_labels` (the size of `id2label`) must be at least 1, got {self.num_labels}.")


__all__ = ["PaCaViTMaskRCNNConfig"]
