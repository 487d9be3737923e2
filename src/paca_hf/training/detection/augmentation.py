"""The training augmentation of the authors' Mask R-CNN configs on tensors: random horizontal flip, multi-scale
keep-ratio resize, normalisation on the 0-255 scale, zero padding to a multiple of 32 (mmdetection's data
preprocessor), with boxes and masks transformed as their image.

The authors' `mask_rcnn_pacavit_*_mstrain_480_800_1x_coco.py` (PaCaViT `detection/configs/paca_vit/mask_rcnn_1x/`):
`RandomFlip(prob=0.5)`, then `RandomChoice` between `RandomChoiceResize(scales=[(480, 1333), (512, 1333), ...,
(800, 1333)], keep_ratio=True)` and, with equal chance, DETR's branch: `RandomChoiceResize` to a short edge of 400,
500 or 600, `RandomCrop(crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True)`, then the
first branch's resize. Both are implemented here (`crop_prob` picks the second).
"""

import torch
import torch.nn.functional as F

from ...image_processing_pacavit_mask_rcnn import PaCaViTMaskRCNNImageProcessor
from ..transforms import _randint, _uniform, rescale_size, resize_image, resize_label


def flip_instances(image: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor):
    """Horizontal flip of a `(C, H, W)` image, its `(n, 4)` x1, y1, x2, y2 boxes (in pixel edges: x -> W - x) and
    `(n, H, W)` masks."""
    width = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return image.flip(-1), flipped, masks.flip(-1)


def resize_instances(image: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]):
    """mmdetection's `Resize` of an image with its instances to `size` (height, width): the image bilinear
    (half-pixel centres, no antialias, as OpenCV), the masks nearest (OpenCV's INTER_NEAREST), the boxes scaled by
    the two sides' factors and clipped to the new size."""
    height, width = image.shape[-2:]
    scale = boxes.new_tensor([size[1] / width, size[0] / height] * 2)
    scaled = boxes * scale
    scaled[:, 0::2] = scaled[:, 0::2].clamp(0, size[1])
    scaled[:, 1::2] = scaled[:, 1::2].clamp(0, size[0])
    return resize_image(image.float(), size), scaled, resize_label(masks, size)


def crop_instances(
    image: torch.Tensor,
    boxes: torch.Tensor,
    masks: torch.Tensor,
    classes: torch.Tensor,
    top: int,
    left: int,
    height: int,
    width: int,
):
    """mmdetection's `RandomCrop` of an image with its instances to rows `top`.. `top + height`, columns `left`..
    `left + width`: the boxes shifted and clipped to the crop, the instances whose box has no area left dropped
    (boxes, masks and classes alike; a crop may keep none, `allow_negative_crop=True`)."""
    image = image[..., top : top + height, left : left + width]
    shifted = boxes - boxes.new_tensor([left, top, left, top])
    shifted[:, 0::2] = shifted[:, 0::2].clamp(0, image.shape[-1])
    shifted[:, 1::2] = shifted[:, 1::2].clamp(0, image.shape[-2])
    kept = (shifted[:, 2] > shifted[:, 0]) & (shifted[:, 3] > shifted[:, 1])
    return image, shifted[kept], masks[kept][..., top : top + height, left : left + width], classes[kept]


class DetectionTrainAugment:
    """A training batch for `PaCaViTMaskRCNNForInstanceSegmentation` from `collate_instances`' lists.

    Per image: flip with probability `flip_prob`; with probability `crop_prob` DETR's branch first (a keep-ratio
    resize to a short edge drawn from `crop_short_edges`, then a crop of height and width each drawn in
    `crop_size_range`, as far as the image allows, at a random place); a short edge drawn from `short_edges` and the
    keep-ratio size that fits it and `long_edge` (`mmcv.imrescale`'s rounding); the resize; mean / std on the 0-255
    scale (the image processor's). The batch is zero-padded bottom / right to a multiple of `size_divisor`.

    Returns `(pixel_values, image_sizes, labels)`: `(B, 3, H, W)` float32, `(B, 2)` int64 (height, width before
    padding), one dict per image (`boxes`, `class_labels`, `masks` at the image's size before padding), on `device`.
    Random draws come from `generator` (a CPU `torch.Generator`; None: torch's global one).
    """

    def __init__(
        self,
        short_edges=tuple(range(480, 801, 32)),
        long_edge: int = 1333,
        flip_prob: float = 0.5,
        image_mean=None,
        image_std=None,
        size_divisor: int = 32,
        crop_prob: float = 0.0,
        crop_short_edges=(400, 500, 600),
        crop_size_range=(384, 600),
    ):
        self.short_edges = [int(edge) for edge in short_edges]
        self.crop_prob = float(crop_prob)
        self.crop_short_edges = [int(edge) for edge in crop_short_edges]
        self.crop_size_range = (int(crop_size_range[0]), int(crop_size_range[1]))
        self.long_edge = int(long_edge)
        self.flip_prob = float(flip_prob)
        self.image_mean = tuple(PaCaViTMaskRCNNImageProcessor.image_mean if image_mean is None else image_mean)
        self.image_std = tuple(PaCaViTMaskRCNNImageProcessor.image_std if image_std is None else image_std)
        self.size_divisor = int(size_divisor)

    def __call__(self, batch: dict, generator: torch.Generator | None = None, device=None):
        images, sizes, labels = [], [], []
        for image, boxes, classes, masks in zip(
            batch["images"], batch["boxes"], batch["class_labels"], batch["masks"]
        ):
            if self.flip_prob > 0 and _uniform(generator, 0.0, 1.0) < self.flip_prob:
                image, boxes, masks = flip_instances(image, boxes, masks)
            if self.crop_prob > 0 and _uniform(generator, 0.0, 1.0) < self.crop_prob:
                image, boxes, masks, classes = self._detr_crop(image, boxes, masks, classes, generator)
            short = self.short_edges[_randint(generator, 0, len(self.short_edges))]
            size = rescale_size(*image.shape[-2:], (self.long_edge, short))
            image, boxes, masks = resize_instances(image.to(device), boxes.to(device), masks.to(device), size)
            mean = torch.tensor(self.image_mean, device=image.device).view(-1, 1, 1)
            std = torch.tensor(self.image_std, device=image.device).view(-1, 1, 1)
            images.append((image - mean) / std)
            sizes.append(size)
            labels.append({"boxes": boxes, "class_labels": classes.to(device), "masks": masks})
        divisor = self.size_divisor
        height = -(-max(h for h, _ in sizes) // divisor) * divisor
        width = -(-max(w for _, w in sizes) // divisor) * divisor
        pixel_values = torch.stack(
            [F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1])) for image in images]
        )
        return pixel_values, torch.tensor(sizes, dtype=torch.long, device=pixel_values.device), labels

    def _detr_crop(self, image, boxes, masks, classes, generator):
        short = self.crop_short_edges[_randint(generator, 0, len(self.crop_short_edges))]
        image, boxes, masks = resize_instances(
            image, boxes, masks, rescale_size(*image.shape[-2:], (self.long_edge, short))
        )
        height, width = image.shape[-2:]
        low, high = self.crop_size_range
        crop_height = _randint(generator, min(height, low), min(height, high) + 1)
        crop_width = _randint(generator, min(width, low), min(width, high) + 1)
        top = _randint(generator, 0, height - crop_height + 1)
        left = _randint(generator, 0, width - crop_width + 1)
        return crop_instances(image, boxes, masks, classes, top, left, crop_height, crop_width)
