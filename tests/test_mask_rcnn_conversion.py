"""The Mask R-CNN detectors through the converter: class names, the command line on the reference detector, the
COCO releases."""

from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from paca_hf.configuration_pacavit import load_id2label


def test_coco_class_names_are_torchvisions_80_in_order():
    # torchvision lists COCO's 91 category ids with "N/A" for the unused ones; mmdetection's labels are the 80 used
    categories = MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    expected = [name for name in categories if name not in ("__background__", "N/A")]
    id2label = load_id2label("coco")
    assert list(id2label) == list(range(80))
    assert list(id2label.values()) == expected
