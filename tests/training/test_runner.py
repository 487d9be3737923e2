"""The demo fine-tunes' shared run (`paca_hf.training.runner.run_demo_finetune`, `default_threads`) and the font of
their pictures (`paca_hf.visualization.load_font`)."""

import json

import pytest
import torch

from paca_hf.training import runner
from paca_hf.training.detection import demo as detection_demo
from paca_hf.training.segmentation import demo as segmentation_demo
from paca_hf.visualization import load_font


@pytest.mark.parametrize("cores, threads", [(None, 1), (1, 1), (2, 1), (3, 1), (4, 2), (10, 5), (64, 8)])
def test_default_threads(monkeypatch, cores, threads):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: cores)
    assert runner.default_threads() == threads
    assert segmentation_demo.default_threads() == detection_demo.default_threads() == threads


@pytest.mark.parametrize(
    "demo, config, config_name",
    [
        (segmentation_demo, segmentation_demo.DEMO_MODEL, "demo_model_config.json"),
        (detection_demo, detection_demo.DEMO_DETECTOR, "demo_detector_config.json"),
    ],
)
def test_both_demos_run_their_fine_tune_through_the_shared_run(demo, config, config_name, monkeypatch, tmp_path):
    seen = {}

    def fake_main(argv):
        seen["argv"], seen["threads"] = argv, torch.get_num_threads()
        return {"done": True}

    monkeypatch.setattr(demo.finetune, "main", fake_main)
    threads = torch.get_num_threads()
    try:
        results, minutes = demo.run_finetune(tmp_path / "out", seed=3, settings=None, threads=1, quiet=True)
    finally:
        torch.set_num_threads(threads)
    config_path = tmp_path / "out" / config_name
    assert results == {"done": True} and 0 <= minutes < 1 and seen["threads"] == 1
    assert json.loads(config_path.read_text()) == json.loads(json.dumps(config))
    assert seen["argv"] == [*demo.finetune_argv(tmp_path / "out", config_path, 3, None), "--disable_tqdm"]


def test_load_font_scales_where_pillow_can():
    font = load_font(13)
    assert getattr(font, "size", 13) == 13
    assert load_font() is not None
