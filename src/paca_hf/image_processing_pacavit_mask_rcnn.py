# Copyright 2026 The paca-hf authors. Licensed under the MIT License (see setup.cfg).
"""Image processor of the PaCa-ViT Mask R-CNN detector (torchvision backend): mmdetection's test transform in, and
transformers' detection / instance-segmentation formats out.

The detector is built from `torchvision.models.detection`, so this processor has only the torchvision backend. It
imports without torchvision (the class then refuses to instantiate, as transformers' own torchvision processors do).
"""

import math
from collections.abc import Sequence

import numpy as np
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ImageInput, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import auto_docstring, is_torch_available, requires_backends

from .images import image_to_array


if is_torch_available():
    import torch
    import torch.nn.functional as F

try:  # see image_processing_pacavit.py: optional, and not listed as a requirement of remote code
    from torchvision.transforms.v2 import functional as tvF
except ImportError:
    tvF = None


# mmdetection's data preprocessor for the authors' COCO configs: RGB mean / std on 0-255 pixels.
MMDET_IMAGE_MEAN = (123.675, 116.28, 103.53)
MMDET_IMAGE_STD = (58.395, 57.12, 57.375)
# Label the model gives the padding rows of its detections.
PADDING_LABEL = -1


class PaCaViTMaskRCNNImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisor (`int`, *optional*, defaults to `self.size_divisor`):
        With `do_pad`, the batch is padded (zeros, bottom and right) to its largest height and width, each rounded
        up to a multiple of this number (32: the stride of the FPN's coarsest level used by the backbone, as
        mmdetection's `pad_size_divisor`). Ignored when `pad_size` is given.
    """

    size_divisor: int | None


@auto_docstring(
    custom_intro="""
    Image processor of [`PaCaViTMaskRCNNForInstanceSegmentation`]: mmdetection's test transform for the authors' COCO
    detectors. Each image is resized keeping its aspect ratio so that it fits `size` (`{"shortest_edge": 800,
    "longest_edge": 1333}`: scale `f = min(longest_edge / long side, shortest_edge / short side)`, new side
    `int(side * f + 0.5)`), bilinearly; normalized with mmdetection's mean / std on 0-255 pixels; and the batch is
    zero-padded bottom / right to a multiple of `size_divisor` (32). Returns `pixel_values` `(batch, 3, height,
    width)` float32 and `image_sizes` `(batch, 2)` int64, each image's `(height, width)` before padding.

    mmdetection resizes the 8-bit image with OpenCV (`cv2.resize`, `INTER_LINEAR`), which computes in 11-bit fixed
    point and rounds the result to 8 bits. This processor resizes in float32 with torchvision (bilinear, half-pixel
    centres, no antialiasing: the same sampling points and weights) and does not round, so its pixels differ from
    mmdetection's by less than one 8-bit level (0.75 on the authors' reference images): the rounding, and the
    fixed-point weights.

    Inputs are decoded by [`paca_hf.images.image_to_array`], as everywhere in the package (PIL images of any mode
    with the EXIF orientation applied, 16-bit data, numpy arrays, torch tensors, paths and URLs); 16-bit and float
    data (in `[0, 1]`) are brought to the 0-255 scale of `image_mean` / `image_std` (times 255), unrounded.
    """
)
class PaCaViTMaskRCNNImageProcessor(TorchvisionBackend):
    valid_kwargs = PaCaViTMaskRCNNImageProcessorKwargs
    model_input_names = ["pixel_values", "image_sizes"]

    resample = PILImageResampling.BILINEAR
    image_mean = MMDET_IMAGE_MEAN
    image_std = MMDET_IMAGE_STD
    size = {"shortest_edge": 800, "longest_edge": 1333}
    default_to_square = False
    do_resize = True
    # The mean / std are on the 0-255 scale every input is brought to (see the class docstring): no rescale.
    do_rescale = False
    do_normalize = True
    do_pad = True
    size_divisor = 32
    do_convert_rgb = True

    def __init__(self, **kwargs: Unpack[PaCaViTMaskRCNNImageProcessorKwargs]):
        requires_backends(self, ["torch", "torchvision"])
        super().__init__(**kwargs)

    @auto_docstring
    def preprocess(self, images: ImageInput, **kwargs: Unpack[PaCaViTMaskRCNNImageProcessorKwargs]) -> BatchFeature:
        return super().preprocess(images, **kwargs)

    def process_image(self, image, do_convert_rgb: bool | None = None, input_data_format=None, device=None, **kwargs):
        """One input decoded by [`paca_hf.images.image_to_array`], as a channels-first float32 tensor on the 0-255
        scale (8-bit values as they are, 16-bit and float data times 255)."""
        array = image_to_array(
            image, num_channels=None if do_convert_rgb is False else 3, input_data_format=input_data_format
        )
        tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0))).to(torch.float32)
        if array.dtype != np.uint8:
            tensor = tensor.mul_(255.0)
        return tensor if device is None else tensor.to(device)

    def _prepare_image_like_inputs(self, images: ImageInput, *args, expected_ndims: int = 3, **kwargs) -> list:
        """The backends' loop over `process_image`, naming the image an error comes from."""
        prepared = []
        for index, image in enumerate(self._prepare_images_structure(images, expected_ndims=expected_ndims)):
            try:
                prepared.append(self.process_image(image, *args, **kwargs))
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from error
        return prepared

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        """A flat list of images. Files (paths, URLs, base64) are left to `process_image`'s decoder, not to
        transformers' `fetch_images`, so that they get the same decoding as images given in memory."""
        if isinstance(images, (list, tuple)):
            flat = []
            for item in images:
                flat.extend(item if isinstance(item, (list, tuple)) else [item])
            return flat
        return [images]

    @staticmethod
    def resized_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
        """
        mmdetection's keep-ratio test size (`mmcv.imrescale`) of a `height` x `width` image for `size`.

        Returns:
            `(new_height, new_width)`: each side times `f = min(longest_edge / long side, shortest_edge / short
            side)`, rounded as `int(side * f + 0.5)`.

        Raises:
            `ValueError`: `size` without a positive `shortest_edge` and `longest_edge`.
        """
        short_edge, long_edge = size.shortest_edge, size.longest_edge
        if not (short_edge and long_edge and short_edge > 0 and long_edge > 0):
            raise ValueError(
                "`size` must be {'shortest_edge': int, 'longest_edge': int} (the image is scaled to fit both, as "
                f"mmdetection's keep-ratio resize), got {dict(size)}"
            )
        factor = min(long_edge / max(height, width), short_edge / min(height, width))
        return int(height * factor + 0.5), int(width * factor + 0.5)

    def resize(self, image: "torch.Tensor", size: SizeDict, resample=None, **kwargs) -> "torch.Tensor":
        """Keep-ratio resize of a channels-first float image to [`resized_size`], without antialiasing (OpenCV's
        `INTER_LINEAR` samples the same points with the same weights, also when shrinking)."""
        new_size = self.resized_size(*image.shape[-2:], size)
        resample = PILImageResampling.BILINEAR if resample is None else resample
        return super().resize(
            image, SizeDict(height=new_size[0], width=new_size[1]), resample=resample, antialias=False
        )

    def _preprocess(
        self,
        images: list["torch.Tensor"],
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool,
        pad_size: SizeDict | None,
        size_divisor: int | None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        """Resize, normalize and pad channels-first float images (0-255 scale); see the class docstring.

        Raises:
            `ValueError`: a `pad_size` smaller than an image, a `size_divisor` that is not a positive integer, or
                images of different sizes with `do_pad=False`.
        """
        processed, sizes = [], []
        for image in images:
            if do_resize:
                image = self.resize(image, size, resample)
            if do_rescale:
                image = image * rescale_factor
            if do_normalize:
                mean, std = self._mean_std(image_mean, image_std, image.shape[0])
                image = self.normalize(image, mean, std)
            processed.append(image)
            sizes.append(tuple(image.shape[-2:]))
        if do_pad:
            padded_size = self._padded_size(sizes, pad_size, size_divisor)
            processed = [
                F.pad(image, (0, padded_size[1] - image.shape[-1], 0, padded_size[0] - image.shape[-2]))
                for image in processed
            ]
        elif len({image.shape for image in processed}) > 1:
            raise ValueError(
                f"images of different sizes {sorted(set(sizes))} cannot form one batch without padding; keep "
                "`do_pad=True`"
            )
        data = {
            "pixel_values": torch.stack(processed),
            "image_sizes": torch.tensor(sizes, dtype=torch.int64, device=processed[0].device),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _padded_size(sizes: list[tuple[int, int]], pad_size: SizeDict | None, size_divisor: int | None):
        height, width = max(size[0] for size in sizes), max(size[1] for size in sizes)
        if pad_size is not None:
            if not (pad_size.height and pad_size.width) or pad_size.height < height or pad_size.width < width:
                raise ValueError(
                    f"`pad_size` {dict(pad_size)} must be {{'height': int, 'width': int}} at least as large as every "
                    f"resized image (largest: height {height}, width {width})"
                )
            return pad_size.height, pad_size.width
        if size_divisor is None:
            return height, width
        if isinstance(size_divisor, bool) or not isinstance(size_divisor, int) or size_divisor < 1:
            raise ValueError(f"`size_divisor` must be a positive integer, got {size_divisor!r}")
        return -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor

    @staticmethod
    def _mean_std(image_mean, image_std, channels: int) -> tuple[list[float], list[float]]:
        """`image_mean` and `image_std` with one value per channel; `ValueError` for a wrong count or a zero std."""
        values = []
        for value, name in ((image_mean, "image_mean"), (image_std, "image_std")):
            array = np.asarray(value, dtype=np.float64).reshape(-1)
            array = np.repeat(array, channels) if array.size == 1 else array
            if array.size != channels:
                raise ValueError(
                    f"`{name}` must be a number or have {channels} values (one per channel of the images), got {value}"
                )
            values.append(array.tolist())
        if 0 in values[1]:
            raise ValueError(f"`image_std` must not contain zeros, got {image_std}")
        return values[0], values[1]

    # ----------------------------------------------------------------------------------------------- post-processing

    @staticmethod
    def _detections(outputs, target_sizes) -> tuple:
        """The detector's eval outputs as tensors, and per image the per-axis scale `(sy, sx)` from `pixel_values`
        pixels to the target size's, and the size `(height, width)` results are given at."""
        try:
            boxes, scores, labels = outputs["pred_boxes"], outputs["scores"], outputs["labels"]
            image_sizes = outputs["image_sizes"]
        except (KeyError, TypeError) as error:
            raise ValueError(
                "`outputs` must be the eval output of PaCaViTMaskRCNNForInstanceSegmentation (with `pred_boxes`, "
                f"`scores`, `labels` and `image_sizes`); missing {error}"
            ) from None
        batch = boxes.shape[0]
        image_sizes = torch.as_tensor(image_sizes).reshape(batch, 2).tolist()
        if target_sizes is None:
            targets = [tuple(int(side) for side in size) for size in image_sizes]
        else:
            targets = [tuple(int(side) for side in size) for size in torch.as_tensor(target_sizes).reshape(-1, 2)]
            if len(targets) != batch:
                raise ValueError(
                    f"got {len(targets)} target sizes for a batch of {batch} images; pass one (height, width) each"
                )
        scales = [(target[0] / size[0], target[1] / size[1]) for target, size in zip(targets, image_sizes)]
        return boxes, scores, labels, scales, targets

    def post_process_object_detection(
        self, outputs, threshold: float = 0.5, target_sizes: "torch.Tensor | Sequence | None" = None
    ) -> list[dict]:
        """
        Turn the detector's output into transformers' object-detection format.

        Args:
            outputs ([`PaCaViTMaskRCNNOutput`] or a mapping with its fields): eval output of the model, with
                `pred_boxes` `(batch, num_detections, 4)` xyxy in `pixel_values` pixels, `scores`, `labels` (-1 on
                padding rows, which are always dropped) and `image_sizes` `(batch, 2)`.
            threshold (`float`, defaults to 0.5): keep the detections whose score is above it (strictly).
            target_sizes (`torch.Tensor` of shape `(batch, 2)` or `list[tuple[int, int]]`, *optional*): `(height,
                width)` of each image the boxes are wanted in, typically the original image's. Boxes are scaled per
                axis by `target / image_sizes` (mmdetection's division by its scale factor). If unset, boxes stay in
                `pixel_values` pixels.

        Returns:
            `list[dict]`: one dict per image with `scores` `(n,)`, `labels` `(n,)` int64 and `boxes` `(n, 4)` float32
            `(x1, y1, x2, y2)` in pixels of the target size, sorted by score, descending.

        Raises:
            `ValueError`: outputs without the detector's fields, or a number of target sizes other than the batch's.
        """
        boxes, scores, labels, scales, _ = self._detections(outputs, target_sizes)
        results = []
        for index, (sy, sx) in enumerate(scales):
            keep = (labels[index] != PADDING_LABEL) & (scores[index] > threshold)
            scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
            results.append(
                {"scores": scores[index][keep], "labels": labels[index][keep], "boxes": boxes[index][keep] * scale}
            )
        return results

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        target_sizes: "torch.Tensor | Sequence | None" = None,
        return_binary_maps: bool = False,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float | None = None,
    ) -> list[dict]:
        """
        Turn the detector's output into Mask2Former's instance-segmentation format, pasting each detection's 28 x 28
        mask into the image as mmdetection does.

        Each mask `p = sigmoid(mask_logits)` is sampled bilinearly (`grid_sample`, `align_corners=False`, zeros
        outside) at the centres of the target image's pixels, mapped into the detection's box (scaled as in
        [`post_process_object_detection`]); a pixel belongs to the instance where `p >= mask_threshold`. As
        mmdetection on the CPU, only the pixels of the box widened by one pixel each side (and rounded outward) are
        sampled.

        Args:
            outputs ([`PaCaViTMaskRCNNOutput`] or a mapping with its fields): as for [`post_process_object_detection`],
                with `mask_logits` `(batch, num_detections, 28, 28)`.
            threshold (`float`, defaults to 0.5): keep the detections whose score is above it (strictly).
            target_sizes (`torch.Tensor` of shape `(batch, 2)` or `list[tuple[int, int]]`, *optional*): `(height,
                width)` of each result, typically the original image's. If unset, the size in `image_sizes` (the
                resized image without padding).
            return_binary_maps (`bool`, defaults to `False`): return one full-size binary mask per instance instead
                of one map, overlaps kept.
            mask_threshold (`float`, defaults to 0.5): mmdetection's `mask_thr_binary`.
            overlap_mask_area_threshold (`float`, *optional*): accepted because the `image-segmentation` pipeline
                passes it; unused (Mask R-CNN's masks are not merged, see the map's rule below).

        Returns:
            `list[dict]`: one dict per image:
            - `segmentation`: an int64 `(height, width)` map of instance ids, -1 where there is none; where masks
              overlap the pixel goes to the highest-scored instance. With `return_binary_maps=True`, a bool `(n,
              height, width)` tensor instead, one mask per instance (overlaps kept; `n` may be 0).
            - `segments_info`: one dict per instance, in score order: `id` (its value in the map, its index in the
              binary maps), `label_id`, `was_fused` (always `False`) and `score`. An instance whose mask is empty, or
              (in the map) entirely covered by higher-scored ones, is left out.

        Raises:
            `ValueError`: outputs without the detector's fields (`mask_logits` included), or a number of target sizes
                other than the batch's.
        """
        boxes, scores, labels, scales, targets = self._detections(outputs, target_sizes)
        try:
            mask_logits = outputs["mask_logits"]
        except (KeyError, TypeError):
            raise ValueError("`outputs` must have the detector's `mask_logits` for instance segmentation") from None
        results = []
        for index, ((sy, sx), (height, width)) in enumerate(zip(scales, targets)):
            keep = (labels[index] != PADDING_LABEL) & (scores[index] > threshold)
            scale = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
            masks = paste_masks(mask_logits[index][keep], boxes[index][keep] * scale, (height, width), mask_threshold)
            kept_scores, kept_labels = scores[index][keep].tolist(), labels[index][keep].tolist()
            if return_binary_maps:
                present = masks.flatten(1).any(1)
                order = torch.nonzero(present).flatten().tolist()
                masks = masks[present]
            else:
                segmentation = torch.full((height, width), -1, dtype=torch.int64, device=masks.device)
                for n in reversed(range(masks.shape[0])):  # the highest score painted last
                    segmentation[masks[n]] = n
                visible = torch.unique(segmentation).tolist()
                order = [n for n in range(masks.shape[0]) if n in visible]
                # ids in score order, with no gaps
                remap = torch.full((masks.shape[0] + 1,), -1, dtype=torch.int64, device=masks.device)
                remap[torch.tensor(order, dtype=torch.int64, device=masks.device)] = torch.arange(
                    len(order), device=masks.device
                )
                segmentation = remap[segmentation]  # -1 indexes the last entry, which stays -1
            segments = [
                {"id": new_id, "label_id": int(kept_labels[n]), "was_fused": False, "score": float(kept_scores[n])}
                for new_id, n in enumerate(order)
            ]
            results.append({"segmentation": masks if return_binary_maps else segmentation, "segments_info": segments})
        return results


def paste_masks(
    mask_logits: "torch.Tensor", boxes: "torch.Tensor", image_size: tuple[int, int], threshold: float = 0.5
) -> "torch.Tensor":
    """
    Paste per-detection mask logits into an image as mmdetection's `_do_paste_mask` does on the CPU.

    Args:
        mask_logits (`torch.Tensor` of shape `(n, h, w)`): each detection's mask logits (its own class's channel).
        boxes (`torch.Tensor` of shape `(n, 4)`): `(x1, y1, x2, y2)` in pixels of the image (pixel `(i, j)` covers
            `[j, j + 1) x [i, i + 1)`).
        image_size (`tuple[int, int]`): `(height, width)` of the image.
        threshold (`float`, defaults to 0.5): a pixel is in the mask where the sampled probability is at least this.

    Returns:
        `torch.Tensor` of shape `(n, height, width)`, bool. Pixel `(i, j)` samples `sigmoid(mask_logits)` bilinearly
        (`grid_sample`, `align_corners=False`, zero padding) at `u = (j + 0.5 - x1) / (x2 - x1) * 2 - 1`, `v` likewise;
        only inside `[floor(x1) - 1, ceil(x2) + 1) x [floor(y1) - 1, ceil(y2) + 1)` (clipped to the image).
    """
    height, width = image_size
    device = mask_logits.device
    pasted = torch.zeros((mask_logits.shape[0], height, width), dtype=torch.bool, device=device)
    probabilities = mask_logits.float().sigmoid()
    boxes = boxes.to(torch.float32)
    for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        left, top = max(math.floor(x1) - 1, 0), max(math.floor(y1) - 1, 0)
        right, bottom = min(math.ceil(x2) + 1, width), min(math.ceil(y2) + 1, height)
        if right <= left or bottom <= top or not (x2 > x1 and y2 > y1):  # outside the image, or no area
            continue
        # float32 throughout, as mmdetection computes the grid
        bx1, by1, bx2, by2 = boxes[n]
        xs = (torch.arange(left, right, device=device).to(torch.float32) + 0.5 - bx1) / (bx2 - bx1) * 2 - 1
        ys = (torch.arange(top, bottom, device=device).to(torch.float32) + 0.5 - by1) / (by2 - by1) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)[None]
        sampled = F.grid_sample(probabilities[n][None, None], grid, align_corners=False)[0, 0]
        pasted[n, top:bottom, left:right] = sampled >= threshold
    return pasted


__all__ = ["PaCaViTMaskRCNNImageProcessor", "PaCaViTMaskRCNNImageProcessorKwargs", "paste_masks"]
