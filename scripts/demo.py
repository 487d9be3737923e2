#!/usr/bin/env python
"""`make demo`: fine-tune PaCa-ViT + the PaCa segmentation head on the built-in synthetic scenes, on the CPU.
`make demo-detection` (`--task detection`): train a small PaCa-ViT Mask R-CNN on the same scenes' instances.

What it does, in order:

1. (cheap) converts one of the authors' reference checkpoints and checks its outputs against theirs, one line;
2. runs the ADE20k fine-tune (`paca_hf.training.segmentation.finetune.main`, what scripts/finetune_ade20k.py runs)
   from scratch on synthetic scenes in the ADE20k schema (`paca_hf.data.scenes`: 5 shape classes, label 0 "other"
   ignored as in ADE20k), with a narrow PaCa-Tiny-shaped model;
3. evaluates on held-out validation scenes (mIoU), saves the model and image processor;
4. runs `pipeline("image-segmentation", model=OUTPUT_DIR)` on the same validation scenes (its mIoU is the
   evaluation's: the evaluation runs the saved image processor) and writes a grid of the first few (image / truth /
   prediction / errors) to `outputs/demo/predictions.png`;
5. says whether the validation mIoU falls inside the range the README gives (runs repeat exactly only on the same
   machine with the same number of threads).

What it does not show: ADE20k results. The model is small, trained from scratch for a few minutes on toy data
with a shortened schedule and a learning rate suited to that (the recipe's 6e-5 is for fine-tuning an ImageNet
backbone for 160k steps); the numbers say that the training / evaluation / saving / pipeline path works end to
end and learns, nothing about PaCa-ViT on real images. `python scripts/benchmark_demo.py` repeats step 2 over
seeds and prints the mIoU and minutes. The recipe (model, settings, picture) is `paca_hf.training.segmentation.demo`.

`--task detection` instead trains a small PaCa-ViT Mask R-CNN from scratch on the built-in scenes as COCO instance
folders with the COCO fine-tune (`paca_hf.training.detection.finetune.main`, what scripts/finetune_coco.py runs),
prints pycocotools' box and mask AP on held-out scenes (the evaluation of scripts/evaluate_coco.py, through the
saved image processor), runs `pipeline("object-detection", model=OUTPUT_DIR)` on held-out scenes and writes image /
truth / predicted boxes and masks with labels and scores to `outputs/demo-detection/predictions.png`. The recipe
is `paca_hf.training.detection.demo`; toy data, a short schedule: nothing about COCO.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from paca_hf.file_utils import atomic_file
from paca_hf.training.segmentation.demo import (
    DEMO_MODEL,
    DEMO_SETTINGS,
    default_threads,
    miou_verdict,
    parameter_shapes,
    pipeline_predictions,
    render_grid,
    run_finetune,
    shown_scenes,
)


ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
DEFAULT_OUTPUT = ROOT / "outputs" / "demo"
DEFAULT_DETECTION_OUTPUT = ROOT / "outputs" / "demo-detection"


def parity_line():
    """Convert the authors' reference classifier and compare with their saved outputs (one line), if present."""
    name = "cls_conv_stagewise"
    if not (REFERENCE / f"{name}.pth").is_file():
        return f"parity check skipped: {REFERENCE}/{name}.pth not found"
    import torch
    from safetensors.torch import load_file
    from transformers.utils import logging as hf_logging

    from paca_hf.convert import config_from_authors_settings
    from paca_hf.hub import convert_checkpoint

    hf_logging.disable_progress_bar()
    case = json.loads((REFERENCE / "cases.json").read_text())[name]
    config = config_from_authors_settings(
        case["arch"], case["paca"], drop_path_rate=0.0, num_labels=case["num_classes"]
    )
    with tempfile.TemporaryDirectory() as folder:
        model = convert_checkpoint(REFERENCE / f"{name}.pth", config, Path(folder) / "converted").eval()
    io = load_file(REFERENCE / f"{name}.io.safetensors")
    with torch.no_grad():
        difference = max(
            (model(io[f"input_{i}"]).logits - io[f"output_{i}_logits"]).abs().max().item() for i in range(2)
        )
    verdict = "OK" if difference <= 1e-4 else "FAILED"
    return f"parity with the authors' code ({name}.pth converted): max |difference| {difference:.1e} -> {verdict}"


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def detection_demo(args) -> int:
    """`--task detection`: train, score with pycocotools, run the object-detection pipeline, draw."""
    from paca_hf.training.detection import demo as detection

    started = time.time()
    output_dir = args.output_dir or DEFAULT_DETECTION_OUTPUT
    model_dir = output_dir / "model"
    settings = {} if args.max_train_steps is None else {"max_train_steps": args.max_train_steps}
    s = dict(detection.DEMO_SETTINGS, **settings)
    schedule = f"{s['max_train_steps']} steps" if "max_train_steps" in s else f"{s['num_train_epochs']} epochs"
    print(
        f"training a small PaCa-ViT Mask R-CNN from scratch on {s['num_train_images']} synthetic "
        f"{s['image_size']}px scenes ({schedule} of {s['per_device_train_batch_size']} images) on the CPU ...",
        flush=True,
    )
    results, train_minutes = detection.run_finetune(model_dir, args.seed, settings, args.threads)
    validation = next((model_dir / "builtin-scenes-coco").glob("validation-*"))
    image_ids = sorted(int(path.stem) for path in (validation / "images").glob("*.png"))[: args.num_shown]
    paths = [validation / "images" / f"{image_id:06d}.png" for image_id in image_ids]
    from PIL import Image

    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    truths = detection.scene_truths(validation / "instances.json", image_ids)
    predictions = detection.pipeline_predictions(model_dir, paths, threshold=args.threshold)
    params = sum(np.prod(shape) for shape in parameter_shapes(model_dir))
    box, mask = results["bbox"], results["segm"]
    header = [
        f"PaCa-ViT Mask R-CNN ({params / 1e6:.1f}M parameters; PaCa-Tiny's layout, narrower) trained FROM SCRATCH "
        f"on the CPU: {results['train_steps']} steps x {s['per_device_train_batch_size']} images, "
        f"{train_minutes:.1f} min.",
        f"{results['num_train_images']} synthetic {s['image_size']}px scenes. On {results['num_eval_images']} "
        f"held-out "
        f"scenes (pycocotools): box AP {box['AP']:.3f} (AP50 {box['AP50']:.3f}), mask AP {mask['AP']:.3f} (AP50 "
        f"{mask['AP50']:.3f}).",
        f"Rows: held-out scenes; predictions of pipeline('object-detection') scored above {args.threshold} with the "
        f"processor's masks. Toy data, short schedule: nothing about COCO.",
    ]
    picture = detection.render_detections(images, truths, predictions, header)
    picture_path = output_dir / "predictions.png"
    with atomic_file(picture_path, "wb") as handle:
        picture.save(handle, format="PNG")
    print(
        f"box AP {box['AP']:.4f} (AP50 {box['AP50']:.4f}, AP75 {box['AP75']:.4f}), mask AP {mask['AP']:.4f} "
        f"(AP50 {mask['AP50']:.4f}, AP75 {mask['AP75']:.4f}) on {results['num_eval_images']} held-out scenes"
    )
    print(f"final training loss {results['train_loss']:.4f}")
    print(f"model and image processor: {_shown(model_dir)}")
    print(f"picture: {_shown(picture_path)}")
    print(f"minutes: {train_minutes:.1f} training + evaluation, {(time.time() - started) / 60.0:.1f} in all")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--task",
        choices=["segmentation", "detection"],
        default="segmentation",
        help="segmentation: `make demo`; detection: `make demo-detection` (Mask R-CNN)",
    )
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="default: outputs/demo (segmentation), outputs/demo-detection (detection)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help=f"default: {DEMO_SETTINGS['max_train_steps']} (segmentation), 12 epochs (detection)",
    )
    parser.add_argument("--threshold", type=float, default=0.3, help="detection: score threshold of the picture")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on <= 2 cores)")
    parser.add_argument("--num_shown", type=int, default=6, help="validation scenes in the picture")
    parser.add_argument("--skip_parity", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.task == "detection":
        return detection_demo(args)
    if args.output_dir is None:
        args.output_dir = DEFAULT_OUTPUT
    if args.max_train_steps is None:
        args.max_train_steps = DEMO_SETTINGS["max_train_steps"]
    started = time.time()

    if not args.skip_parity:
        print(parity_line(), flush=True)

    model_dir = args.output_dir / "model"
    settings = {"max_train_steps": args.max_train_steps}
    print(
        f"fine-tuning a {sum(DEMO_MODEL['depths'])}-block PaCa-ViT from scratch on "
        f"{DEMO_SETTINGS['num_train_images']} synthetic scenes ({DEMO_SETTINGS['image_size']}px, {args.max_train_steps} steps of "
        f"{DEMO_SETTINGS['per_device_train_batch_size']} images) on the CPU ...",
        flush=True,
    )
    results, train_minutes = run_finetune(model_dir, args.seed, settings, args.threads)

    # The pipeline on every scene the fine-tune evaluated on, so that its mIoU and the evaluation's are comparable.
    images, truths = shown_scenes(results["num_eval_images"])
    predictions = pipeline_predictions(model_dir, images)
    config = json.loads((model_dir / "config.json").read_text())
    id2label = {int(k): v for k, v in config["id2label"].items()}

    from paca_hf.metrics import load_metric

    deployed = load_metric("mean_iou", keep_in_memory=True).compute(
        predictions=predictions, references=truths, num_labels=len(id2label), ignore_index=255
    )
    total_minutes = (time.time() - started) / 60.0
    params = sum(np.prod(shape) for shape in parameter_shapes(model_dir))
    s = DEMO_SETTINGS
    header = [
        f"PaCa-ViT + PaCa head ({params / 1e6:.1f}M parameters; PaCa-Tiny's layout, narrower) trained FROM SCRATCH on "
        f"the CPU: {results['train_steps']} steps x {s['per_device_train_batch_size']} images, {train_minutes:.1f} min.",
        f"{results['num_train_images']} synthetic {s['image_size']}px scenes (the shape decides the class). Validation "
        f"mIoU {results['eval_mean_iou']:.3f} over the 5 shapes on {results['num_eval_images']} held-out scenes "
        f"('other' not scored, as in ADE20k).",
        f"Rows: held-out validation scenes through pipeline('image-segmentation') (mIoU "
        f"{deployed['mean_iou']:.3f} on the same {len(images)} scenes). Toy data, short schedule: this says nothing "
        f"about ADE20k.",
    ]
    shown = slice(0, args.num_shown)
    picture = render_grid(images[shown], truths[shown], predictions[shown], id2label, header)
    picture_path = args.output_dir / "predictions.png"
    with atomic_file(picture_path, "wb") as handle:
        picture.save(handle, format="PNG")

    print(
        f"validation mIoU {results['eval_mean_iou']:.4f} (mean accuracy {results['eval_mean_accuracy']:.4f}, "
        f"overall accuracy {results['eval_overall_accuracy']:.4f}) on {results['num_eval_images']} held-out scenes"
    )
    per_class = results.get("eval_per_category_iou", {})
    print("per-class IoU: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in per_class.items()))
    print(
        f"pipeline('image-segmentation') with the saved model on the same {len(images)} scenes: mIoU "
        f"{deployed['mean_iou']:.4f}"
    )
    if args.max_train_steps == DEMO_SETTINGS["max_train_steps"]:
        print(miou_verdict(results["eval_mean_iou"], args.threads or default_threads()))
    else:
        print(
            f"no expected range for {args.max_train_steps} steps (the README's is for "
            f"{DEMO_SETTINGS['max_train_steps']})"
        )
    print(f"model and image processor: {model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir}")
    print(f"picture: {picture_path.relative_to(ROOT) if picture_path.is_relative_to(ROOT) else picture_path}")
    print(f"minutes: {train_minutes:.1f} fine-tuning + evaluation, {total_minutes:.1f} in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
