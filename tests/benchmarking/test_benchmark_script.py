"""scripts/benchmark.py (`paca_hf.benchmarking`): the quick run writes consistent files, and its arithmetic is right
(no timing asserts)."""

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from paca_hf.benchmarking import cli, models, results


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


def read_csv(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("benchmark")
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output-dir", str(output_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return output_dir, completed.stdout


def test_quick_run_rows_and_columns(quick_run):
    output_dir, _ = quick_run
    columns, rows = read_csv(output_dir / "results.csv")
    assert columns == list(results.CSV_COLUMNS)
    quick = cli.QUICK
    expected = {
        (model, "inference", size, batch)
        for model in quick["models"]
        for size in quick["sizes"]
        for batch in quick["batch_sizes"]
    } | {
        (model, "train", size, batch)
        for model in quick["models"]
        for size in quick["train_sizes"]
        for batch in quick["train_batch_sizes"]
    }
    assert {(r["model"], r["mode"], int(r["size"]), int(r["batch_size"])) for r in rows} == expected
    assert len(rows) == len(expected)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["baseline"] == quick["baseline"]
        assert int(row["repeats"]) == quick["repeats"]
        assert int(row["pixels"]) == int(row["size"]) ** 2
        assert row["device"] == "cpu" and row["dtype"] == "fp32"
        assert float(row["gflops"]) > 0 and float(row["params_m"]) > 0
        assert float(row["peak_mem_mib"]) >= 0 or row["mem_method"] == "unavailable"
        assert (row["optimizer"] == "adamw") == (row["mode"] == "train")


def test_quick_run_arithmetic(quick_run):
    output_dir, _ = quick_run
    _, rows = read_csv(output_dir / "results.csv")
    by_key = {(r["model"], r["mode"], r["size"], r["batch_size"]): r for r in rows}
    for row in rows:
        median = float(row["median_ms"])
        times = [float(value) for value in row["times_ms"].split(";")]
        assert median == pytest.approx(statistics.median(times), abs=1e-3)  # times_ms has 4 decimals
        assert float(row["min_ms"]) == pytest.approx(min(times), abs=1e-3)
        assert float(row["max_ms"]) == pytest.approx(max(times), abs=1e-3)
        assert float(row["iqr_ms"]) >= 0
        assert float(row["images_per_s"]) == pytest.approx(int(row["batch_size"]) * 1000 / median, rel=1e-12)
        assert float(row["tflops_per_s"]) == pytest.approx(float(row["gflops"]) / median, rel=1e-12)
        base = by_key[(row["baseline"], row["mode"], row["size"], row["batch_size"])]
        assert float(row["ratio_vs_baseline"]) == pytest.approx(median / float(base["median_ms"]), rel=1e-12)
        if row["model"] == row["baseline"]:
            assert float(row["ratio_vs_baseline"]) == 1.0

    columns, scaling = read_csv(output_dir / "scaling.csv")
    assert columns == list(results.SCALING_COLUMNS)
    sizes = cli.QUICK["sizes"]
    expected = {
        (model, "inference", small, large) for model in cli.QUICK["models"] for small, large in zip(sizes, sizes[1:])
    }
    assert {(s["model"], s["mode"], int(s["size_from"]), int(s["size_to"])) for s in scaling} == expected
    for entry in scaling:
        small = by_key[(entry["model"], entry["mode"], entry["size_from"], entry["batch_size"])]
        large = by_key[(entry["model"], entry["mode"], entry["size_to"], entry["batch_size"])]
        time_ratio = float(large["median_ms"]) / float(small["median_ms"])
        pixel_ratio = int(large["pixels"]) / int(small["pixels"])
        assert float(entry["time_ratio"]) == pytest.approx(time_ratio, rel=1e-12)
        assert float(entry["pixel_ratio"]) == pytest.approx(pixel_ratio, rel=1e-12)
        assert float(entry["exponent"]) == pytest.approx(math.log(time_ratio) / math.log(pixel_ratio), rel=1e-9)


def test_quick_run_report_meta_and_plot(quick_run):
    output_dir, stdout = quick_run
    report = (output_dir / "report.txt").read_text()
    assert "Median time per step" in report and "Scaling" in report
    assert f"pacavit-tiny/{cli.QUICK['baseline']}" in stdout
    meta = json.loads((output_dir / "meta.json").read_text())
    assert meta["threads"] == 1 and meta["baseline"] == cli.QUICK["baseline"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot skipped" in stdout
        assert not (output_dir / "scaling.png").exists()
    else:
        assert (output_dir / "scaling.png").stat().st_size > 0


def test_quartiles():
    assert results.quartiles([4.0]) == (4.0, 4.0, 4.0)
    assert results.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    first, median, third = results.quartiles([10.0, 1.0, 4.0, 2.0])
    assert (first, median, third) == (1.75, 3.0, 5.5)


def test_ratios_and_scaling():
    def row(model, size, median, mode="inference", status="ok"):
        return {
            "model": model,
            "mode": mode,
            "size": size,
            "batch_size": 1,
            "pixels": size * size,
            "median_ms": median,
            "status": status,
        }

    rows = [
        row("a", 224, 10.0),
        row("base", 224, 40.0),
        row("a", 512, 30.0),
        row("base", 512, float("nan"), status="oom"),
        row("a", 1024, 120.0),
        row("a", 224, 5.0, mode="train"),
    ]
    results.add_ratios(rows, "base")
    assert rows[0]["ratio_vs_baseline"] == 0.25 and rows[1]["ratio_vs_baseline"] == 1.0
    assert all(math.isnan(r["ratio_vs_baseline"]) for r in rows[2:])  # baseline missing or failed
    scaling = {(s["model"], s["size_from"], s["size_to"]): s for s in results.scaling_rows(rows)}
    assert set(scaling) == {("a", 224, 512), ("a", 512, 1024)}
    assert scaling[("a", 512, 1024)]["time_ratio"] == 4.0 and scaling[("a", 512, 1024)]["pixel_ratio"] == 4.0
    assert scaling[("a", 512, 1024)]["exponent"] == pytest.approx(1.0)


@pytest.mark.parametrize("groups, transposed", [(1, False), (4, False), (16, False), (4, True)])
def test_conv_backward_flops_counts_groups(groups, transposed):
    layer_class = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    layer = layer_class(16, 32 if not transposed else 16, 3, padding=1, groups=groups)
    inputs = torch.randn(2, 16, 9, 9, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        layer(inputs)
    mapping = {torch.ops.aten.convolution_backward: models.conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as both:
        layer(inputs).sum().backward()
    assert both.get_total_flops() == 3 * forward.get_total_flops()  # forward, grad_input, grad_weight


def test_baseline_configs_are_the_stated_hyper_parameters():
    swin = models.build_config("swin-t")
    assert (swin.embed_dim, list(swin.depths), list(swin.num_heads), swin.window_size, swin.patch_size) == (
        96,
        [2, 2, 6, 2],
        [3, 6, 12, 24],
        7,
        4,
    )
    b1, b2 = models.build_config("pvtv2-b1"), models.build_config("pvtv2-b2")
    assert list(b1.hidden_sizes) == list(b2.hidden_sizes) == [64, 128, 320, 512]
    assert (list(b1.depths), list(b2.depths)) == ([2, 2, 2, 2], [3, 4, 6, 3])
    for name in models.MODEL_NAMES:
        assert models.build_config(name).num_labels == 1000


def test_unknown_model_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--models", "pacavit-tiny,resnet50"])
    assert "unknown model" in capsys.readouterr().err


def test_config_overrides_reach_the_model():
    model = models.build_model("pacavit-tiny:chunk_size_feed_forward=0:drop_path_rate=0.0", "sdpa")
    assert model.config.chunk_size_feed_forward == 0 and model.config.drop_path_rate == 0.0
    assert {layer.mlp.chunk_size for stage in model.pacavit.stages for layer in stage.layers} == {0}
    assert models.build_config("pacavit-tiny").chunk_size_feed_forward is None  # per device


def test_default_chunk_size_feed_forward_is_bands_on_cpu_whole_map_elsewhere(monkeypatch):
    from tiny_configs import tiny_config

    from paca_hf.modeling_pacavit import PaCaViTMixFFN, default_chunk_size_feed_forward

    assert default_chunk_size_feed_forward(torch.device("cpu")) == 4096
    assert default_chunk_size_feed_forward(torch.device("cuda")) == 0
    assert default_chunk_size_feed_forward(torch.device("meta")) == 0
    ffn = PaCaViTMixFFN(tiny_config(), hidden_size=4, intermediate_size=8)
    assert ffn.chunk_size is None
    bands = []
    original = PaCaViTMixFFN.forward_band
    monkeypatch.setattr(
        PaCaViTMixFFN, "forward_band", lambda self, *args: bands.append(args[3:]) or original(self, *args)
    )
    ffn(torch.randn(1, 100 * 100, 4), 100, 100)  # 4096 patches = 40 rows of 100 per band
    # Each band's rows, and the rows its 3x3 convolution reads.
    assert bands == [((0, 40), (0, 41)), ((40, 80), (39, 81)), ((80, 100), (79, 100))]


@pytest.mark.parametrize(
    "name, message",
    [
        ("swin-t:window_size=8", "config overrides are for PaCa-ViT models only"),
        ("pacavit-tiny:chunk_size=0", "PaCaViTConfig has no field chunk_size"),
        ("pacavit-tiny:chunk_size_feed_forward", "is not `field=value`"),
        ("pacavit-tiny:chunk_size_feed_forward=four", "is not JSON"),
        ("pacavit-huge:chunk_size_feed_forward=0", "unknown model 'pacavit-huge'"),
    ],
)
def test_bad_config_overrides_are_refused(name, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--models", f"pacavit-tiny,{name}"])
    assert message in capsys.readouterr().err


def test_results_read_back_and_replot(quick_run, tmp_path):
    output_dir, _ = quick_run
    rows = results.read_results(output_dir / "results.csv")
    _, raw = read_csv(output_dir / "results.csv")
    assert len(rows) == len(raw)
    for row, text in zip(rows, raw):
        assert row["median_ms"] == float(text["median_ms"]) and row["size"] == int(text["size"])
    for name in ("results.csv", "meta.json"):
        (tmp_path / name).write_bytes((output_dir / name).read_bytes())
    assert cli.main(["--plot-only", "--output-dir", str(tmp_path)]) == 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (tmp_path / "scaling.png").exists()
    else:
        assert (tmp_path / "scaling.png").stat().st_size > 0


def test_backends_expand_into_named_runs():
    args = cli.parse_args(["--models", "pacavit-tiny,swin-t", "--backend", "eager,onnxruntime", "--mode", "inference"])
    assert args.models == ["pacavit-tiny", "swin-t", "pacavit-tiny@onnxruntime", "swin-t@onnxruntime"]
    assert args.warmup >= 2  # the export (or compilation) happens in the untimed warm-up
    assert cli.parse_args(["--compile"]).models == [f"{name}@compile" for name in cli.DEFAULTS["models"]]
    assert cli.parse_args(["--compile"]).baseline == "swin-t@compile"
    assert models.split_backend("pacavit-tiny:chunk_size_feed_forward=0@compile") == (
        "pacavit-tiny:chunk_size_feed_forward=0",
        "compile",
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "fast"], "unknown backend fast"),
        (["--backend", "onnxruntime", "--mode", "train"], "--backend onnxruntime runs inference on the CPU"),
        (["--backend", "eager", "--compile"], "--compile is --backend compile"),
        (["--task", "segmentation", "--models", "swin-t"], "unknown model 'swin-t' for segmentation"),
        (["--task", "data", "--models", "processor-cv2"], "unknown data pipeline processor-cv2"),
    ],
)
def test_bad_backends_and_task_models_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(argv)
    assert message in capsys.readouterr().err


def test_onnxruntime_model_matches_eager(tmp_path):
    from tiny_configs import tiny_config

    from paca_hf import PaCaViTForSemanticSegmentation

    torch.manual_seed(0)
    model = PaCaViTForSemanticSegmentation(tiny_config(num_labels=5)).eval()
    pixel_values = torch.randn(1, 3, 64, 96)
    runtime = models.OnnxRuntimeModel(model, threads=1, directory=str(tmp_path))
    logits = runtime(pixel_values=pixel_values).logits
    with torch.inference_mode():
        expected = model(pixel_values=pixel_values).logits
    assert logits.shape == expected.shape == (1, 5, 16, 24)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert [path.name for path in tmp_path.iterdir()] == ["1x3x64x96.onnx"]  # one graph per input shape


def test_onnxruntime_threads_stop_spinning_when_a_run_returns(tmp_path):
    """The interleaved benchmark times another model right after each run: ONNX Runtime's threads may spin within a
    run but must not keep a core busy after it (by default they spin on for tens of milliseconds)."""
    import time

    from tiny_configs import tiny_config

    from paca_hf import PaCaViTForImageClassification

    runtime = models.OnnxRuntimeModel(PaCaViTForImageClassification(tiny_config()), threads=2, directory=str(tmp_path))
    pixel_values = torch.randn(1, 3, 64, 64)
    for _ in range(3):
        runtime(pixel_values=pixel_values)
    started = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - started < 0.01


def test_segmentation_baselines_are_the_stated_hyper_parameters():
    b1, b2 = models.build_config("segformer-b1", "segmentation"), models.build_config("segformer-b2", "segmentation")
    assert (list(b1.depths), b1.decoder_hidden_size) == ([2, 2, 2, 2], 256)
    assert (list(b2.depths), b2.decoder_hidden_size) == ([3, 4, 6, 3], 768)
    upernet = models.build_config("upernet-swin-t", "segmentation")
    assert (upernet.hidden_size, upernet.use_auxiliary_head, upernet.auxiliary_in_channels) == (512, True, 384)
    assert upernet.backbone_config.embed_dim == 96 and list(upernet.backbone_config.depths) == [2, 2, 6, 2]
    paca = models.build_config("pacavit-tiny", "segmentation")
    assert list(paca.num_clusters) == [200, 200, 200, 0] and paca.hidden_sizes == [96, 192, 320, 384]
    for name in models.SEGMENTATION_MODEL_NAMES:
        assert models.build_config(name, "segmentation").num_labels == models.NUM_SEGMENTATION_LABELS
    assert models.model_class("upernet-swin-t@compile", "segmentation").__name__ == "UperNetForSemanticSegmentation"


def test_data_task_quick_run(tmp_path):
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--task", "data", "--quick", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    _, rows = read_csv(tmp_path / "results.csv")
    assert {(row["model"], row["mode"], row["size"], row["batch_size"]) for row in rows} == {
        (name, "data", "64", "2") for name in cli.DATA_PIPELINES
    }
    base = next(row for row in rows if row["model"] == "processor-pil")
    for row in rows:
        assert row["status"] == "ok" and row["task"] == "data"
        assert float(row["images_per_s"]) == pytest.approx(2000 / float(row["median_ms"]), rel=1e-12)
        assert float(row["ratio_vs_baseline"]) == pytest.approx(
            float(row["median_ms"]) / float(base["median_ms"]), rel=1e-12
        )
    assert "Images per second per thread" in completed.stdout


def test_readme_benchmark_commands_parse():
    """Every `scripts/benchmark.py` command the README gives for its figures is a valid command line."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = [
        shlex.split(command.replace("\\\n", " "))
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
        for command in re.split(r"\n(?=python )", block)
        if command.startswith("python scripts/benchmark.py")
    ]
    assert len(commands) >= 6
    for command in commands:
        cli.parse_args(command[2:])


def test_detection_task_compares_the_mask_rcnns_at_cocos_test_size():
    from tiny_configs import tiny_config

    from paca_hf import PaCaViTMaskRCNNConfig, PaCaViTMaskRCNNForInstanceSegmentation

    args = cli.parse_args(["--task", "detection"])
    assert args.models == ["pacavit-tiny", "maskrcnn-r50"] and args.baseline == "maskrcnn-r50"
    assert args.sizes == [800] and args.train_sizes == [800] and args.modes == ["inference", "train"]
    assert models.detection_shape(800) == (800, 1216) and models.input_pixels(800, "detection") == 800 * 1216
    config = models.build_config("pacavit-tiny", "detection")
    assert config.backbone_config.num_clusters == [100, 100, 100, 0] and config.backbone_config.hidden_sizes[0] == 96
    assert (config.num_labels, config.fpn_hidden_size, config.box_head_hidden_size) == (80, 256, 1024)
    # The train step's labels are valid ground truth for our detector (which checks them) at the step's size.
    labels = models.detection_labels(1, 64, torch.Generator().manual_seed(0))
    assert labels[0]["masks"].shape == (models.NUM_DETECTION_BOXES, 64, 96)
    tiny = PaCaViTMaskRCNNForInstanceSegmentation(
        PaCaViTMaskRCNNConfig(
            backbone_config=tiny_config(),
            fpn_hidden_size=16,
            rpn_hidden_size=16,
            box_head_hidden_size=16,
            mask_head_hidden_size=8,
            num_labels=80,
        )
    ).train()
    assert torch.isfinite(tiny(torch.randn(1, 3, 64, 96), labels=labels).loss)
    # torchvision's model behind the same call, seeing the input's pixels unresized.
    torchvision_model = models.build_model("maskrcnn-r50", "sdpa", "detection").eval()
    torchvision_model.model.rpn._post_nms_top_n["testing"] = 10  # 10 RoIs instead of 1000: seconds less
    with torch.no_grad():
        boxes = torchvision_model(torch.randn(1, 3, 32, 64)).pred_boxes
    assert torchvision_model.model.transform.min_size == (32,) and torchvision_model.model.transform.max_size == 64
    assert len(boxes) == 1 and boxes[0].shape[-1] == 4
    assert (boxes[0][:, 2] <= 64).all() and (boxes[0][:, 3] <= 32).all()
