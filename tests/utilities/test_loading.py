"""`paca_hf.loading`: a saved image processor is used; a folder without one gets the authors' transform for its task."""

import logging

from tiny_configs import tiny_config

from paca_hf import PaCaViTForSemanticSegmentation
from paca_hf.image_processing_pacavit import PaCaViTImageProcessor
from paca_hf.loading import load_image_processor


def test_a_saved_processor_is_loaded_and_a_missing_one_defaults_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "model"
    PaCaViTForSemanticSegmentation(tiny_config(num_labels=3)).save_pretrained(folder)

    with caplog.at_level(logging.WARNING, logger="paca_hf.loading"):
        processor = load_image_processor(str(folder), task="semantic-segmentation")
    assert "No image processor saved in" in caplog.text and str(folder) in caplog.text
    # mmseg's ADE20k evaluation: shorter side to 512, whole image, labels reduced.
    assert isinstance(processor, PaCaViTImageProcessor)
    assert processor.size == {"shortest_edge": 512, "longest_edge": 2048} and processor.do_center_crop is False
    assert processor.do_reduce_labels is True
    assert load_image_processor(str(folder)).to_dict() == PaCaViTImageProcessor().to_dict()

    saved = PaCaViTImageProcessor(size={"shortest_edge": 96}, do_center_crop=False)
    saved.save_pretrained(folder)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="paca_hf.loading"):
        loaded = load_image_processor(str(folder), task="semantic-segmentation")
    assert not caplog.text
    assert loaded.size == {"shortest_edge": 96} and loaded.do_reduce_labels is False
