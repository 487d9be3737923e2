"""The one small-config factory of the tests: PaCa-ViT configs that build and run in milliseconds on a CPU.

    from tiny_configs import tiny_config, tiny_config_kwargs
    config = tiny_config(num_labels=5)                    # a PaCaViTConfig
    config = tiny_config(hidden_sizes=[16, 32, 48, 64])   # any field overridden
    tiny_config(drop_path_rate=0.1).to_json_file(path)    # a config.json for the scripts' --config_name

The default is PaCa-Tiny's layout (four stages, clusters in the first three, none in the last, a PaCa decode
head) at the smallest widths that keep every code path: multi-head attention in stages 3-4, a 3x3 clustering
convolution.
"""

from paca_hf import PaCaViTConfig


TINY_CONFIG = {
    "hidden_sizes": [16, 24, 32, 40],
    "depths": [1, 1, 1, 1],
    "num_attention_heads": [1, 1, 2, 2],
    "mlp_ratios": [2, 2, 2, 2],
    "num_clusters": [4, 4, 4, 0],
    "clustering_kernel_size": 3,
    "decode_head_hidden_size": 16,
    "drop_path_rate": 0.0,
}


def tiny_config_kwargs(**overrides) -> dict:
    """`TINY_CONFIG` (a fresh copy) updated with `overrides`: keyword arguments of `PaCaViTConfig`."""
    return {**TINY_CONFIG, **overrides}


def tiny_config(**overrides) -> PaCaViTConfig:
    """A tiny `PaCaViTConfig`: `TINY_CONFIG` with `overrides`."""
    return PaCaViTConfig(**tiny_config_kwargs(**overrides))


TINY_DETECTOR_CONFIG = {
    "fpn_hidden_size": 16,
    "rpn_hidden_size": 16,
    "box_head_hidden_size": 32,
    "mask_head_hidden_size": 16,
    "num_mask_head_convs": 2,
}


def tiny_detector_config(backbone_overrides: dict | None = None, **overrides):
    """A tiny `PaCaViTMaskRCNNConfig`: `TINY_DETECTOR_CONFIG` heads on `tiny_config(**backbone_overrides)`, with
    `overrides` (e.g. `num_labels`)."""
    from paca_hf import PaCaViTMaskRCNNConfig

    return PaCaViTMaskRCNNConfig(
        backbone_config=tiny_config(**(backbone_overrides or {})), **{**TINY_DETECTOR_CONFIG, **overrides}
    )
