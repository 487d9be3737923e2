"""Image processors for a saved model: the one place that says what to use when a folder or Hub repo has none."""

import logging


logger = logging.getLogger(__name__)


def default_image_processor(task: str = "image-classification"):
    """The authors' evaluation transform for `task` as an image processor:

    * `"semantic-segmentation"`: mmseg's ADE20k evaluation (`Resize(scale=(2048, 512), keep_ratio=True)`), a
      bilinear resize of the shorter side to 512 with the longer side capped at 2048, without antialiasing (OpenCV's
      `INTER_LINEAR`, which mmcv uses), the whole image (no crop), labels reduced (0 = "other" becomes the ignored
      255);
    * `"instance-segmentation"` (the Mask R-CNN detectors): mmdetection's COCO test transform,
      [`PaCaViTMaskRCNNImageProcessor`]'s defaults;
    * any other task: the ImageNet evaluation transform (the processor's defaults).
    """
    from transformers.image_utils import PILImageResampling

    from .image_processing_pacavit import PaCaViTImageProcessor

    if task == "instance-segmentation":
        from .image_processing_pacavit_mask_rcnn import PaCaViTMaskRCNNImageProcessor

        return PaCaViTMaskRCNNImageProcessor()

    if task == "semantic-segmentation":
        return PaCaViTImageProcessor(
            size={"shortest_edge": 512, "longest_edge": 2048},
            resample=PILImageResampling.BILINEAR,
            antialias=False,
            do_center_crop=False,
            do_reduce_labels=True,
        )
    return PaCaViTImageProcessor()


def load_image_processor(name_or_path: str, task: str = "image-classification", **kwargs):
    """`AutoImageProcessor.from_pretrained(name_or_path, **kwargs)`; when the folder or repo holds no image
    processor, [`default_image_processor`] of `task`, with a warning naming the folder."""
    from transformers import AutoImageProcessor

    import paca_hf  # noqa: F401  (registers the PaCa-ViT Auto classes, image processor included)

    try:
        return AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError):
        logger.warning(f"No image processor saved in {name_or_path!r}; using the authors' {task} defaults.")
        return default_image_processor(task)
