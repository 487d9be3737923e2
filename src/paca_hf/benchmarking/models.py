"""The benchmarked models: PaCa-ViT (with `name:field=value` config overrides), transformers' Swin-T and
PVTv2-b1/b2, built from configs with random weights and ImageNet heads, and the `Runner` that times one step."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager, nullcontext

import torch


MODEL_NAMES = ("pacavit-tiny", "pacavit-small", "pacavit-base", "swin-t", "pvtv2-b1", "pvtv2-b2")
NUM_LABELS = 1000


def split_model_name(name: str) -> tuple[str, dict]:
    """`pacavit-tiny:chunk_size_feed_forward=0` -> ("pacavit-tiny", {"chunk_size_feed_forward": 0})."""
    base, *assignments = name.split(":")
    overrides = {}
    for assignment in assignments:
        field, separator, value = assignment.partition("=")
        if not separator or not field:
            raise ValueError(f"config override {assignment!r} of {name!r} is not `field=value`")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"value of {field!r} in {name!r} is not JSON: {value!r}") from None
    if base not in MODEL_NAMES:
        raise ValueError(f"unknown model {base!r}; choose from {', '.join(MODEL_NAMES)}")
    if overrides:
        from paca_hf import PaCaViTConfig

        if not base.startswith("pacavit-"):
            raise ValueError(f"config overrides are for PaCa-ViT models only, got {name!r}")
        unknown = sorted(set(overrides) - set(PaCaViTConfig().to_dict()))
        if unknown:
            raise ValueError(f"{name!r}: PaCaViTConfig has no field {', '.join(unknown)}")
    return base, overrides


def build_config(name: str):
    """Config of a benchmarked model, every hyper-parameter written out (no Hub download)."""
    name, overrides = split_model_name(name)
    if name.startswith("pacavit-"):
        from paca_hf import PaCaViTConfig

        variant = name.split("-", 1)[1]
        return PaCaViTConfig.from_official_name(f"pacavit_{variant}_p2cconv_100_0", **overrides)
    if name == "swin-t":
        from transformers import SwinConfig

        # microsoft/swin-tiny-patch4-window7-224
        return SwinConfig(
            image_size=224,
            patch_size=4,
            num_channels=3,
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            mlp_ratio=4.0,
            qkv_bias=True,
            hidden_act="gelu",
            use_absolute_embeddings=False,
            layer_norm_eps=1e-5,
            drop_path_rate=0.1,
            num_labels=NUM_LABELS,
        )
    if name in ("pvtv2-b1", "pvtv2-b2"):
        from transformers import PvtV2Config

        # OpenGVLab/pvt_v2_b1 and pvt_v2_b2
        return PvtV2Config(
            image_size=224,
            num_channels=3,
            num_encoder_blocks=4,
            hidden_sizes=[64, 128, 320, 512],
            depths=[2, 2, 2, 2] if name == "pvtv2-b1" else [3, 4, 6, 3],
            sr_ratios=[8, 4, 2, 1],
            patch_sizes=[7, 3, 3, 3],
            strides=[4, 2, 2, 2],
            num_attention_heads=[1, 2, 5, 8],
            mlp_ratios=[8, 8, 4, 4],
            hidden_act="gelu",
            qkv_bias=True,
            linear_attention=False,
            layer_norm_eps=1e-6,
            drop_path_rate=0.1,
            num_labels=NUM_LABELS,
        )
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def model_class(name: str):
    if name.startswith("pacavit-"):
        from paca_hf import PaCaViTForImageClassification

        return PaCaViTForImageClassification
    if name == "swin-t":
        from transformers import SwinForImageClassification

        return SwinForImageClassification
    from transformers import PvtV2ForImageClassification

    return PvtV2ForImageClassification


def build_model(name: str, attn_implementation: str) -> torch.nn.Module:
    """Random-weight classifier; models without SDPA support (PVTv2) fall back to their eager attention."""
    cls, config = model_class(name), build_config(name)
    try:
        return cls._from_config(config, attn_implementation=attn_implementation)
    except ValueError:
        if attn_implementation == "eager":
            raise
        return cls._from_config(config, attn_implementation="eager")


@contextmanager
def eager_attention(model: torch.nn.Module):
    """Temporarily route every attention of `model` through its eager (matmul) path."""
    configs = {id(module.config): module.config for module in model.modules() if hasattr(module, "config")}
    configs[id(model.config)] = model.config
    saved = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]


def conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """FLOPs of `aten.convolution_backward`: the forward's count for each of grad_input and grad_weight.

    torch's own formula (2.13) ignores `groups` in the backward and counts a depthwise conv's backward `groups`
    times too high (384x for a 384-channel depthwise conv)."""
    weight_fan_in = math.prod(w_shape[1:])  # (in or out channels / groups) * kernel area
    macs = math.prod(x_shape if transposed else grad_out_shape) * weight_fan_in
    return 2 * macs * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def autocast_context(device: str, dtype: torch.dtype, mode: str):
    if mode == "train" and dtype != torch.float32:
        return torch.autocast(device_type=device, dtype=dtype)
    return nullcontext()


class Runner:
    """One model prepared for one mode: `step()` runs one inference or one training step on the current inputs."""

    def __init__(self, name: str, mode: str, args, input_cache: dict | None = None):
        self.name, self.mode, self.args = name, mode, args
        self.device = torch.device(args.device)
        self.dtype = args.torch_dtype
        torch.manual_seed(args.seed)
        model = build_model(name, args.attn_implementation).to(self.device)
        self.attn_implementation = model.config._attn_implementation
        self.params_m = sum(p.numel() for p in model.parameters()) / 1e6
        if mode == "inference":
            model.eval()
            if self.dtype != torch.float32:
                model.to(self.dtype)
        else:
            model.train()
        self.weights_mib = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20
        self.model = model
        # dynamic=False: one specialised graph per input shape (a handful here), as a deployment at one size gets.
        self.forward_model = torch.compile(model, dynamic=False) if args.compile else model
        self.optimizer = None
        if mode == "train":
            if args.optimizer == "adamw":
                self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
            else:
                self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.pixel_values = self.labels = None
        self.input_cache = {} if input_cache is None else input_cache

    def set_inputs(self, size: int, batch_size: int):
        """Random images and labels, the same for every model (fixed seed); cached per (size, batch)."""
        if (size, batch_size) not in self.input_cache:
            generator = torch.Generator().manual_seed(self.args.seed)
            pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
            input_dtype = self.dtype if self.mode == "inference" else torch.float32
            labels = torch.randint(0, NUM_LABELS, (batch_size,), generator=generator)
            self.input_cache[(size, batch_size)] = (
                pixel_values.to(device=self.device, dtype=input_dtype),
                labels.to(self.device),
            )
        self.pixel_values, self.labels = self.input_cache[(size, batch_size)]

    def clear_inputs(self):
        self.pixel_values = self.labels = None

    def step(self, model=None):
        model = model if model is not None else self.forward_model
        if self.mode == "inference":
            with torch.inference_mode():
                return model(pixel_values=self.pixel_values).logits
        with autocast_context(self.device.type, self.dtype, self.mode):
            loss = model(pixel_values=self.pixel_values, labels=self.labels).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def count_flops(self) -> float:
        """FLOPs of one step (forward; plus backward in train) on the eager, uncompiled model."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(
            display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}
        )
        with eager_attention(self.model), counter:
            if self.mode == "inference":
                with torch.inference_mode():
                    self.model(pixel_values=self.pixel_values)
            else:
                with autocast_context(self.device.type, self.dtype, self.mode):
                    loss = self.model(pixel_values=self.pixel_values, labels=self.labels).loss
                loss.backward()
        if self.mode == "train":
            self.model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed_step(self) -> float:
        self.sync()
        start = time.perf_counter()
        self.step()
        self.sync()
        return time.perf_counter() - start


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, (RuntimeError, MemoryError)) and (
        isinstance(error, MemoryError) or "out of memory" in text or "can't allocate" in text
    )
