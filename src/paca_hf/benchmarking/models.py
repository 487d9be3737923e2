"""The benchmarked models, built from configs with random weights (no Hub download), and the `Runner` that times one
step of one of them on one backend.

* task "classification": PaCa-ViT (with `name:field=value` config overrides), transformers' Swin-T and PVTv2-b1/b2,
  ImageNet heads (1000 labels);
* task "segmentation": the ADE20k segmentors (150 labels): PaCa-ViT with the PaCa head (the authors' ADE20k
  configs), transformers' Segformer-B1/B2 and UperNet on Swin-T (with its auxiliary FCN head, as trained);
* task "detection": the COCO Mask R-CNN detectors (80 labels): PaCa-ViT's (the authors' configs, on torchvision's
  parts) and torchvision's `maskrcnn_resnet50_fpn` (91 labels, its own), at `detection_shape(size)`.

A name may end in `@backend` (`eager`, `compile`, `onnxruntime`) to run that model on that backend.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import torch


MODEL_NAMES = ("pacavit-tiny", "pacavit-small", "pacavit-base", "swin-t", "pvtv2-b1", "pvtv2-b2")
SEGMENTATION_MODEL_NAMES = (
    "pacavit-tiny",
    "pacavit-small",
    "pacavit-base",
    "segformer-b1",
    "segformer-b2",
    "upernet-swin-t",
)
DETECTION_MODEL_NAMES = ("pacavit-tiny", "pacavit-small", "pacavit-base", "maskrcnn-r50")
TASK_MODEL_NAMES = {
    "classification": MODEL_NAMES,
    "segmentation": SEGMENTATION_MODEL_NAMES,
    "detection": DETECTION_MODEL_NAMES,
}
BACKENDS = ("eager", "compile", "onnxruntime")
NUM_LABELS = 1000
NUM_SEGMENTATION_LABELS = 150  # ADE20k
NUM_DETECTION_LABELS = 80  # COCO
DETECTION_ASPECT = 1.52  # width / height of the 800 x 1216 test size (a COCO photo at mmdet's 1333 x 800 scale)
NUM_DETECTION_BOXES = 8  # ground truth boxes per image in the detection train step


def detection_shape(size: int) -> tuple[int, int]:
    """(height, width) of a detection input of height `size`: width `DETECTION_ASPECT` x size rounded to a multiple
    of 32, as the image processor pads (800 -> 800 x 1216)."""
    return size, 32 * max(1, round(size * DETECTION_ASPECT / 32))


def input_pixels(size: int, task: str) -> int:
    height, width = detection_shape(size) if task == "detection" else (size, size)
    return height * width


def split_backend(name: str) -> tuple[str, str | None]:
    """`pacavit-tiny@onnxruntime` -> ("pacavit-tiny", "onnxruntime"); no `@` -> (name, None)."""
    model, separator, backend = name.partition("@")
    if not separator:
        return name, None
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} in {name!r}; choose from {', '.join(BACKENDS)}")
    return model, backend


def split_model_name(name: str, task: str = "classification") -> tuple[str, dict]:
    """`pacavit-tiny:chunk_size_feed_forward=0` -> ("pacavit-tiny", {"chunk_size_feed_forward": 0}); a trailing
    `@backend` is dropped (see `split_backend`)."""
    name, _ = split_backend(name)
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
    if base not in TASK_MODEL_NAMES[task]:
        raise ValueError(f"unknown model {base!r} for {task}; choose from {', '.join(TASK_MODEL_NAMES[task])}")
    if overrides:
        from paca_hf import PaCaViTConfig

        if not base.startswith("pacavit-"):
            raise ValueError(f"config overrides are for PaCa-ViT models only, got {name!r}")
        unknown = sorted(set(overrides) - set(PaCaViTConfig().to_dict()))
        if unknown:
            raise ValueError(f"{name!r}: PaCaViTConfig has no field {', '.join(unknown)}")
    return base, overrides


def build_config(name: str, task: str = "classification"):
    """Config of a benchmarked model, every hyper-parameter written out (no Hub download)."""
    if task == "segmentation":
        return build_segmentation_config(name)
    if task == "detection":
        return build_detection_config(name)
    name, overrides = split_model_name(name, task)
    if name.startswith("pacavit-"):
        from paca_hf import PaCaViTConfig

        variant = name.split("-", 1)[1]
        return PaCaViTConfig.from_official_name(f"pacavit_{variant}_p2cconv_100_0", **overrides)
    if name == "swin-t":
        return swin_t_config(num_labels=NUM_LABELS)
    if name in ("pvtv2-b1", "pvtv2-b2"):
        from transformers import PvtV2Config

        # OpenGVLab/pvt_v2_b1 and pvt_v2_b2
        return PvtV2Config(
            image_size=224,
            **mix_transformer_kwargs(name.endswith("b1")),
            mlp_ratios=[8, 8, 4, 4],
            qkv_bias=True,
            linear_attention=False,
            num_labels=NUM_LABELS,
        )
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def mix_transformer_kwargs(b1: bool) -> dict:
    """The B1 / B2 encoder shared by PVTv2 and Segformer's MiT (they differ in their MLP ratios): widths, depths,
    spatial-reduction ratios, overlapping patch embeddings."""
    return {
        "num_channels": 3,
        "num_encoder_blocks": 4,
        "hidden_sizes": [64, 128, 320, 512],
        "depths": [2, 2, 2, 2] if b1 else [3, 4, 6, 3],
        "sr_ratios": [8, 4, 2, 1],
        "patch_sizes": [7, 3, 3, 3],
        "strides": [4, 2, 2, 2],
        "num_attention_heads": [1, 2, 5, 8],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "drop_path_rate": 0.1,
    }


def swin_t_config(**kwargs):
    """microsoft/swin-tiny-patch4-window7-224's architecture; `kwargs` override (labels, out_features)."""
    from transformers import SwinConfig

    settings = {
        "image_size": 224,
        "patch_size": 4,
        "num_channels": 3,
        "embed_dim": 96,
        "depths": [2, 2, 6, 2],
        "num_heads": [3, 6, 12, 24],
        "window_size": 7,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "hidden_act": "gelu",
        "use_absolute_embeddings": False,
        "layer_norm_eps": 1e-5,
        "drop_path_rate": 0.1,
    }
    settings.update(kwargs)
    return SwinConfig(**settings)


def build_segmentation_config(name: str):
    """Config of a benchmarked ADE20k segmentor (150 labels), as its authors trained it."""
    base, overrides = split_model_name(name, "segmentation")
    if base.startswith("pacavit-"):
        from paca_hf import PaCaViTConfig

        variant = base.split("-", 1)[1]
        official = f"pacahead_pacavit_{variant}_p2cconv_100_0_512x512_160k_ade20k"
        return PaCaViTConfig.from_official_name(official, **overrides)
    if base in ("segformer-b1", "segformer-b2"):
        from transformers import SegformerConfig

        # nvidia/segformer-b1-finetuned-ade-512-512 and -b2-: MiT-B1/B2 encoders, all-MLP decoder of 256 / 768
        return SegformerConfig(
            **mix_transformer_kwargs(base.endswith("b1")),
            mlp_ratios=[4, 4, 4, 4],
            decoder_hidden_size=256 if base == "segformer-b1" else 768,
            num_labels=NUM_SEGMENTATION_LABELS,
            semantic_loss_ignore_index=255,
        )
    from transformers import UperNetConfig

    # openmmlab/upernet-swin-tiny: Swin-T backbone, UperNet head of 512 channels, auxiliary FCN head on stage 3
    backbone = swin_t_config(out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.3)
    return UperNetConfig(
        backbone_config=backbone,
        hidden_size=512,
        pool_scales=[1, 2, 3, 6],
        use_auxiliary_head=True,
        auxiliary_loss_weight=0.4,
        auxiliary_in_channels=384,
        auxiliary_channels=256,
        auxiliary_num_convs=1,
        auxiliary_concat_input=False,
        loss_ignore_index=255,
        num_labels=NUM_SEGMENTATION_LABELS,
    )


def build_detection_config(name: str):
    """Config of a benchmarked PaCa-ViT COCO detector: mmdet's Mask R-CNN 1x around the authors' backbone (None for
    torchvision's model, built by `TorchvisionMaskRCNN`)."""
    base, overrides = split_model_name(name, "detection")
    if not base.startswith("pacavit-"):
        return None
    from paca_hf import PaCaViTConfig, PaCaViTMaskRCNNConfig

    variant = base.split("-", 1)[1]
    backbone = PaCaViTConfig.from_official_name(
        f"mask_rcnn_pacavit_{variant}_p2cconv_100_0_mstrain_480_800_1x_coco", **overrides
    )
    return PaCaViTMaskRCNNConfig(backbone_config=backbone, num_labels=NUM_DETECTION_LABELS)


class TorchvisionMaskRCNN(torch.nn.Module):
    """torchvision's `maskrcnn_resnet50_fpn` (random weights, no download) called as our detector is: `pixel_values`
    and our `labels` in, an object with `loss` (training) or `pred_boxes` out. Its own transform still normalises
    the images, and resizes them by a factor of 1 (min / max size set to the input's, so that both models see the
    same pixels)."""

    def __init__(self):
        super().__init__()
        from torchvision.models.detection import maskrcnn_resnet50_fpn

        self.model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        self.config = SimpleNamespace(_attn_implementation="none")

    def forward(self, pixel_values: torch.Tensor, labels=None):
        height, width = pixel_values.shape[-2:]
        self.model.transform.min_size, self.model.transform.max_size = (min(height, width),), max(height, width)
        images = list(pixel_values)
        if labels is None:
            return SimpleNamespace(pred_boxes=[found["boxes"] for found in self.model(images)])
        targets = [
            {"boxes": label["boxes"], "labels": label["class_labels"] + 1, "masks": label["masks"]} for label in labels
        ]
        return SimpleNamespace(loss=sum(self.model(images, targets).values()))


def detection_labels(batch_size: int, size: int, generator: torch.Generator) -> list[dict]:
    """`NUM_DETECTION_BOXES` random boxes per image (sides 1/8 to 1/2 of the image's) with their rectangles as
    masks, in our detector's `labels` format."""
    height, width = detection_shape(size)
    labels = []
    for _ in range(batch_size):
        sides = torch.rand(NUM_DETECTION_BOXES, 2, generator=generator) * 3 / 8 + 1 / 8
        sizes = sides * torch.tensor([width, height])
        corners = torch.rand(NUM_DETECTION_BOXES, 2, generator=generator) * (torch.tensor([width, height]) - sizes)
        boxes = torch.cat([corners, corners + sizes], dim=1).floor()
        masks = torch.zeros(NUM_DETECTION_BOXES, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            mask[y1:y2, x1:x2] = 1
        classes = torch.randint(0, NUM_DETECTION_LABELS, (NUM_DETECTION_BOXES,), generator=generator)
        labels.append({"boxes": boxes, "class_labels": classes, "masks": masks})
    return labels


def model_class(name: str, task: str = "classification"):
    name, _ = split_model_name(name, task)
    if task == "detection":
        if name.startswith("pacavit-"):
            from paca_hf import PaCaViTMaskRCNNForInstanceSegmentation

            return PaCaViTMaskRCNNForInstanceSegmentation
        return TorchvisionMaskRCNN
    if task == "segmentation":
        if name.startswith("pacavit-"):
            from paca_hf import PaCaViTForSemanticSegmentation

            return PaCaViTForSemanticSegmentation
        if name.startswith("segformer-"):
            from transformers import SegformerForSemanticSegmentation

            return SegformerForSemanticSegmentation
        from transformers import UperNetForSemanticSegmentation

        return UperNetForSemanticSegmentation
    if name.startswith("pacavit-"):
        from paca_hf import PaCaViTForImageClassification

        return PaCaViTForImageClassification
    if name == "swin-t":
        from transformers import SwinForImageClassification

        return SwinForImageClassification
    from transformers import PvtV2ForImageClassification

    return PvtV2ForImageClassification


def build_model(name: str, attn_implementation: str, task: str = "classification") -> torch.nn.Module:
    """Random-weight model; models without SDPA support (PVTv2, Segformer) fall back to their eager attention."""
    cls, config = model_class(name, task), build_config(name, task)
    if config is None:
        return cls()
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


class LogitsOnly(torch.nn.Module):
    """`pixel_values -> logits` of a transformers model: the one output a deployed graph needs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class OnnxRuntimeModel:
    """A model exported to ONNX (`torch.onnx.export(dynamo=True)`, one graph per input shape, made on its first
    call) and run by an onnxruntime `InferenceSession` on the CPU with `threads` intra-op threads (all graph
    optimisations on, threads spinning within a run only). Called like the model, it returns an object whose
    `.logits` is a torch tensor."""

    def __init__(self, model: torch.nn.Module, threads: int | None, directory: str):
        self.module = LogitsOnly(model).eval()
        self.threads = threads or torch.get_num_threads()
        self.directory = directory
        self.sessions = {}

    def session(self, pixel_values: torch.Tensor):
        import onnxruntime

        shape = tuple(pixel_values.shape)
        if shape not in self.sessions:
            path = os.path.join(self.directory, "x".join(map(str, shape)) + ".onnx")
            with torch.no_grad():
                program = torch.onnx.export(self.module, (pixel_values,), dynamo=True, optimize=True, verbose=False)
            program.save(path)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Its threads spin between operators within a run (the default), but stop when the run returns: idle
            # spinning after it would take the cores from the model timed next.
            options.add_session_config_entry("session.force_spinning_stop", "1")
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self.sessions[shape] = (session, session.get_inputs()[0].name)
        return self.sessions[shape]

    def __call__(self, pixel_values: torch.Tensor):
        session, input_name = self.session(pixel_values)
        (logits,) = session.run(None, {input_name: pixel_values.detach().cpu().numpy()})
        return SimpleNamespace(logits=torch.from_numpy(logits))


class Runner:
    """One model prepared for one mode on one backend: `step()` runs one inference or one training step on the
    current inputs.

    Backends: "eager" (the model as is), "compile" (`torch.compile`, inductor, one graph per input shape), and for
    inference on the CPU "onnxruntime" (`OnnxRuntimeModel`). The backend is the name's `@backend` (eager without
    one)."""

    def __init__(self, name: str, mode: str, args, input_cache: dict | None = None):
        self.name, self.mode, self.args = name, mode, args
        self.task = getattr(args, "task", "classification")
        self.device = torch.device(args.device)
        self.dtype = args.torch_dtype
        self.backend = split_backend(name)[1] or "eager"
        if self.backend == "onnxruntime" and (mode != "inference" or self.device.type != "cpu"):
            raise ValueError(f"{name}: the onnxruntime backend runs inference on the CPU only")
        torch.manual_seed(args.seed)
        model = build_model(name, args.attn_implementation, self.task).to(self.device)
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
        self.forward_model = model
        if self.backend == "compile":
            if mode == "inference":
                # Weights as constants: inductor folds them and pre-packs them for oneDNN on the CPU (its recommended
                # setting for inference; training graphs are not frozen).
                from torch._inductor import config as inductor_config

                inductor_config.freezing = True
            # dynamic=False: one specialised graph per input shape (a handful here), as a deployment at one size gets.
            self.forward_model = torch.compile(model, dynamic=False)
        elif self.backend == "onnxruntime":
            self._onnx_directory = tempfile.TemporaryDirectory(prefix="paca_benchmark_onnx_")
            self.forward_model = OnnxRuntimeModel(model, args.threads, self._onnx_directory.name)
        self.optimizer = None
        if mode == "train":
            if args.optimizer == "adamw":
                self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
            else:
                self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.pixel_values = self.labels = None
        self.input_cache = {} if input_cache is None else input_cache

    def set_inputs(self, size: int, batch_size: int):
        """Random images and labels (class ids; per pixel for segmentation), the same for every model (fixed seed);
        cached per (size, batch)."""
        if (size, batch_size) not in self.input_cache:
            generator = torch.Generator().manual_seed(self.args.seed)
            height, width = detection_shape(size) if self.task == "detection" else (size, size)
            pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
            input_dtype = self.dtype if self.mode == "inference" else torch.float32
            if self.task == "detection":
                labels = detection_labels(batch_size, size, generator)
            elif self.task == "segmentation":
                labels = torch.randint(0, NUM_SEGMENTATION_LABELS, (batch_size, size, size), generator=generator)
            else:
                labels = torch.randint(0, NUM_LABELS, (batch_size,), generator=generator)
            if self.task == "detection":
                labels = [{key: value.to(self.device) for key, value in label.items()} for label in labels]
            else:
                labels = labels.to(self.device)
            self.input_cache[(size, batch_size)] = (pixel_values.to(device=self.device, dtype=input_dtype), labels)
        self.pixel_values, self.labels = self.input_cache[(size, batch_size)]

    def clear_inputs(self):
        self.pixel_values = self.labels = None

    def step(self, model=None):
        model = model if model is not None else self.forward_model
        if self.mode == "inference":
            with torch.inference_mode():
                return main_output(model(pixel_values=self.pixel_values))
        with autocast_context(self.device.type, self.dtype, self.mode):
            loss = model(pixel_values=self.pixel_values, labels=self.labels).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def output_difference(self) -> float:
        """Largest absolute difference between this backend's inference logits and the eager model's on the
        current inputs (0 for the eager backend itself); NaN in train mode."""
        if self.mode != "inference":
            return float("nan")
        if self.backend == "eager":
            return 0.0
        with torch.inference_mode():
            reference = main_output(self.model(pixel_values=self.pixel_values))
        outputs = self.step()
        return (outputs.to(reference.device, torch.float32) - reference.float()).abs().max().item()

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


def main_output(outputs):
    """What an inference step returns: the logits, or a detector's boxes."""
    return outputs.pred_boxes if hasattr(outputs, "pred_boxes") else outputs.logits


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, (RuntimeError, MemoryError)) and (
        isinstance(error, MemoryError) or "out of memory" in text or "can't allocate" in text
    )
