"""The `make demo` recipe: a narrow PaCa-Tiny-shaped model fine-tuned from scratch on the built-in synthetic scenes
(`paca_hf.data.scenes`) with the ADE20k fine-tune (`.finetune`), and a picture of its predictions.
`scripts/demo.py` and `scripts/benchmark_demo.py` are its command lines.

The model, data and schedule are chosen so that the whole path (training, evaluation, saving, the pipeline) runs
in minutes on a CPU and visibly learns; the numbers say nothing about PaCa-ViT on ADE20k.
"""

import statistics
from pathlib import Path

import numpy as np

from ...images import image_to_array
from ...visualization import load_font
from ..runner import default_threads as default_threads  # public here: scripts/demo.py, scripts/benchmark_demo.py
from ..runner import run_demo_finetune
from . import finetune


# A PaCa-Tiny-shaped model (4 stages, clusters in stages 1-3, none in the last), much narrower and shallower:
# 0.6M parameters. Chosen by measurement on 2 busy cores: a 1.2M model (32/64/128/160 wide, depths 1/1/2/1) reached
# mIoU 0.33-0.35 in the same ~7 minutes, this one 0.39.
DEMO_MODEL = {
    "model_type": "pacavit",
    "hidden_sizes": [24, 48, 96, 128],
    "depths": [1, 1, 1, 1],
    "num_attention_heads": [1, 2, 3, 4],
    "mlp_ratios": [4, 4, 4, 4],
    "num_clusters": [8, 8, 8, 0],
    "clustering_kernel_size": 7,
    "decode_head_hidden_size": 48,
    "drop_path_rate": 0.0,
}
# The schedule the demo's numbers come from (see benchmark_demo.py). From scratch, lr 1e-3 without the recipe's
# x10 multipliers: with them (a 1e-2 head) training was no better at 1e-3 and diverged to chance at 2e-3.
DEMO_SETTINGS = {
    "image_size": 96,
    "num_train_images": 400,
    "num_eval_images": 50,
    "max_train_steps": 5000,
    "num_warmup_steps": 50,
    "learning_rate": 1e-3,
    "head_lr_mult": 1.0,
    "clustering_lr_mult": 1.0,
    "per_device_train_batch_size": 4,
}
# Validation mIoU of `make demo` by seed, as the README gives it (`python scripts/benchmark_demo.py --seeds 0 1 2`,
# 1 thread on 2 cores). A run repeats exactly on the same machine with the same number of threads; another CPU or
# thread count sums in another order, which 5000 steps turn into another trajectory, so a run is judged against the
# spread over seeds.
MEASURED_MIOU = {0: 0.382, 1: 0.360, 2: 0.404}
MEASURED_THREADS = 1
COLOURS = [
    (230, 60, 60),
    (60, 180, 75),
    (70, 110, 235),
    (250, 200, 40),
    (200, 70, 220),
    (70, 210, 210),
    (245, 130, 48),
    (145, 30, 180),
]
IGNORED_COLOUR = (40, 40, 40)


def expected_miou() -> tuple[float, float]:
    """`(low, high)`: the range a demo run's validation mIoU is expected in, the mean over the measured seeds
    (`MEASURED_MIOU`) plus or minus two standard deviations."""
    values = list(MEASURED_MIOU.values())
    mean, spread = statistics.mean(values), statistics.stdev(values)
    return mean - 2 * spread, mean + 2 * spread


def miou_verdict(miou: float, threads: int) -> str:
    """One line saying whether a demo run's validation mIoU `miou` (trained with `threads` threads) falls inside
    [`expected_miou`], with the figures it comes from."""
    low, high = expected_miou()
    values = list(MEASURED_MIOU.values())
    inside = "inside" if low <= miou <= high else "OUTSIDE"
    seeds = " / ".join(f"{value:.3f}" for value in values)
    return (
        f"validation mIoU {miou:.3f} is {inside} the expected range {low:.3f}-{high:.3f} (README: seeds "
        f"{', '.join(map(str, MEASURED_MIOU))} gave {seeds}, mean +- 2 sd; {MEASURED_THREADS} thread(s) then, "
        f"{threads} now; a run repeats exactly only on the same machine and number of threads)"
    )


def finetune_argv(output_dir, config_path, seed=0, settings=None) -> list:
    """The fine-tune's command line for the demo: `DEMO_SETTINGS` updated with `settings`, on the CPU."""
    s = dict(DEMO_SETTINGS, **(settings or {}))
    return [
        "--config_name",
        str(config_path),
        "--num_clusters",
        "keep",
        "--dataset_name",
        "builtin-scenes",
        "--builtin_image_size",
        str(s["image_size"]),
        "--crop_size",
        str(s["image_size"]),
        "--num_train_images",
        str(s["num_train_images"]),
        "--num_eval_images",
        str(s["num_eval_images"]),
        "--max_train_steps",
        str(s["max_train_steps"]),
        "--num_warmup_steps",
        str(s["num_warmup_steps"]),
        "--learning_rate",
        str(s["learning_rate"]),
        "--head_lr_mult",
        str(s["head_lr_mult"]),
        "--clustering_lr_mult",
        str(s["clustering_lr_mult"]),
        "--per_device_train_batch_size",
        str(s["per_device_train_batch_size"]),
        "--per_device_eval_batch_size",
        "10",
        "--logging_steps",
        "500",
        "--output_dir",
        str(output_dir),
        "--seed",
        str(seed),
        "--mixed_precision",
        "no",
        "--cpu",
    ]


def run_finetune(output_dir, seed=0, settings=None, threads=None, quiet=False) -> tuple:
    """`(results, minutes)` of one demo fine-tune into `output_dir`."""
    return run_demo_finetune(
        finetune.main,
        output_dir,
        DEMO_MODEL,
        "demo_model_config.json",
        lambda folder, config_path: finetune_argv(folder, config_path, seed, settings),
        threads,
        quiet,
    )


# ------------------------------------------------------------------------------------------------ picture


def colourise(label_map, num_labels, ignore_index=255):
    """(H, W, 3) uint8 colours of a label map; `ignore_index` and unknown ids get `IGNORED_COLOUR`."""
    out = np.zeros(label_map.shape + (3,), dtype=np.uint8)
    out[:] = IGNORED_COLOUR
    for index in range(num_labels):
        out[label_map == index] = COLOURS[index % len(COLOURS)]
    return out


def render_grid(images, truths, predictions, id2label, header, scale=2, ignore_index=255):
    """A PIL image: one row per scene, columns image / truth / prediction / errors, a header and a legend.
    `truths` use `ignore_index` for unscored pixels; the prediction is drawn dimmed there."""
    from PIL import Image, ImageDraw

    num_labels = len(id2label)
    cells = []
    for image, truth, prediction in zip(images, truths, predictions):
        image = image_to_array(image)  # the package's one decoder (8-bit scenes: uint8 RGB)
        scored = truth != ignore_index
        predicted = colourise(prediction, num_labels).astype(np.float32)
        predicted[~scored] = predicted[~scored] * 0.35 + 20
        errors = (image.astype(np.float32) * 0.3).astype(np.uint8)
        errors[scored & (prediction == truth)] = (60, 170, 60)
        errors[scored & (prediction != truth)] = (235, 40, 40)
        cells.append([image, colourise(truth, num_labels), predicted.astype(np.uint8), errors])
    height, width = cells[0][0].shape[:2]
    cell_h, cell_w, pad = height * scale, width * scale, 6
    titles = ["image", "truth", "prediction (pipeline)", "errors (scored pixels)"]
    canvas_w = 4 * cell_w + 5 * pad
    font = load_font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = []
    for text in header:  # wrap to the picture's width
        line = ""
        for word in text.split(" "):
            candidate = f"{line} {word}".strip()
            if line and measure.textlength(candidate, font=font) > canvas_w - 2 * pad:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    header = lines
    header_h = 18 * len(header) + 12
    title_h = 18
    legend_h = 44
    canvas_h = header_h + title_h + len(cells) * (cell_h + pad) + legend_h
    canvas = Image.new("RGB", (canvas_w, canvas_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(header):
        draw.text((pad, 6 + 18 * i), line, fill=(0, 0, 0), font=font)
    for column, title in enumerate(titles):
        draw.text((pad + column * (cell_w + pad), header_h), title, fill=(0, 0, 0), font=font)
    for row, row_cells in enumerate(cells):
        top = header_h + title_h + row * (cell_h + pad)
        for column, cell in enumerate(row_cells):
            tile = Image.fromarray(cell).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (pad + column * (cell_w + pad), top))
    top = canvas_h - legend_h + 6
    x = pad
    entries = [(COLOURS[i % len(COLOURS)], name) for i, name in sorted(id2label.items())]
    entries += [(IGNORED_COLOUR, "other (not scored; prediction dimmed there)")]
    for colour, name in entries:
        label_w = int(draw.textlength(name, font=font))
        if x + 18 + label_w > canvas_w:
            x, top = pad, top + 18
        draw.rectangle([x, top + 2, x + 12, top + 14], fill=colour)
        draw.text((x + 16, top), name, fill=(0, 0, 0), font=font)
        x += 16 + label_w + 14
    return canvas


def pipeline_predictions(model_dir, images) -> list:
    """`pipeline("image-segmentation")` masks -> one label map per image (ids of the model's config)."""
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    # The pipeline logs an *error* for model classes missing from its built-in list, registered ones included
    # (transformers 5.23 checks names only); it runs ours fine.
    hf_logging.set_verbosity(hf_logging.CRITICAL)
    try:
        segment = pipeline("image-segmentation", model=str(model_dir), device="cpu")
    finally:
        hf_logging.set_verbosity(verbosity)
    label2id = segment.model.config.label2id
    maps = []
    for image in images:
        label_map = np.full((image.height, image.width), 255, dtype=np.int64)
        for result in segment(image):
            label_map[np.array(result["mask"]) > 0] = label2id[result["label"]]
        maps.append(label_map)
    return maps


def parameter_shapes(model_dir):
    """Shapes of the trainable tensors in `model_dir/model.safetensors` (no BatchNorm statistics)."""
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            if "num_batches_tracked" in key or "running_" in key:
                continue
            yield handle.get_slice(key).get_shape()


def shown_scenes(num_shown: int) -> tuple[list, list[np.ndarray]]:
    """`(images, truths)`: the first `num_shown` validation scenes of the demo's data (its evaluation set, never
    trained on, is the first `DEMO_SETTINGS["num_eval_images"]`) as PIL images, and their label maps reduced like
    training (0 "other" -> 255)."""
    from ...data.scenes import make_scene_splits
    from ...images import load_label_map, reduce_labels

    size = DEMO_SETTINGS["image_size"]
    validation = make_scene_splits(
        num_train=DEMO_SETTINGS["num_train_images"], num_validation=num_shown, image_size=(size, size), seed=0
    )["validation"]
    images = [validation[i]["image"] for i in range(len(validation))]
    truths = [reduce_labels(load_label_map(validation[i]["annotation"])) for i in range(len(validation))]
    return images, truths
