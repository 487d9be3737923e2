#!/usr/bin/env python
"""`make demo`: fine-tune PaCa-ViT + the PaCa segmentation head on the built-in synthetic scenes, on the CPU.

What it does, in order:

1. (cheap) converts one of the authors' reference checkpoints and checks its outputs against theirs, one line;
2. runs `scripts/finetune_ade20k.py` (the ADE20k recipe's script, called as a function) from scratch on
   synthetic scenes in the ADE20k schema (`paca_hf.data.scenes`: 5 shape classes, label 0 "other" ignored as
   in ADE20k), with a narrow PaCa-Tiny-shaped model;
3. evaluates on held-out validation scenes (mIoU), saves the model and image processor;
4. runs `pipeline("image-segmentation", model=OUTPUT_DIR)` on validation scenes it never trained on and writes
   a grid (image / truth / prediction / errors) to `outputs/demo/predictions.png`.

What it does not show: ADE20k results. The model is small, trained from scratch for a few minutes on toy data
with a shortened schedule and a learning rate suited to that (the recipe's 6e-5 is for fine-tuning an ImageNet
backbone for 160k steps); the numbers say that the training / evaluation / saving / pipeline path works end to
end and learns, nothing about PaCa-ViT on real images. `python scripts/benchmark_demo.py` repeats step 2 over
seeds and prints the mIoU and minutes.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
DEFAULT_OUTPUT = ROOT / "outputs" / "demo"

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
COLOURS = [(230, 60, 60), (60, 180, 75), (70, 110, 235), (250, 200, 40), (200, 70, 220), (70, 210, 210),
           (245, 130, 48), (145, 30, 180)]
IGNORED_COLOUR = (40, 40, 40)


def load_finetune():
    spec = importlib.util.spec_from_file_location("finetune_ade20k", ROOT / "scripts" / "finetune_ade20k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_threads() -> int:
    """One thread on a 2-core (often shared) machine: OpenMP threads fighting for busy cores were 3-4x slower
    than one thread in our measurements; more where there are more cores."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(8, cores // 2)


def finetune_argv(output_dir, config_path, seed=0, settings=None) -> list:
    s = dict(DEMO_SETTINGS, **(settings or {}))
    return [
        "--config_name", str(config_path), "--num_clusters", "keep",
        "--dataset_name", "builtin-scenes", "--builtin_image_size", str(s["image_size"]),
        "--crop_size", str(s["image_size"]),
        "--num_train_images", str(s["num_train_images"]), "--num_eval_images", str(s["num_eval_images"]),
        "--max_train_steps", str(s["max_train_steps"]), "--num_warmup_steps", str(s["num_warmup_steps"]),
        "--learning_rate", str(s["learning_rate"]), "--head_lr_mult", str(s["head_lr_mult"]),
        "--clustering_lr_mult", str(s["clustering_lr_mult"]),
        "--per_device_train_batch_size", str(s["per_device_train_batch_size"]),
        "--per_device_eval_batch_size", "10", "--logging_steps", "500",
        "--output_dir", str(output_dir), "--seed", str(seed), "--mixed_precision", "no", "--cpu",
    ]


def run_finetune(output_dir, seed=0, settings=None, threads=None, quiet=False) -> tuple:
    """`(results, minutes)` of one demo fine-tune into `output_dir`."""
    import torch

    torch.set_num_threads(threads or default_threads())
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "demo_model_config.json"
    config_path.write_text(json.dumps(DEMO_MODEL, indent=1))
    argv = finetune_argv(output_dir, config_path, seed, settings)
    if quiet:
        argv.append("--disable_tqdm")
    started = time.time()
    results = load_finetune().main(argv)
    return results, (time.time() - started) / 60.0


def parity_line():
    """Convert the authors' reference classifier and compare with their saved outputs (one line), if present."""
    name = "cls_conv_stagewise"
    if not (REFERENCE / f"{name}.pth").is_file():
        return f"parity check skipped: {REFERENCE}/{name}.pth not found"
    import torch
    from safetensors.torch import load_file

    from paca_hf.convert import config_from_authors_settings
    from paca_hf.hub import convert_checkpoint

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    case = json.loads((REFERENCE / "cases.json").read_text())[name]
    config = config_from_authors_settings(case["arch"], case["paca"], drop_path_rate=0.0,
                                          num_labels=case["num_classes"])
    with tempfile.TemporaryDirectory() as folder:
        model = convert_checkpoint(REFERENCE / f"{name}.pth", config, Path(folder) / "converted").eval()
    io = load_file(REFERENCE / f"{name}.io.safetensors")
    with torch.no_grad():
        difference = max(
            (model(io[f"input_{i}"]).logits - io[f"output_{i}_logits"]).abs().max().item() for i in range(2)
        )
    verdict = "OK" if difference <= 1e-4 else "FAILED"
    return f"parity with the authors' code ({name}.pth converted): max |difference| {difference:.1e} -> {verdict}"


# ------------------------------------------------------------------------------------------------ picture


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def colourise(label_map, num_labels, ignore_index=255):
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
        image = np.asarray(image.convert("RGB"))
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
    font = _font(13)
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


def pipeline_predictions(model_dir, images):
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_train_steps", type=int, default=DEMO_SETTINGS["max_train_steps"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on <= 2 cores)")
    parser.add_argument("--num_shown", type=int, default=6, help="validation scenes in the picture")
    parser.add_argument("--skip_parity", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    started = time.time()

    if not args.skip_parity:
        print(parity_line(), flush=True)

    model_dir = args.output_dir / "model"
    settings = {"max_train_steps": args.max_train_steps}
    print(f"fine-tuning a {sum(DEMO_MODEL['depths'])}-block PaCa-ViT from scratch on "
          f"{DEMO_SETTINGS['num_train_images']} synthetic scenes ({DEMO_SETTINGS['image_size']}px, {args.max_train_steps} steps of "
          f"{DEMO_SETTINGS['per_device_train_batch_size']} images) on the CPU ...", flush=True)
    results, train_minutes = run_finetune(model_dir, args.seed, settings, args.threads)

    from paca_hf.augment import reduce_zero_label
    from paca_hf.data.scenes import make_scene_splits

    import torch

    validation = make_scene_splits(
        num_train=DEMO_SETTINGS["num_train_images"], num_validation=args.num_shown,
        image_size=(DEMO_SETTINGS["image_size"],) * 2, seed=0,
    )["validation"]  # the first validation scenes: part of the evaluation set, never trained on
    images = [validation[i]["image"] for i in range(len(validation))]
    truths = [reduce_zero_label(torch.from_numpy(np.array(validation[i]["annotation"], dtype=np.int64))).numpy()
              for i in range(len(validation))]
    predictions = pipeline_predictions(model_dir, images)
    config = json.loads((model_dir / "config.json").read_text())
    id2label = {int(k): v for k, v in config["id2label"].items()}

    from paca_hf.metrics import load_metric

    shown = load_metric("mean_iou", keep_in_memory=True).compute(
        predictions=predictions, references=truths, num_labels=len(id2label), ignore_index=255
    )
    total_minutes = (time.time() - started) / 60.0
    params = sum(np.prod(shape) for shape in _shapes(model_dir))
    s = DEMO_SETTINGS
    header = [
        f"PaCa-ViT + PaCa head ({params / 1e6:.1f}M parameters; PaCa-Tiny's layout, narrower) trained FROM SCRATCH on "
        f"the CPU: {results['train_steps']} steps x {s['per_device_train_batch_size']} images, {train_minutes:.1f} min.",
        f"{results['num_train_images']} synthetic {s['image_size']}px scenes (the shape decides the class). Validation "
        f"mIoU {results['eval_mean_iou']:.3f} over the 5 shapes on {results['num_eval_images']} held-out scenes "
        f"('other' not scored, as in ADE20k).",
        "Rows: held-out validation scenes through pipeline('image-segmentation'). Toy data, short schedule: this says "
        "nothing about ADE20k.",
    ]
    picture = render_grid(images, truths, predictions, id2label, header)
    picture_path = args.output_dir / "predictions.png"
    picture.save(picture_path)

    print(f"validation mIoU {results['eval_mean_iou']:.4f} (mean accuracy {results['eval_mean_accuracy']:.4f}, "
          f"overall accuracy {results['eval_overall_accuracy']:.4f}) on {results['num_eval_images']} held-out scenes")
    per_class = results.get("eval_per_category_iou", {})
    print("per-class IoU: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in per_class.items()))
    print(f"pipeline('image-segmentation') on {len(images)} of those scenes: mIoU {shown['mean_iou']:.4f}")
    print(f"model and image processor: {model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir}")
    print(f"picture: {picture_path.relative_to(ROOT) if picture_path.is_relative_to(ROOT) else picture_path}")
    print(f"minutes: {train_minutes:.1f} fine-tuning + evaluation, {total_minutes:.1f} in all")
    return 0


def _shapes(model_dir):
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as handle:
        for key in handle.keys():
            if "num_batches_tracked" in key or "running_" in key:
                continue
            yield handle.get_slice(key).get_shape()


if __name__ == "__main__":
    sys.exit(main())
