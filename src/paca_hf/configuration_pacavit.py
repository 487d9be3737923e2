# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""PaCa-ViT model configuration."""

import json
from importlib import resources

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig
from transformers.utils import auto_docstring

from .releases import OFFICIAL_NAMES, RELEASES


CLUSTERING_TYPES = ("conv", "mlp", "linear")

# Every official name (the authors' released checkpoints) and its architecture: `releases.RELEASES`.
_RELEASES_BY_NAME = {release.official_name: release for release in RELEASES}


def load_id2label(dataset: str) -> dict[int, str]:
    """Class names shipped with the package: `dataset` is "imagenet-1k", "ade20k" or "coco" (mmdetection's 80)."""
    text = resources.files("paca_hf").joinpath("data", f"{dataset}-id2label.json").read_text()
    return {int(index): name for index, name in json.loads(text).items()}


def _per_stage(value, num_stages):
    return list(value) if isinstance(value, (list, tuple)) else [value] * num_stages


@auto_docstring(
    custom_intro="""
    Configuration of a PaCa-ViT model (Patch-to-Cluster Attention, Grainger et al., CVPR 2023). The defaults give
    PaCa-Tiny (`pacavit_tiny_p2cconv_100_0`), as [ivmcl/pacavit-tiny](https://huggingface.co/ivmcl/pacavit-tiny);
    `PaCaViTConfig.from_official_name` gives every released model of the authors. `out_features` (`"stage1"` ...)
    or `out_indices` (0 for `"stage1"`) choose the stages `PaCaViTBackbone` returns (by default the last one).
    """,
    checkpoint="ivmcl/pacavit-tiny",
)
@strict
class PaCaViTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    mlp_ratios (`list[float]`, *optional*, defaults to `[4, 4, 4, 4]`):
        Expansion of the Mix-FFN of each stage (its hidden width over the stage's width).
    num_clusters (`list[int]`, *optional*, defaults to `[100, 100, 100, 0]`):
        Number of learned clusters that provide the keys and values of each stage; 0 means plain patch-to-patch
        attention in that stage.
    clustering_type (`str`, *optional*, defaults to `"conv"`):
        How patches are assigned to clusters: `"conv"` (depthwise conv, GELU, 1x1 conv, GELU, 1x1 conv), `"mlp"`
        (Linear, GELU, Linear) or `"linear"` (one Linear without bias).
    clustering_kernel_size (`int` or `list[int]`, *optional*, defaults to 7):
        Kernel of the depthwise convolution of `"conv"` clustering, for all stages or per stage.
    clustering_interval (`int` or `list[int]`, *optional*, defaults to 0):
        Blocks that compute a cluster assignment, for all stages or per stage: 0 in the first block of a stage only
        (the others reuse it), 1 in every block, k > 1 in blocks 0, k, 2k, ...
    teacher_depths (`list[int]`, *optional*):
        Depths of the ConvMixer clustering teacher that supplies every stage's cluster assignment; None for no
        teacher.
    teacher_kernel_size (`int`, *optional*, defaults to 7):
        Depthwise kernel of the teacher.
    decode_head_hidden_size (`int`, *optional*, defaults to 256):
        Channels of the PaCa segmentation head.
    cluster_loss_weight (`float`, *optional*, defaults to 0.4):
        Weight of the segmentation head's clustering loss, added to the cross-entropy of its logits.
    chunk_size_feed_forward (`int`, *optional*):
        The Mix-FFN runs over bands of whole rows of at most this many patches per image (at least one row); 0 runs
        it over the whole map at once. Outputs are the same; smaller bands keep the expanded activations small (see
        `scripts/benchmark.py`). None (default) chooses per device: 4096 on a CPU, where the bands were measured
        faster, and the whole map elsewhere.
    """

    model_type = "pacavit"

    num_channels: int = 3
    hidden_sizes: list[int] | tuple[int, ...] = (96, 192, 320, 384)
    depths: list[int] | tuple[int, ...] = (2, 2, 4, 2)
    num_attention_heads: list[int] | tuple[int, ...] = (2, 4, 8, 16)
    mlp_ratios: list[float | int] | tuple[float | int, ...] = (4, 4, 4, 4)
    num_clusters: list[int] | tuple[int, ...] = (100, 100, 100, 0)
    clustering_type: str = "conv"
    clustering_kernel_size: int | list[int] | tuple[int, ...] = 7
    clustering_interval: int | list[int] | tuple[int, ...] | None = None
    teacher_depths: list[int] | tuple[int, ...] | None = None
    teacher_kernel_size: int = 7
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    drop_path_rate: float | int = 0.1
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    image_size: int | list[int] | tuple[int, int] = 224
    decode_head_hidden_size: int = 256
    classifier_dropout_prob: float | int = 0.1
    cluster_loss_weight: float | int = 0.4
    semantic_loss_ignore_index: int = 255
    chunk_size_feed_forward: int | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        for name in ("hidden_sizes", "depths", "num_attention_heads", "mlp_ratios", "num_clusters"):
            setattr(self, name, list(getattr(self, name)))
        if self.clustering_interval is None:
            self.clustering_interval = 0
        if isinstance(self.clustering_interval, int):
            self.clustering_interval = [self.clustering_interval] * len(self.depths)
        self.clustering_interval = list(self.clustering_interval)
        if isinstance(self.clustering_kernel_size, tuple):
            self.clustering_kernel_size = list(self.clustering_kernel_size)
        if self.teacher_depths is not None:
            self.teacher_depths = list(self.teacher_depths)
        # Checked here, before the backbone fields are derived from the stages, so that users get a plain
        # `ValueError` (`@strict`'s validators, which run right after, wrap it in their own error).
        self._check_architecture()
        self._architecture_checked_in_init = True
        self.stage_names = [f"stage{index}" for index in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def clustering_kernel_sizes(self) -> list[int]:
        return _per_stage(self.clustering_kernel_size, self.num_stages)

    def validate_architecture(self):
        """`@strict`'s validator: `_check_architecture`, except right after `__init__`, whose `__post_init__` has just
        run it (so a config is checked once per construction). It also runs in `save_pretrained`, on a config that
        may have changed since."""
        if not self.__dict__.pop("_architecture_checked_in_init", False):
            self._check_architecture()

    def _check_architecture(self):
        """Raise `ValueError` naming the field when the architecture is inconsistent."""
        num_stages = len(self.depths)
        if num_stages == 0:
            raise ValueError("`depths` must name at least one stage, got an empty list.")
        per_stage = {
            "hidden_sizes": self.hidden_sizes,
            "num_attention_heads": self.num_attention_heads,
            "mlp_ratios": self.mlp_ratios,
            "num_clusters": self.num_clusters,
            "clustering_interval": self.clustering_interval,
        }
        if isinstance(self.clustering_kernel_size, list):
            per_stage["clustering_kernel_size"] = self.clustering_kernel_size
        for name, values in per_stage.items():
            if len(values) != num_stages:
                raise ValueError(
                    f"`{name}` has {len(values)} entries but `depths` has {num_stages} stages; every per-stage "
                    f"list must have one entry per stage."
                )
        for name in ("hidden_sizes", "depths", "num_attention_heads"):
            if any(value < 1 for value in getattr(self, name)):
                raise ValueError(f"`{name}` must be positive in every stage, got {getattr(self, name)}.")
        if any(ratio <= 0 for ratio in self.mlp_ratios):
            raise ValueError(f"`mlp_ratios` must be positive in every stage, got {self.mlp_ratios}.")
        for stage, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if width % heads != 0:
                raise ValueError(
                    f"`hidden_sizes[{stage}]` = {width} is not divisible by `num_attention_heads[{stage}]` = {heads}."
                )
        if self.clustering_type not in CLUSTERING_TYPES:
            raise ValueError(
                f"`clustering_type` must be one of {', '.join(map(repr, CLUSTERING_TYPES))}, "
                f"got {self.clustering_type!r}."
            )
        if any(count < 0 for count in self.num_clusters):
            raise ValueError(f"`num_clusters` must be >= 0 in every stage (0 = no clusters), got {self.num_clusters}.")
        if any(interval < 0 for interval in self.clustering_interval):
            raise ValueError(
                f"`clustering_interval` must be >= 0 in every stage (0 = stage-wise, 1 = block-wise, k = every "
                f"k blocks), got {self.clustering_interval}."
            )
        if any(size < 1 or size % 2 == 0 for size in self.clustering_kernel_sizes):
            raise ValueError(
                f"`clustering_kernel_size` must be a positive odd number, got {self.clustering_kernel_size}."
            )
        if self.teacher_depths is not None:
            if len(self.teacher_depths) != num_stages:
                raise ValueError(
                    f"`teacher_depths` has {len(self.teacher_depths)} stages but the model has {num_stages} "
                    f"(`depths` = {self.depths}); the teacher needs one depth per stage."
                )
            if any(depth < 1 for depth in self.teacher_depths):
                raise ValueError(f"`teacher_depths` must be positive in every stage, got {self.teacher_depths}.")
            if self.teacher_kernel_size < 1 or self.teacher_kernel_size % 2 == 0:
                raise ValueError(
                    f"`teacher_kernel_size` must be a positive odd number, got {self.teacher_kernel_size}."
                )
        if self.chunk_size_feed_forward is not None and self.chunk_size_feed_forward < 0:
            raise ValueError(
                f"`chunk_size_feed_forward` must be >= 0 (0 = no chunking), got {self.chunk_size_feed_forward}."
            )
        if self.num_channels < 1:
            raise ValueError(f"`num_channels` must be positive, got {self.num_channels}.")
        for stage, (width, ratio) in enumerate(zip(self.hidden_sizes, self.mlp_ratios)):
            if int(width * ratio) < 1:
                raise ValueError(
                    f"`mlp_ratios[{stage}]` = {ratio} gives `hidden_sizes[{stage}]` x ratio = {width * ratio}, less "
                    f"than one channel for the Mix-FFN (and the MLP clustering)."
                )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"`hidden_act` {self.hidden_act!r} is not an activation of transformers' `ACT2FN`.")
        if not self.layer_norm_eps > 0:
            raise ValueError(
                f"`layer_norm_eps` must be > 0 (a LayerNorm divides by sqrt(variance + eps), 0 for a constant row), "
                f"got {self.layer_norm_eps}."
            )
        # At 1: dropout gives zeros, and the deepest block's residual branches are always dropped in training.
        for name in (
            "drop_path_rate",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "classifier_dropout_prob",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` is a probability and must be in [0, 1], got {value}.")
        if self.decode_head_hidden_size < 1:
            raise ValueError(f"`decode_head_hidden_size` must be positive, got {self.decode_head_hidden_size}.")
        image_size = self.image_size if isinstance(self.image_size, (list, tuple)) else [self.image_size]
        if len(image_size) not in (1, 2) or any(size < 1 for size in image_size):
            raise ValueError(f"`image_size` must be a positive int or (height, width), got {self.image_size}.")
        if self.initializer_range < 0:
            raise ValueError(
                f"`initializer_range` is a standard deviation and must be >= 0, got {self.initializer_range}."
            )
        if self.cluster_loss_weight < 0:
            raise ValueError(
                f"`cluster_loss_weight` must be >= 0 (a negative weight rewards a worse clustering and the loss is "
                f"unbounded below), got {self.cluster_loss_weight}."
            )

    @classmethod
    def from_official_name(cls, name: str, **overrides) -> "PaCaViTConfig":
        """Config of one of the authors' released models (`paca_hf.releases.OFFICIAL_NAMES`), e.g.
        `pacavit_small_p2cconv_100_0` (ImageNet-1k classifier) or
        `pacahead_pacavit_small_p2cconv_100_0_512x512_160k_ade20k` (ADE20k, PaCa head). For an UperNet segmentor (`upernet_...`) or a COCO Mask R-CNN (`mask_rcnn_...`) it is the
        config of the PaCa-ViT backbone inside, with all four stages out. Raises `ValueError` for unknown names."""
        release = _RELEASES_BY_NAME.get(name)
        if release is None:
            raise ValueError(f"Unknown official PaCa-ViT name {name!r}. Known names: {', '.join(OFFICIAL_NAMES)}.")
        kwargs = release.config_kwargs()
        if release.label_set is not None:
            kwargs["id2label"] = load_id2label(release.label_set)
        if "id2label" in kwargs:
            kwargs["label2id"] = {label: index for index, label in kwargs["id2label"].items()}
            if "num_labels" in overrides and "id2label" not in overrides:
                # A new head (fine-tuning on other classes): the official class names no longer apply.
                del kwargs["id2label"], kwargs["label2id"]
        kwargs.update(overrides)
        return cls(**kwargs)


__all__ = ["PaCaViTConfig"]
