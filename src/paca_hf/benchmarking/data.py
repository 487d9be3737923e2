"""`--task data`: the data path, timed like the models (same interleaved loop, same report).

* `processor-torchvision` / `processor-pil`: `PaCaViTImageProcessor` (torchvision backend) and
  `PaCaViTImageProcessorPil` on a batch of photo-sized PIL images (`PHOTO_SIZE`, RGB) to `size` x `size`
  (`{"height": size, "width": size}`, no center crop), returning `pixel_values` as torch tensors;
* `augment-ade20k`: the fine-tune's training augmentation (`SegmentationTrainAugment`, mmseg's ADE20k pipeline: random
  resize of the (2048, 512) scale by 0.5-2.0, `size` x `size` crop with `cat_max_ratio` 0.75, flip, photometric
  distortion, normalisation) on a batch of uint8 (3, H, W) tensors and label maps of `PHOTO_SIZE`, as the fine-tune's
  collate function hands them over.

A "step" is one batch; images/s = batch / median time, and per thread = that / `torch.get_num_threads()`.
"""

from __future__ import annotations

import time

import numpy as np
import torch


DATA_PIPELINES = ("processor-torchvision", "processor-pil", "augment-ade20k")
PHOTO_SIZE = (480, 640)  # (height, width) of the input photos
NUM_SEGMENTATION_LABELS = 150

DATA_QUICK = {
    "models": list(DATA_PIPELINES),
    "baseline": "processor-pil",
    "sizes": [64],
    "batch_sizes": [2],
    "train_sizes": None,
    "train_batch_sizes": None,
    "mode": "inference",
    "repeats": 2,
    "warmup": 0,
    "memory": "off",
    "threads": 1,
}
DATA_DEFAULTS = {
    "models": list(DATA_PIPELINES),
    "baseline": "processor-pil",
    "sizes": [512],
    "batch_sizes": [32],
    "train_sizes": None,
    "train_batch_sizes": None,
    "mode": "inference",
    "repeats": 7,
    "warmup": 1,
    "memory": "off",
    "threads": 1,
}


def make_runner(name: str, mode: str, args, input_cache: dict | None = None):
    """The runner of one benchmarked item: a `DataRunner` for `--task data`, else a model `Runner`."""
    if getattr(args, "task", "classification") == "data":
        return DataRunner(name, args, input_cache)
    from .models import Runner

    return Runner(name, mode, args, input_cache)


def photo_batch(batch_size: int, seed: int) -> tuple[list, list[torch.Tensor], list[torch.Tensor]]:
    """`batch_size` random photos of `PHOTO_SIZE`: as PIL images, as uint8 (3, H, W) tensors, and ADE20k-like label
    maps (int64 (H, W), blocks of 80 x 80 pixels of classes 0..150, as the collate function returns raw labels)."""
    import PIL.Image

    generator = torch.Generator().manual_seed(seed)
    height, width = PHOTO_SIZE
    tensors = [
        torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8) for _ in range(batch_size)
    ]
    images = [PIL.Image.fromarray(np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())) for tensor in tensors]
    blocks = torch.randint(
        0, NUM_SEGMENTATION_LABELS + 1, (batch_size, height // 80, width // 80), generator=generator
    )
    labels = list(blocks.repeat_interleave(80, dim=1).repeat_interleave(80, dim=2))
    return images, tensors, labels


class DataRunner:
    """One data pipeline with the `Runner` interface (`set_inputs`, `step`, `timed_step`, ...) of the timing loop."""

    def __init__(self, name: str, args, input_cache: dict | None = None):
        if name not in DATA_PIPELINES:
            raise ValueError(f"unknown data pipeline {name!r}; choose from {', '.join(DATA_PIPELINES)}")
        self.name, self.args = name, args
        self.device = torch.device("cpu")
        self.backend = "eager"
        self.attn_implementation = ""
        self.params_m = self.weights_mib = 0.0
        self.input_cache = {} if input_cache is None else input_cache
        self.size = self.batch = None
        self.generator = torch.Generator().manual_seed(args.seed)
        if name == "processor-torchvision":
            from paca_hf import PaCaViTImageProcessor

            self.processor = PaCaViTImageProcessor()
        elif name == "processor-pil":
            from paca_hf import PaCaViTImageProcessorPil

            self.processor = PaCaViTImageProcessorPil()
        else:
            from paca_hf.training.segmentation.augmentation import SegmentationTrainAugment

            self.processor = None
            self.augment_class = SegmentationTrainAugment

    def set_inputs(self, size: int, batch_size: int):
        if batch_size not in self.input_cache:
            self.input_cache[batch_size] = photo_batch(batch_size, self.args.seed)
        self.batch, self.size = self.input_cache[batch_size], size
        if self.processor is None:
            self.augment = self.augment_class(crop_size=(size, size), reduce_zero_label=True)

    def clear_inputs(self):
        self.batch = None

    def step(self):
        images, tensors, labels = self.batch
        if self.processor is not None:
            size = {"height": self.size, "width": self.size}
            return self.processor(images, size=size, do_center_crop=False, return_tensors="pt")["pixel_values"]
        return self.augment(tensors, labels, generator=self.generator)[0]

    def output_difference(self) -> float:
        return float("nan")

    def count_flops(self) -> float:
        return float("nan")

    def timed_step(self) -> float:
        start = time.perf_counter()
        self.step()
        return time.perf_counter() - start
