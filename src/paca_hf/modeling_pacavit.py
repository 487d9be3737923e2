# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""PyTorch PaCa-ViT model (Patch-to-Cluster Attention, Grainger et al., CVPR 2023).

One file for the whole model, as transformers' own models are (`models/segformer/modeling_segformer.py`): it also
ships on its own as the remote code of every converted Hub repo, so it is longer than the package's other modules.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BackboneOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    SemanticSegmenterOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import (
    OutputRecorder,
    capture_outputs,
    maybe_install_capturing_hooks,
)

from .configuration_pacavit import PaCaViTConfig


# For `@auto_docstring` on the forwards: PaCa-ViT's own arguments (transformers' table documents the others).
PIXEL_VALUES_DOC = r"""
pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
    The images, normalised as the image processor does ([`PaCaViTImageProcessor`]); any height and width (the first
    stage's feature map is a quarter of them, rounded up).
"""
SEGMENTATION_LABELS_DOC = r"""
labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
    Class index of every pixel, `config.semantic_loss_ignore_index` (255) for pixels to ignore. The loss is the
    cross-entropy of the logits upsampled to the labels' size plus `config.cluster_loss_weight` times that of the
    clustering logits.
"""
FORWARD_INTRO = r"""
Besides transformers' `output_hidden_states` (`True`, or the indices of the stages to return) and `output_attentions`
(with `attn_implementation="eager"`), the keyword argument `output_cluster_assignments=True` returns each stage's
cluster assignment.
"""


@auto_docstring(
    custom_intro="""
    Output of [`PaCaViTModel`]: transformers' `BaseModelOutputWithPooling` on NCHW feature maps, with the stages'
    cluster assignments.
    """
)
@dataclass
class PaCaViTModelOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, hidden_size, height, width)`):
        Feature map of the last stage, after its LayerNorm.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        Mean of the last feature map over all positions (what the classifier reads).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Feature map of each stage, `(batch_size, hidden_size, height, width)`, after its LayerNorm.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Attention weights of every block, `(batch_size, num_heads, num_patches, num_keys)` where `num_keys` is the
        stage's number of clusters (or of patches in a stage without clusters); from `attn_implementation="eager"`
        only (SDPA computes none and warns, as for transformers' models).
    cluster_assignments (`tuple(torch.FloatTensor)`, *optional*, with `output_cluster_assignments=True`):
        For each stage, the soft assignment of patches to clusters used by its last block, `(batch_size,
        num_clusters, height, width)`, summing to 1 over the patches; `None` for stages without clusters.
    """

    cluster_assignments: tuple[torch.FloatTensor | None, ...] | None = None


@auto_docstring(
    custom_intro="""
    Output of [`PaCaViTForImageClassification`]: transformers' `ImageClassifierOutput` with the stages' cluster
    assignments.
    """
)
@dataclass
class PaCaViTImageClassifierOutput(ImageClassifierOutput):
    r"""
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Feature map of each stage, as in [`PaCaViTModelOutput`].
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Attention weights of every block, as in [`PaCaViTModelOutput`].
    cluster_assignments (`tuple(torch.FloatTensor)`, *optional*, with `output_cluster_assignments=True`):
        Each stage's cluster assignment, as in [`PaCaViTModelOutput`].
    """

    cluster_assignments: tuple[torch.FloatTensor | None, ...] | None = None


@auto_docstring(
    custom_intro="""
    Output of [`PaCaViTForSemanticSegmentation`]: transformers' `SemanticSegmenterOutput` with the PaCa head's
    clustering logits and the stages' cluster assignments.
    """
)
@dataclass
class PaCaViTSemanticSegmenterOutput(SemanticSegmenterOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is provided):
        Cross-entropy of the upsampled logits plus `config.cluster_loss_weight` times that of the upsampled
        clustering logits.
    logits (`torch.FloatTensor` of shape `(batch_size, config.num_labels, height / 4, width / 4)`):
        Class scores at a quarter of the input resolution; upsample them to the image size (the image processor's
        `post_process_semantic_segmentation` does).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        Feature map of each stage, as in [`PaCaViTModelOutput`].
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        Attention weights of every block, as in [`PaCaViTModelOutput`].
    cluster_logits (`torch.FloatTensor` of shape `(batch_size, config.num_labels, height / 4, width / 4)`):
        The head's clustering logits, one cluster per class; their softmax over pixels is the cluster assignment of
        the head's patch-to-cluster attention.
    cluster_assignments (`tuple(torch.FloatTensor)`, *optional*, with `output_cluster_assignments=True`):
        Each stage's cluster assignment, as in [`PaCaViTModelOutput`].
    """

    # After transformers' fields, so that `return_dict=False` keeps the library's order (loss, logits, hidden_states,
    # attentions); without the optional outputs the tuple is `(logits, cluster_logits)`.
    cluster_logits: torch.FloatTensor | None = None
    cluster_assignments: tuple[torch.FloatTensor | None, ...] | None = None


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`(batch, height * width, channels)` -> `(batch, channels, height, width)`, as a view (channels-last memory);
    a contiguous copy in an exported graph (see below)."""
    # `view` with the sizes read from the tensors (not `unflatten`) so that TorchScript tracing records them.
    batch_size, _, channels = tokens.shape
    feature_map = tokens.transpose(1, 2).view(batch_size, channels, height, width)
    if torch.compiler.is_exporting():
        # A channels-last view is also contiguous when the batch, the height or the width is 1, so the convolutions
        # that read it guard on those sizes (to choose their output's memory format): a batch-1 example would fix the
        # exported batch to 1 and every stage's map would have to be larger than 1 x 1 (images of at least 33 px).
        # A copy by `clone`: `.contiguous()` would itself ask whether the view is contiguous.
        return feature_map.clone(memory_format=torch.contiguous_format)
    return feature_map


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """`(batch, channels, height, width)` -> `(batch, height * width, channels)`."""
    return feature_map.flatten(2).transpose(1, 2)


def is_tracing() -> bool:
    """True while the model is traced for a graph (torch.export, dynamo ONNX export, torch.compile, TorchScript
    ONNX export): there the eager-only memory-format tricks are left out (a graph has no memory format)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole residual branches per sample with probability `drop_prob`, scaling the kept ones
    by 1 / (1 - drop_prob); `drop_prob=1` drops every branch (zeros, where the scaling would give 0 / 0 = NaN)."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    if drop_prob >= 1.0:
        return hidden_states * 0  # still on the autograd graph, as a dropped branch is for DDP
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
    return hidden_states * mask / keep_prob


class PaCaViTConv2d(nn.Conv2d):
    """Conv2d computed in channels-last memory. Feature maps here are views of `(batch, tokens, channels)`
    tensors, i.e. channels-last already: with a channels-last weight the convolution reads them without a copy and
    returns a map that flattens back to contiguous tokens. (A depthwise weight of shape (C, 1, k, k) counts as
    contiguous in both formats, so it is restrided explicitly; this costs a copy of the weight only.) A traced graph
    has no memory format, so there the plain convolution is recorded."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        if is_tracing():
            return super().forward(feature_map)
        weight = torch.empty_like(self.weight, memory_format=torch.channels_last).copy_(self.weight)
        return self._conv_forward(feature_map.contiguous(memory_format=torch.channels_last), weight, self.bias)


class PaCaViTDropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class PaCaViTEmbeddings(nn.Module):
    """The stem: two strided 3x3 convolutions (to half the first stage's channels, then to all of them; stride 4 in
    all) and a LayerNorm over channels."""

    def __init__(self, config: PaCaViTConfig):
        super().__init__()
        hidden_size = config.hidden_sizes[0]
        self.conv1 = PaCaViTConv2d(config.num_channels, hidden_size // 2, kernel_size=3, stride=2, padding=1)
        self.conv2 = PaCaViTConv2d(hidden_size // 2, hidden_size, kernel_size=3, stride=2, padding=1)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """`(batch, num_channels, height, width)` pixels -> `(batch, patches, hidden_sizes[0])` tokens and the
        patch grid's height and width (a quarter of the image's, rounded up)."""
        feature_map = self.conv2(self.conv1(pixel_values))
        height, width = feature_map.shape[-2:]
        return self.layer_norm(map_to_tokens(feature_map)), height, width


class PaCaViTPatchEmbeddings(nn.Module):
    """The downsampling at the start of every stage but the first: a stride-2 3x3 convolution and a LayerNorm over
    channels."""

    def __init__(self, config: PaCaViTConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.projection = PaCaViTConv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.layer_norm = nn.LayerNorm(out_channels, eps=config.layer_norm_eps)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        feature_map = self.projection(feature_map)
        height, width = feature_map.shape[-2:]
        return self.layer_norm(map_to_tokens(feature_map)), height, width


class PaCaViTConvClustering(nn.Module):
    """Cluster logits from a depthwise kxk conv, GELU, 1x1 conv, GELU and a 1x1 conv to the clusters."""

    def __init__(self, config: PaCaViTConfig, hidden_size: int, num_clusters: int, kernel_size: int, mlp_ratio):
        super().__init__()
        self.depthwise = PaCaViTConv2d(
            hidden_size, hidden_size, kernel_size, padding=(kernel_size - 1) // 2, groups=hidden_size
        )
        self.pointwise = PaCaViTConv2d(hidden_size, hidden_size, kernel_size=1)
        self.to_clusters = PaCaViTConv2d(hidden_size, num_clusters, kernel_size=1, bias=False)
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        feature_map = tokens_to_map(hidden_states, height, width)
        feature_map = self.activation(self.depthwise(feature_map))
        feature_map = self.activation(self.pointwise(feature_map))
        return self.to_clusters(feature_map).flatten(2)


class PaCaViTMlpClustering(nn.Module):
    """Cluster logits from a two-layer MLP (Linear, GELU, Linear) applied to every patch."""

    def __init__(self, config: PaCaViTConfig, hidden_size: int, num_clusters: int, kernel_size: int, mlp_ratio):
        super().__init__()
        self.dense = nn.Linear(hidden_size, int(hidden_size * mlp_ratio))
        self.activation = ACT2FN[config.hidden_act]
        self.to_clusters = nn.Linear(int(hidden_size * mlp_ratio), num_clusters)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.to_clusters(self.activation(self.dense(hidden_states))).transpose(1, 2)


class PaCaViTLinearClustering(nn.Module):
    """Cluster logits from one linear map of every patch."""

    def __init__(self, config: PaCaViTConfig, hidden_size: int, num_clusters: int, kernel_size: int, mlp_ratio):
        super().__init__()
        self.to_clusters = nn.Linear(hidden_size, num_clusters, bias=False)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.to_clusters(hidden_states).transpose(1, 2)


CLUSTERING_CLASSES = {
    "conv": PaCaViTConvClustering,
    "mlp": PaCaViTMlpClustering,
    "linear": PaCaViTLinearClustering,
}


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    attn_weights = attn_weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class PaCaViTAttention(nn.Module):
    """Patch-to-cluster attention: queries from the patches, keys and values from `num_clusters` clusters, each a
    softmax-weighted average of the patches. With 0 clusters this is plain patch-to-patch attention."""

    def __init__(self, config: PaCaViTConfig, stage_index: int, computes_assignment: bool):
        super().__init__()
        self.config = config
        hidden_size = config.hidden_sizes[stage_index]
        self.num_heads = config.num_attention_heads[stage_index]
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_clusters = config.num_clusters[stage_index]
        self.clustering = None
        self.cluster_norm = None
        if self.num_clusters > 0:
            self.cluster_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
            if computes_assignment:
                self.clustering = CLUSTERING_CLASSES[config.clustering_type](
                    config,
                    hidden_size,
                    self.num_clusters,
                    config.clustering_kernel_sizes[stage_index],
                    config.mlp_ratios[stage_index],
                )
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        height: int,
        width: int,
        cluster_assignment: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the attention output `(batch, patches, hidden_size)`, the attention weights `(batch, heads, patches,
        keys)` (from the eager implementation only: None with SDPA, as in transformers' models) and the
        cluster assignment map `(batch, clusters, height, width)` used (None without clusters). The map is the tensor
        the clusters are computed from, so it is on the autograd graph."""
        batch_size, num_patches, hidden_size = hidden_states.shape
        if self.num_clusters > 0:
            if self.clustering is not None:
                logits = self.clustering(hidden_states, height, width)
                cluster_assignment = logits.softmax(dim=-1, dtype=torch.float32).to(hidden_states.dtype)
                cluster_assignment = cluster_assignment.view(batch_size, self.num_clusters, height, width)
            if cluster_assignment is None:
                raise ValueError("This block reuses a cluster assignment, but none was passed to it.")
            key_value_states = self.cluster_norm(torch.matmul(cluster_assignment.flatten(2), hidden_states))
        else:
            key_value_states = hidden_states

        head_shape = (batch_size, -1, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(head_shape).transpose(1, 2)
        key = self.k_proj(key_value_states).view(head_shape).transpose(1, 2)
        value = self.v_proj(key_value_states).view(head_shape).transpose(1, 2)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            scaling=self.scaling,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            is_causal=False,
            **kwargs,
        )
        attn_output = self.dropout(self.o_proj(attn_output.reshape(batch_size, num_patches, hidden_size)))
        return attn_output, attn_weights, cluster_assignment


def default_chunk_size_feed_forward(device: torch.device) -> int:
    """`chunk_size_feed_forward=None`: bands of 4096 patches on a CPU, where a fresh block of tens of MiB is faulted
    in page by page (bands measured 0.82-0.85x the whole map's time at 512-1024); the whole map (0) on other
    devices, whose caching allocators reuse blocks and where bands would only add kernel launches (not yet
    measured: `scripts/device_check.sh` times both)."""
    return 4096 if device.type == "cpu" else 0


def is_plain_weight(linear: nn.Linear) -> bool:
    """True when `linear.weight` is an ordinary parameter (or its fake tensor while torch.export traces), False for
    a tensor subclass such as torchao's quantized weights or a DTensor. By type, which dynamo reads as it is."""
    return type(linear.weight) in (nn.Parameter, torch.Tensor) or isinstance(linear.weight, FakeTensor)


def pointwise_conv(feature_map: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """`linear` applied to every position of a `(batch, in_features, height, width)` map, as a 1x1 convolution."""
    weight = linear.weight.view(linear.out_features, linear.in_features, 1, 1)
    return F.conv2d(feature_map, weight, linear.bias)


def linear_to_map(linear: nn.Linear, tokens: torch.Tensor, height: int, width: int, map_layout: bool) -> torch.Tensor:
    """`linear` on `(batch, height * width, in_features)` tokens, returned as a `(batch, out_features, height, width)`
    map. Token layout: the layer reads the tokens and its output is viewed as a channels-last map (no copy). Map
    layout (a dynamo graph, which has no memory format): the narrow input becomes the map and the layer runs as a
    1x1 convolution, so that the wide output is never transposed."""
    if map_layout:
        return pointwise_conv(tokens_to_map(tokens, height, width), linear)
    return tokens_to_map(linear(tokens), height, width)


def linear_to_tokens(linear: nn.Linear, hidden_states: torch.Tensor, map_layout: bool) -> torch.Tensor:
    """`linear` on the activations of `layout_for_linear`, returned as `(batch, height * width, out_features)` tokens
    (the map layout transposes the narrow output only)."""
    if map_layout:
        return map_to_tokens(pointwise_conv(hidden_states, linear))
    return linear(hidden_states)


def layout_for_linear(feature_map: torch.Tensor, map_layout: bool) -> torch.Tensor:
    """A `(batch, channels, height, width)` map as the layout's activations: the map itself, or its tokens (a view
    of a channels-last map). In the token layout the elementwise activation runs on the tokens, as the linear layer
    after it reads them: on the map it took 1.05-1.25x the time of the Mix-FFN on this project's CPU."""
    return feature_map if map_layout else map_to_tokens(feature_map)


def row_bands(height: int, rows_per_band: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The Mix-FFN's bands of a map `height` rows high: for each band its rows `(start, stop)` (stop exclusive) and
    the rows its 3x3 depthwise convolution reads, `(start - 1, stop + 1)` clipped to the map, so that the bands give
    the whole map's outputs. The boundaries are arithmetic on the sizes, decided by the band's index only: with
    symbolic sizes (torch.compile) the one guard is then on the number of bands, so one graph serves every size with
    as many bands, instead of one graph per height."""
    num_bands = (height + rows_per_band - 1) // rows_per_band
    bands = []
    for index in range(num_bands):
        start = index * rows_per_band
        stop = start + rows_per_band if index < num_bands - 1 else height
        first = start - 1 if index > 0 else 0
        last = stop + 1 if index < num_bands - 1 else height
        bands.append(((start, stop), (first, last)))
    return bands


class PaCaViTMixFFN(nn.Module):
    """Segformer's Mix-FFN (`fc1`, a 3x3 depthwise convolution `dwconv`, activation, `fc2`) with a residual
    connection around the convolution, as the authors'.

    Two speed paths beside it, with the same outputs (up to float rounding):
    - bands of rows (`row_bands`): the map is computed in horizontal bands of whole rows, each of at most
      `config.chunk_size_feed_forward` patches per image (0: the whole map at once; None:
      `default_chunk_size_feed_forward` of the input's device). The expanded activations are `mlp_ratio` times larger
      than the input, and on a CPU a freshly allocated block of tens of MiB is faulted in page by page; small bands
      reuse warm memory, so time stays linear in the number of pixels and the peak memory of inference drops.
      `torch.compile` keeps the bands (with symbolic sizes dynamo guards on their number, so sizes with as many bands
      share a graph; `chunk_size_feed_forward=0` compiles once for all sizes); a graph exported for any size
      (`torch.export`, ONNX, whose runtimes have their own allocators) computes the whole map in one band.
    - layouts (`linear_to_map`, `layout_for_linear`, `linear_to_tokens`): eager mode works on the `(batch, patches, channels)` tokens,
      which the convolution reads as a channels-last map without a copy; a dynamo graph (torch.compile, torch.export,
      the ONNX exporter) runs `fc1` and `fc2` as 1x1 convolutions on the `(batch, channels, height, width)` map (ONNX
      Runtime at 512: about 0.8x the time of the token layout).
    """

    def __init__(self, config: PaCaViTConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.chunk_size = config.chunk_size_feed_forward
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.dwconv = PaCaViTConv2d(
            intermediate_size, intermediate_size, kernel_size=3, padding=1, groups=intermediate_size
        )
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """`(batch, height * width, hidden_size)` tokens -> tokens of the same shape."""
        rows_per_band = self.rows_per_band(hidden_states, width)
        if rows_per_band is None or rows_per_band >= height:
            return self.forward_band(hidden_states, height, width)
        bands = row_bands(height, rows_per_band)
        return torch.cat([self.forward_band(hidden_states, height, width, *band) for band in bands], dim=1)

    def forward_band(
        self,
        hidden_states: torch.Tensor,
        height: int,
        width: int,
        rows: tuple[int, int] | None = None,
        context_rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Output tokens `(batch, patches of the band, hidden_size)` for the band `rows` of the `height x width` map,
        expanding its `context_rows` (see `row_bands`); `rows=None`: the whole map."""
        if rows is not None:
            (start, stop), (first, last) = rows, context_rows
            hidden_states, height = hidden_states[:, first * width : last * width], last - first
        map_layout = self.uses_map_layout()
        hidden_states = linear_to_map(self.fc1, hidden_states, height, width, map_layout)
        # In place on the conv's fresh output, not on a view of it (autograd would then copy the whole map in
        # backward); its backward does not need it. One expanded map less at peak.
        hidden_states = self.dwconv(hidden_states).add_(hidden_states)
        if rows is not None:
            hidden_states = hidden_states[:, :, start - first : stop - first]
        hidden_states = layout_for_linear(hidden_states, map_layout)
        hidden_states = self.activation(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = linear_to_tokens(self.fc2, hidden_states, map_layout)
        return self.dropout(hidden_states)

    def rows_per_band(self, hidden_states: torch.Tensor, width: int) -> int | None:
        """Rows of patches per band; None for the whole map in one band (always in an exported graph)."""
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            return None
        chunk_size = self.chunk_size
        if chunk_size is None:
            chunk_size = default_chunk_size_feed_forward(hidden_states.device)
        # `sym_max`, not `max`: with symbolic sizes (torch.compile) `max` would specialise the width.
        return None if chunk_size == 0 else torch.sym_max(1, chunk_size // width)

    def uses_map_layout(self) -> bool:
        """Dynamo graphs (torch.compile, torch.export, the ONNX exporter) use the map layout; TorchScript's ONNX
        exporter needs parameters as convolution kernels, so it records the token layout. So do weights that are
        tensor subclasses (torchao's quantized weights, DTensors): they implement `linear`, not a view as a kernel."""
        return torch.compiler.is_compiling() and is_plain_weight(self.fc1) and is_plain_weight(self.fc2)


class PaCaViTLayer(GradientCheckpointingLayer):
    """A pre-norm block: patch-to-cluster attention and a Mix-FFN, each with a residual connection."""

    def __init__(self, config: PaCaViTConfig, stage_index: int, drop_path_rate: float, computes_assignment: bool):
        super().__init__()
        hidden_size = config.hidden_sizes[stage_index]
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = PaCaViTAttention(config, stage_index, computes_assignment)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = PaCaViTMixFFN(config, hidden_size, int(hidden_size * config.mlp_ratios[stage_index]))
        self.drop_path = PaCaViTDropPath(drop_path_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        height: int,
        width: int,
        cluster_assignment: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the block's output tokens and the cluster assignment its attention used."""
        attention_output, _, cluster_assignment = self.attention(
            self.layernorm_before(hidden_states), height, width, cluster_assignment, **kwargs
        )
        hidden_states = hidden_states + self.drop_path(attention_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states), height, width))
        return hidden_states, cluster_assignment


class PaCaViTConvActNorm(nn.Module):
    """Convolution, activation, BatchNorm: the building block of the ConvMixer clustering teacher."""

    def __init__(self, config: PaCaViTConfig, in_channels, out_channels, kernel_size=1, stride=1, groups=1):
        super().__init__()
        self.conv = PaCaViTConv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, groups=groups
        )
        self.activation = ACT2FN[config.hidden_act]
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.conv(feature_map)))


class PaCaViTConvMixerLayer(nn.Module):
    """ConvMixer block: residual depthwise conv-act-BN, then pointwise conv-act-BN."""

    def __init__(self, config: PaCaViTConfig, channels: int):
        super().__init__()
        kernel_size = config.teacher_kernel_size
        self.depthwise = PaCaViTConvActNorm(config, channels, channels, kernel_size, groups=channels)
        self.pointwise = PaCaViTConvActNorm(config, channels, channels)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.pointwise(feature_map + self.depthwise(feature_map))


class PaCaViTBlurDownsample(nn.Module):
    """Anti-aliased downsampling: a fixed [1, 2, 1] x [1, 2, 1] / 16 blur, then a stride-2 conv-act-BN."""

    def __init__(self, config: PaCaViTConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.projection = PaCaViTConvActNorm(config, in_channels, out_channels, kernel_size=3, stride=2)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        taps = feature_map.new_tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :] / 16).expand(feature_map.shape[1], 1, 3, 3)
        blurred = F.conv2d(feature_map, kernel, padding=1, groups=feature_map.shape[1])
        return self.projection(blurred)


class PaCaViTClusteringTeacher(nn.Module):
    """ConvMixer with a top-down feature pyramid that supplies every stage's cluster assignment (and adds its stage
    outputs to the transformer's), as in the authors' "teacher" models."""

    def __init__(self, config: PaCaViTConfig):
        super().__init__()
        sizes = config.hidden_sizes
        self.stages = nn.ModuleList(
            nn.ModuleList(PaCaViTConvMixerLayer(config, size) for _ in range(depth))
            for size, depth in zip(sizes, config.teacher_depths)
        )
        self.downsamples = nn.ModuleList(
            PaCaViTBlurDownsample(config, sizes[index], sizes[index + 1]) for index in range(len(sizes) - 1)
        )
        self.laterals = nn.ModuleList(
            PaCaViTConvActNorm(config, sizes[index + 1], sizes[index]) for index in range(len(sizes) - 1)
        )
        self.fusions = nn.ModuleList(PaCaViTConvMixerLayer(config, sizes[index]) for index in range(len(sizes) - 1))
        self.to_clusters = nn.ModuleList(
            PaCaViTConv2d(size, count, kernel_size=1) if count > 0 else None
            for size, count in zip(sizes, config.num_clusters)
        )

    def forward(self, feature_map: torch.Tensor) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
        stage_outputs = []
        for index, stage in enumerate(self.stages):
            if index > 0:
                feature_map = self.downsamples[index - 1](feature_map)
            for layer in stage:
                feature_map = layer(feature_map)
            stage_outputs.append(feature_map)

        fused = list(stage_outputs)
        for index in range(len(stage_outputs) - 1, 0, -1):
            upsampled = F.interpolate(
                fused[index], size=stage_outputs[index - 1].shape[-2:], mode="bilinear", align_corners=False
            )
            fused[index - 1] = self.fusions[index - 1](stage_outputs[index - 1] + self.laterals[index - 1](upsampled))

        # Softmax over the patches, kept as maps `(batch, clusters, height, width)`.
        assignments = []
        for to_clusters, features in zip(self.to_clusters, fused):
            logits = None if to_clusters is None else to_clusters(features)
            assignments.append(None if logits is None else logits.flatten(2).softmax(dim=-1).view_as(logits))
        return assignments, [map_to_tokens(output) for output in stage_outputs]


class PaCaViTClusterAssignmentOutput(nn.Module):
    """Where `output_cluster_assignments` records a stage's cluster assignment map `(batch, clusters, height, width)`
    (the one its last block used), one entry per stage: returns its input unchanged, None for a stage without
    clusters (an output hook records a None output too, which keeps the entries aligned with the stages)."""

    def forward(self, cluster_assignment: torch.Tensor | None) -> torch.Tensor | None:
        return cluster_assignment


class PaCaViTStage(nn.Module):
    """Downsampling (for every stage but the first), PaCa blocks and a final LayerNorm."""

    def __init__(self, config: PaCaViTConfig, stage_index: int, drop_path_rates: list[float]):
        super().__init__()
        hidden_size = config.hidden_sizes[stage_index]
        self.downsample = None
        if stage_index > 0:
            self.downsample = PaCaViTPatchEmbeddings(config, config.hidden_sizes[stage_index - 1], hidden_size)
        taught = config.teacher_depths is not None
        interval = config.clustering_interval[stage_index]
        self.layers = nn.ModuleList(
            PaCaViTLayer(
                config,
                stage_index,
                drop_path_rates[index],
                computes_assignment=not taught and (index == 0 or (interval > 0 and index % interval == 0)),
            )
            for index in range(config.depths[stage_index])
        )
        self.layer_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.cluster_assignment_output = PaCaViTClusterAssignmentOutput()

    def forward(
        self,
        hidden_states: torch.Tensor,
        height: int | None = None,
        width: int | None = None,
        cluster_assignment: torch.Tensor | None = None,
        teacher_output: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Takes the previous stage's feature map `(batch, channels, height, width)` (or the stem's tokens with their
        `height` and `width`) and returns this stage's normalised feature map and the cluster assignment map of its
        last block (None without clusters)."""
        if self.downsample is not None:
            hidden_states, height, width = self.downsample(hidden_states)
        for layer in self.layers:
            hidden_states, cluster_assignment = layer(hidden_states, height, width, cluster_assignment, **kwargs)
        if teacher_output is not None:
            hidden_states = hidden_states + teacher_output
        feature_map = tokens_to_map(self.layer_norm(hidden_states), height, width)
        return feature_map, self.cluster_assignment_output(cluster_assignment)


@auto_docstring(
    custom_intro="""
    The base class of the PaCa-ViT models: their config class, weight initialisation (the authors') and the outputs
    they record (`hidden_states`, `attentions`, `cluster_assignments`).
    """
)
class PaCaViTPreTrainedModel(PreTrainedModel):
    config: PaCaViTConfig
    config_class = PaCaViTConfig
    base_model_prefix = "pacavit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # Patch queries, cluster (or patch) keys and values, no mask: flex attention computes the same (on a CPU too).
    _supports_flex_attn = True
    _no_split_modules = ["PaCaViTLayer", "PaCaViTClusteringTeacher"]
    _input_embed_layer = "embeddings"  # the convolutional stem
    _can_record_outputs = {
        # The stages' NCHW feature maps (the next stage's input, so they are on the autograd graph); the stem's
        # input is raw pixels and is not recorded.
        "hidden_states": OutputRecorder(
            PaCaViTStage, capture_initial_hidden_state=False, num_hidden_layers_key="num_stages"
        ),
        "attentions": PaCaViTAttention,
        # On a pass-through module inside each stage, not `OutputRecorder(PaCaViTStage, index=1)` on the stage's
        # `(feature_map, cluster_assignment)`: transformers skips a None found at an index of a tuple output, which
        # would misalign the entries of stages without clusters (a module's whole output is recorded, None too).
        "cluster_assignments": PaCaViTClusterAssignmentOutput,
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The authors' init: truncated normal for Linear, fan-out normal for Conv2d, 1/0 for norms."""
        super()._init_weights(module)
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            head = getattr(self, "decode_head", None)
            if head is not None and module is head.classifier:
                # mmseg's init of the classifier (`conv_seg`); fan-out init would start the cross-entropy at ~8.
                init.normal_(module.weight, 0.0, 0.01)
                init.zeros_(module.bias)
            elif head is not None and module is head.to_clusters:
                # The authors' head leaves its clustering output conv at PyTorch's default init.
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1.0 / math.sqrt(module.in_channels)
                init.uniform_(module.bias, -bound, bound)
            else:
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    init.zeros_(module.bias)


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int) -> None:
    """Refuse inputs the model cannot read, with a message that names the problem."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"`pixel_values` must have 4 dimensions (batch, channels, height, width), got shape "
            f"{tuple(pixel_values.shape)}."
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` must be a floating-point tensor (normalised images), got dtype {pixel_values.dtype}; "
            f"use the image processor or convert with `.float()`."
        )
    if pixel_values.shape[0] == 0:
        raise ValueError("`pixel_values` is an empty batch (batch size 0).")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"`pixel_values` has {pixel_values.shape[1]} channels but the model expects {num_channels} "
            f"(config.num_channels); shape {tuple(pixel_values.shape)} should be (batch, {num_channels}, height, width)."
        )
    if pixel_values.shape[2] == 0 or pixel_values.shape[3] == 0:
        raise ValueError(f"`pixel_values` has an empty spatial size: shape {tuple(pixel_values.shape)}.")


@auto_docstring(
    custom_intro="""
    The bare PaCa-ViT encoder (a convolutional stem, an optional clustering teacher and the stages of
    patch-to-cluster attention), returning the last stage's feature map and its mean.
    """
)
class PaCaViTModel(PaCaViTPreTrainedModel):
    def __init__(self, config: PaCaViTConfig):
        super().__init__(config)
        self.embeddings = PaCaViTEmbeddings(config)
        self.clustering_teacher = PaCaViTClusteringTeacher(config) if config.teacher_depths is not None else None
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        starts = [sum(config.depths[:index]) for index in range(config.num_stages)]
        self.stages = nn.ModuleList(
            PaCaViTStage(config, index, rates[start : start + depth])
            for index, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.post_init()

    def post_init(self):
        """Also installs the hooks that record `hidden_states`, `attentions` and `cluster_assignments` now, as
        transformers' backbones do, rather than on the first call that asks for them: installing them takes a lock,
        which `torch.compile(fullgraph=True)` cannot trace, so a fresh model's first compiled call would fail."""
        super().post_init()
        maybe_install_capturing_hooks(self)

    @auto_docstring(custom_intro=FORWARD_INTRO, custom_args=PIXEL_VALUES_DOC)
    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> PaCaViTModelOutput:
        check_pixel_values(pixel_values, self.config.num_channels)
        kwargs["output_attentions"] = kwargs.get("output_attentions") or self.config.output_attentions

        hidden_states, height, width = self.embeddings(pixel_values)
        teacher_assignments = teacher_outputs = [None] * self.config.num_stages
        if self.clustering_teacher is not None:
            teacher_assignments, teacher_outputs = self.clustering_teacher(tokens_to_map(hidden_states, height, width))

        for stage, teacher_assignment, teacher_output in zip(self.stages, teacher_assignments, teacher_outputs):
            hidden_states, _ = stage(hidden_states, height, width, teacher_assignment, teacher_output, **kwargs)
        return PaCaViTModelOutput(last_hidden_state=hidden_states, pooler_output=hidden_states.mean(dim=(2, 3)))


@auto_docstring(
    custom_intro="""
    PaCa-ViT with a linear classifier on the mean of the last feature map (the authors' ImageNet-1k models).
    """
)
class PaCaViTForImageClassification(PaCaViTPreTrainedModel):
    def __init__(self, config: PaCaViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pacavit = PaCaViTModel(config)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    @auto_docstring(custom_intro=FORWARD_INTRO, custom_args=PIXEL_VALUES_DOC)
    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> PaCaViTImageClassifierOutput:
        # `return_dict=True`: the heads read fields of the encoder's output even when `config.return_dict` is False.
        outputs = self.pacavit(pixel_values, return_dict=True, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return PaCaViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cluster_assignments=outputs.cluster_assignments,
        )


class PaCaViTConvNormAct(nn.Module):
    """1x1 convolution (no bias), BatchNorm, ReLU: mmseg's `ConvModule` as the PaCa head uses it."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU()

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(feature_map)))


class PaCaViTClusterProjection(nn.Module):
    """Linear, BatchNorm over channels, ReLU, applied to each cluster's features."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.norm = nn.BatchNorm1d(out_features)
        self.activation = nn.ReLU()

    def forward(self, clusters: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(clusters)
        # BatchNorm over the channels with the statistics of all (image, cluster) rows, as mmseg's BatchNorm1d on
        # `(batch, channels, clusters)`; as `(rows, channels)` it needs no transposes (on which a compiled backward
        # failed).
        hidden_states = self.norm(hidden_states.flatten(0, 1)).view_as(hidden_states)
        return self.activation(hidden_states)


class PaCaViTDecodeHead(nn.Module):
    """The paper's PaCa segmentation head: the stages' features, projected and concatenated at the first stage's
    resolution, attend to one learned cluster per class."""

    def __init__(self, config: PaCaViTConfig):
        super().__init__()
        channels = config.decode_head_hidden_size
        concat_channels = channels * config.num_stages
        self.stage_projections = nn.ModuleList(PaCaViTConvNormAct(size, channels) for size in config.hidden_sizes)
        self.query_projection = PaCaViTConvNormAct(concat_channels, channels)
        self.clustering = PaCaViTConvNormAct(concat_channels, channels)
        self.to_clusters = nn.Conv2d(channels, config.num_labels, kernel_size=1)
        self.key_projection = PaCaViTClusterProjection(concat_channels, channels)
        self.value_projection = PaCaViTClusterProjection(concat_channels, channels)
        self.output_projection = PaCaViTConvNormAct(channels, channels)
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        size = feature_maps[0].shape[-2:]
        features = torch.cat(
            [
                F.interpolate(projection(feature_map), size=size, mode="bilinear", align_corners=False)
                for projection, feature_map in zip(self.stage_projections, feature_maps)
            ],
            dim=1,
        )
        query = map_to_tokens(self.query_projection(features))
        cluster_logits = self.to_clusters(self.clustering(features))
        assignment = cluster_logits.flatten(2).softmax(dim=-1, dtype=torch.float32).to(features.dtype)
        clusters = torch.matmul(assignment, map_to_tokens(features))
        key, value = self.key_projection(clusters), self.value_projection(clusters)
        # One head and no 1/sqrt(d) scaling, exactly as the authors' head.
        attention = torch.matmul(query, key.transpose(1, 2)).softmax(dim=-1, dtype=torch.float32).to(query.dtype)
        output = tokens_to_map(torch.matmul(attention, value), *size)
        logits = self.classifier(self.dropout(self.output_projection(output)))
        return logits, cluster_logits


@auto_docstring(
    custom_intro="""
    PaCa-ViT with the paper's PaCa segmentation head (the authors' ADE20k models): the stages' feature maps at a
    quarter of the input resolution attend to one learned cluster per class.
    """
)
class PaCaViTForSemanticSegmentation(PaCaViTPreTrainedModel):
    def __init__(self, config: PaCaViTConfig):
        super().__init__(config)
        self.pacavit = PaCaViTModel(config)
        self.decode_head = PaCaViTDecodeHead(config)
        self.post_init()

    def compute_loss(self, logits: torch.Tensor, cluster_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of both logits, upsampled to the labels' size, ignoring `semantic_loss_ignore_index`."""
        if self.config.num_labels < 2:
            raise ValueError(f"Semantic segmentation needs at least 2 labels, config has {self.config.num_labels}.")
        if labels.ndim != 3:
            raise ValueError(f"`labels` must have shape (batch, height, width), got {tuple(labels.shape)}.")
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"`labels` has batch size {labels.shape[0]} but the images {logits.shape[0]}.")

        ignore_index = self.config.semantic_loss_ignore_index
        labels = labels.long()
        # The mean over the scored pixels, as a sum divided by their count (at least 1): no value-dependent branch, so
        # the loss traces (torch.export / compile) and needs no device sync; a batch with no scored pixel gives 0, as
        # in mmseg (not 0/0), still connected to every output for DDP.
        num_scored = (labels != ignore_index).sum().clamp(min=1)

        def cross_entropy(scores):
            # Upsampled one image at a time in eager mode: the full-size scores (`num_labels` x the labels' size, 150
            # MiB per ADE20k image at 512) then exist for one image at once, which lowers the training peak (by 300
            # MiB at 512, batch 2); a traced graph keeps the batch whole so that its size stays symbolic.
            chunks = [(scores, labels)] if is_tracing() else zip(scores.split(1), labels.split(1))
            total = 0
            for chunk_scores, chunk_labels in chunks:
                total = total + F.cross_entropy(
                    F.interpolate(chunk_scores, size=labels.shape[-2:], mode="bilinear", align_corners=False),
                    chunk_labels,
                    ignore_index=ignore_index,
                    reduction="sum",
                )
            return total / num_scored

        return cross_entropy(logits) + self.config.cluster_loss_weight * cross_entropy(cluster_logits)

    @auto_docstring(custom_intro=FORWARD_INTRO, custom_args=PIXEL_VALUES_DOC + SEGMENTATION_LABELS_DOC)
    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> PaCaViTSemanticSegmenterOutput:
        # The head reads every stage's feature map (`@filter_output_hidden_states` asks for them all and returns
        # those the caller selected).
        outputs = self.pacavit(pixel_values, return_dict=True, **kwargs)
        logits, cluster_logits = self.decode_head(outputs.hidden_states)
        loss = None if labels is None else self.compute_loss(logits, cluster_logits, labels)
        return PaCaViTSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            cluster_logits=cluster_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cluster_assignments=outputs.cluster_assignments,
        )


@auto_docstring(
    custom_intro="""
    PaCa-ViT as a backbone for dense heads (UperNet, Mask2Former, ...): the NCHW feature maps of the stages named in
    `config.out_features`, each after its stage's LayerNorm.
    """
)
class PaCaViTBackbone(BackboneMixin, PaCaViTModel):
    def __init__(self, config: PaCaViTConfig):
        super().__init__(config)
        self.num_features = list(config.hidden_sizes)

    @auto_docstring(custom_intro=FORWARD_INTRO, custom_args=PIXEL_VALUES_DOC)
    @can_return_tuple
    @filter_output_hidden_states
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        outputs = PaCaViTModel.forward(self, pixel_values, return_dict=True, **kwargs)
        feature_maps = tuple(
            hidden_state
            for stage, hidden_state in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        )
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class PaCaViTWeightRenaming(WeightRenaming):
    """A rename applied when loading only: `save_pretrained` writes today's names (transformers renames loaded keys
    back on saving, to keep a checkpoint's layout for older library versions; no PaCa-ViT checkpoint was published
    with the old names, so nothing needs them)."""

    __slots__ = ()

    def reverse_transform(self) -> WeightRenaming:
        return self.copy(self._original_target_patterns, self._original_target_patterns)


# Folders saved before the modules took transformers 5.25's names (`q_proj`, ..., `fc1`, `dwconv`, `fc2`, a stem
# without `nn.Sequential`) load with transformers' mechanism for renamed checkpoints. Registered by model type, so
# that it also applies to a PaCa-ViT backbone inside UperNet and to the remote code (this file) of a Hub repo.
LEGACY_WEIGHT_NAMES = {
    r"embeddings\.projection\.0\.": "embeddings.conv1.",
    r"embeddings\.projection\.1\.": "embeddings.conv2.",
    r"attention\.query\.": "attention.q_proj.",
    r"attention\.key\.": "attention.k_proj.",
    r"attention\.value\.": "attention.v_proj.",
    r"attention\.dense\.": "attention.o_proj.",
    r"mlp\.dense1\.": "mlp.fc1.",
    r"mlp\.depthwise_conv\.": "mlp.dwconv.",
    r"mlp\.dense2\.": "mlp.fc2.",
}
register_checkpoint_conversion_mapping(
    PaCaViTConfig.model_type,
    [PaCaViTWeightRenaming(old, new) for old, new in LEGACY_WEIGHT_NAMES.items()],
    overwrite=True,
)


# The image-segmentation pipeline checks a model's class name against transformers' table of segmentation models,
# keyed by model type, where registered and remote-code classes are missing (it would log an error although it
# works). The entry is made here, so that both `import paca_hf` and a repo's remote code (this file, loaded with
# `trust_remote_code=True`) make it; no built-in model uses our model type.
MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(
    PaCaViTConfig.model_type, PaCaViTForSemanticSegmentation.__name__
)


__all__ = [
    "PaCaViTBackbone",
    "PaCaViTForImageClassification",
    "PaCaViTImageClassifierOutput",
    "PaCaViTModel",
    "PaCaViTModelOutput",
    "PaCaViTForSemanticSegmentation",
    "PaCaViTPreTrainedModel",
    "PaCaViTSemanticSegmenterOutput",
]
