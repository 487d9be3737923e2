"""The COCO fine-tune (`scripts/finetune_coco.py`) as a library: `parse_args(argv)` and `main(argv)`.

Fine-tunes `PaCaViTMaskRCNNForInstanceSegmentation` on COCO-format data (or the built-in instance scenes) with
accelerate, following the authors' Mask R-CNN 1x recipe (PaCaViT `detection/configs/paca_vit/mask_rcnn_1x/
mask_rcnn_pacavit_*_mstrain_480_800_1x_coco.py` and `detection/configs/_base_/schedules/schedule_1x.py`):

    AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, none on norms (`paramwise_cfg` 'norm' decay_mult 0);
    12 epochs, lr x0.1 at the start of epochs 8 and 11 (`MultiStepLR`), linear warm-up over the first 500
    iterations from a factor 0.001 (`LinearLR`); 16 images per step (2 per GPU x 8 GPUs); random horizontal flip 0.5
    and a keep-ratio resize whose short edge is one of 480, 512, ..., 800 (long edge <= 1333), half of the time after
    DETR's resize to 400 / 500 / 600 and random crop of 384-600 px (`augmentation`); evaluation at
    (1333, 800) with COCO's box and mask AP (pycocotools).

The run itself is the ADE20k fine-tune's (`paca_hf.training.runner`, `checkpoint`, `sampling`, `optim`,
`scheduler`): the same flags where they mean the same thing, `COMPLETE`-marked checkpoints and exact resume, a stop
at the first non-finite loss, one writer per file. Outputs in `--output_dir`: `all_results.json` (`bbox` and `segm`:
AP, AP50, AP75, APs, APm, APl; `eval_bbox_AP`, `eval_segm_AP`, ...), `init_report.json`, the model (safetensors),
its image processor, checkpoints `step_N` / `epoch_N`.
"""

import logging
import time
from pathlib import Path

import torch

from ..checkpoint import TrainingState
from ..errors import TrainingError, check_finite_parameters
from ..optim import describe_param_groups, param_groups
from ..runner import (
    accumulated_step,
    base_learning_rate,
    checkpoint_due,
    make_adamw,
    maybe_sync_batchnorm,
    resolve_resume,
    resume_position,
    resume_training,
    run_with_accelerator,
    save_run_checkpoint,
    stopped_run_report,
    tracker_config,
    write_final_outputs,
)
from ..sampling import EpochSampler, batch_stream
from ..scheduler import MultiStepWithWarmup, whole_run_warmup_warning
from ..throughput import DataWaitMeter
from .arguments import parse_args
from .augmentation import DetectionTrainAugment
from .data import CocoInstanceDataset, builtin_scene_folders, collate_instances, load_coco_split, resolve_id2label
from .evaluation import METRIC_NAMES, category_ids_by_label, coco_results, evaluate_coco_results, predict_coco_images
from .model import build_detector, recipe_image_processor, source_id2label


logger = logging.getLogger(__name__)

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")
# Settings that an exact resume needs unchanged (a resume with others is warned about).
RESUME_SENSITIVE_SETTINGS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_processes",
    "seed",
    "num_train_images",
    "learning_rate",
    "train_short_edges",
    "flip_prob",
    "detr_crop_prob",
)


def main(argv=None) -> dict:
    """Run the fine-tune with the command-line arguments `argv` (default `sys.argv[1:]`); returns the results (also
    written to OUTPUT_DIR/all_results.json on the main process), or `{"stopped_at_step": N,
    "latest_checkpoint_step": M, ...}` with `--stop_after_step`. Raises `TrainingError` (`CheckpointError`,
    `NonFiniteError`) when the run cannot go on, `ValueError` naming the annotation, image or file for bad data."""
    return run_with_accelerator(parse_args(argv), run)


def evaluate_detector(
    model, accelerator, image_processor, coco, images_dir, batch_size: int, disable_progress: bool = True
) -> dict:
    """COCO box and mask AP of the (possibly wrapped) `model` on a split, as the saved model deploys: its image
    processor, `predict_coco_images`, pycocotools. Computed by the global main process (the others get `{}`) and
    waited for by all; the model is back in training mode afterwards."""
    metrics = {}
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
        model.eval()
        try:
            predictions = predict_coco_images(
                model,
                image_processor,
                coco,
                images_dir,
                batch_size=batch_size,
                device=accelerator.device,
                disable_progress=disable_progress,
            )
            metrics = evaluate_coco_results(coco, coco_results(predictions, coco, model.config.id2label))
        finally:
            model.train()
    accelerator.wait_for_everyone()
    return metrics


def metrics_to_json(metrics: dict) -> dict:
    """`{"bbox": {...}, "segm": {...}}` of `evaluate_coco_results` plus flat `eval_{type}_{metric}` keys (trackers)."""
    flat = {f"eval_{iou_type}_{name}": values[name] for iou_type, values in metrics.items() for name in METRIC_NAMES}
    return {**metrics, **flat}


def lr_milestones(decay_epochs, num_epochs: int, steps_per_epoch: int, max_train_steps: int | None = None) -> list:
    """The optimiser steps at which the learning rate steps down: the start of each epoch of `decay_epochs`
    (`epoch x steps_per_epoch`); with `max_train_steps` (a run measured in steps), the same fractions of the run
    (`round(epoch / num_epochs x max_train_steps)`: 8/12 and 11/12 with the defaults)."""
    if max_train_steps is None:
        return [epoch * steps_per_epoch for epoch in decay_epochs]
    return [round(epoch * max_train_steps / num_epochs) for epoch in decay_epochs]


def run(args, accelerator) -> dict:
    """The fine-tune of `main` with parsed `args` on a ready `accelerator`."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    started = time.time()
    output_dir = Path(args.output_dir)
    logger.info("%s", accelerator.state)

    resume_dir, resume_marker = resolve_resume(args)  # before anything is written: a bad one stops the run here

    set_seed(args.seed)
    with accelerator.main_process_first():
        if args.dataset_name is not None:
            folders = builtin_scene_folders(
                output_dir, args.num_train_images, args.num_eval_images, args.builtin_image_size, seed=args.seed
            )
        else:
            folders = (args.train_annotations, args.train_images, args.validation_annotations, args.validation_images)
        train_coco, train_files = load_coco_split(
            folders[0], folders[1], args.num_train_images, args.skip_invalid_annotations
        )
        eval_coco, _ = load_coco_split(folders[2], folders[3], args.num_eval_images, args.skip_invalid_annotations)
    id2label = resolve_id2label(train_coco, source_id2label(args.model_name_or_path, args.cache_dir))
    try:  # the final evaluation matches labels to the validation categories by name: fail now, not after training
        category_ids_by_label(id2label, eval_coco)
    except ValueError as error:
        raise ValueError(f"{folders[2]}: {error}") from None
    train_dataset = CocoInstanceDataset(train_coco, train_files, id2label)
    logger.info(
        "Data: %s; evaluation: %d images; %d classes.",
        train_dataset.describe("training"),
        len(eval_coco.imgs),
        len(id2label),
    )

    model, init_report = build_detector(
        id2label, args.model_name_or_path, args.config_name, args.drop_path_rate, args.cache_dir
    )
    logger.info("%s", init_report.summary())
    model = maybe_sync_batchnorm(model, accelerator)
    groups = param_groups(
        model,
        args.learning_rate,
        args.weight_decay,
        head_lr_mult=1.0,
        clustering_lr_mult=1.0,
        norm_decay_mult=args.norm_decay_mult,
    )
    logger.info("Parameter groups:\n%s", describe_param_groups(groups))
    optimizer = make_adamw(groups, args)

    sampler = EpochSampler(len(train_dataset), seed=args.seed)
    # Dedicated generators: creating loader iterators must not draw from the global RNG (the samplers' and
    # drop-path's).
    train_loader = DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_instances,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    batches_per_epoch = len(train_loader)
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = max(batches_per_epoch // accumulation, 1)
    max_train_steps = (
        args.max_train_steps if args.max_train_steps is not None else (args.num_train_epochs * steps_per_epoch)
    )
    if batches_per_epoch == 0 and max_train_steps > 0:
        raise TrainingError(
            f"{len(train_dataset)} training images make no full batch of {args.per_device_train_batch_size} per "
            f"process on {accelerator.num_processes} process(es)."
        )
    milestones = lr_milestones(args.lr_decay_epochs, args.num_train_epochs, steps_per_epoch, args.max_train_steps)
    schedule = MultiStepWithWarmup(args.num_warmup_steps, milestones, args.warmup_start_factor, args.lr_decay_factor)
    # Not prepared: accelerate would step it once per process; it is stepped once per optimiser step below.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    short_run = whole_run_warmup_warning(
        args.num_warmup_steps,
        max_train_steps,
        args.learning_rate,
        schedule,
        warmup=f"--num_warmup_steps {args.num_warmup_steps}",
        run=f"the run's {max_train_steps} steps",
        where="at the last step",
        advice="Lower --num_warmup_steps for a short run.",
    )
    if short_run is not None:
        logger.warning(short_run)
    effective_batch = args.per_device_train_batch_size * accelerator.num_processes * accumulation
    logger.info(
        "Effective batch: %d per device x %d process(es) x %d accumulation = %d images per step (the authors: 2 x 8 "
        "GPUs = 16). %d steps (%d per epoch), lr x%g at steps %s, warm-up %d steps.",
        args.per_device_train_batch_size,
        accelerator.num_processes,
        accumulation,
        effective_batch,
        max_train_steps,
        steps_per_epoch,
        args.lr_decay_factor,
        milestones,
        args.num_warmup_steps,
    )

    state = TrainingState(args.seed, accelerator.process_index, accelerator.num_processes)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(state)
    augment = DetectionTrainAugment(
        args.train_short_edges,
        max(args.resize_scale),
        args.flip_prob,
        crop_prob=args.detr_crop_prob,
        crop_short_edges=args.detr_crop_short_edges,
        crop_size_range=args.detr_crop_size,
    )
    image_processor = recipe_image_processor(args.resize_scale)

    run_info = {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": accumulation,
        "num_processes": accelerator.num_processes,
        "seed": args.seed,
        "num_train_images": len(train_dataset),
        "max_train_steps": max_train_steps,
        "num_warmup_steps": args.num_warmup_steps,
        "learning_rate": args.learning_rate,
        "train_short_edges": list(args.train_short_edges),
        "flip_prob": args.flip_prob,
        "detr_crop_prob": args.detr_crop_prob,
    }
    if resume_dir is not None:
        resume_training(
            accelerator,
            resume_dir,
            resume_marker,
            run_info,
            RESUME_SENSITIVE_SETTINGS,
            scheduler,
            optimizer,
            schedule,
            state,
        )
    completed_steps = state.step

    if args.with_tracking:
        accelerator.init_trackers("finetune_coco", tracker_config(args))

    def run_eval() -> dict:
        return evaluate_detector(
            model,
            accelerator,
            image_processor,
            eval_coco,
            folders[3],
            args.per_device_eval_batch_size,
            args.disable_tqdm,
        )

    target = max_train_steps if args.stop_after_step is None else min(max_train_steps, args.stop_after_step)
    epoch, batches_in_epoch = resume_position(completed_steps, accumulation, batches_per_epoch)
    stream = batch_stream(train_loader, sampler, epoch, batches_in_epoch, accelerator.skip_first_batches)
    progress = tqdm(
        total=max_train_steps,
        initial=completed_steps,
        desc="train",
        disable=args.disable_tqdm or not accelerator.is_main_process,
    )

    def prepare(batch):
        return augment(batch, generator=state.generator, device=accelerator.device)

    def forward(inputs):
        pixel_values, image_sizes, labels = inputs
        outputs = model(pixel_values=pixel_values, image_sizes=image_sizes, labels=labels)
        return outputs.loss, torch.stack([outputs.loss, *(outputs[name] for name in LOSS_NAMES)])

    model.train()
    running = {}
    last_losses = None
    data_wait = DataWaitMeter()
    while completed_steps < target:
        epoch, step_losses = accumulated_step(
            accelerator, model, optimizer, scheduler, stream, data_wait, args, completed_steps + 1, prepare, forward
        )
        completed_steps += 1
        state.step = completed_steps
        progress.update(1)

        values = accelerator.gather(step_losses[None]).mean(0).tolist()
        last_losses = dict(zip(("loss", *LOSS_NAMES), values))
        for name, value in last_losses.items():
            running[name] = running.get(name, 0.0) + value
        running["count"] = running.get("count", 0) + 1
        data_wait.step_done()
        if completed_steps % max(args.logging_steps, 1) == 0 or completed_steps == target:
            count = running.pop("count")
            means = {name: total / count for name, total in running.items()}
            lr = base_learning_rate(optimizer)
            logger.info(
                "step %d/%d  %s  lr %.3g  epoch %d",
                completed_steps,
                max_train_steps,
                "  ".join(f"{name} {value:.4f}" for name, value in means.items()),
                lr,
                epoch,
            )
            progress.set_postfix(loss=f"{means['loss']:.3f}")
            if args.with_tracking:
                accelerator.log(
                    {**{f"train_{name}": value for name, value in means.items()}, "lr": lr}, step=completed_steps
                )
            running = {}

        if args.eval_steps and completed_steps % args.eval_steps == 0 and completed_steps < max_train_steps:
            metrics = run_eval()
            if metrics:
                logger.info(
                    "step %d: eval box AP %.4f, mask AP %.4f",
                    completed_steps,
                    metrics["bbox"]["AP"],
                    metrics["segm"]["AP"],
                )
                if args.with_tracking:
                    accelerator.log(metrics_to_json(metrics), step=completed_steps)
        name = checkpoint_due(args.checkpointing_steps, completed_steps, accumulation, batches_per_epoch)
        if name is not None:
            save_run_checkpoint(accelerator, model, state, name, args, completed_steps, batches_per_epoch, run_info)
    progress.close()
    logger.info("%s", data_wait.describe(args.num_workers))

    if completed_steps < max_train_steps:
        return stopped_run_report(accelerator, output_dir, completed_steps, max_train_steps, resume_dir)

    check_finite_parameters(model, completed_steps, "final model", accelerator)
    metrics = run_eval()
    results = metrics_to_json(metrics) if metrics else {}
    results.update(
        {
            "train_steps": completed_steps,
            "train_loss": None if last_losses is None else last_losses["loss"],
            "train_losses": last_losses,
            "effective_batch_size": effective_batch,
            "num_train_images": len(train_dataset),
            "num_skipped_train_images": len(train_dataset.skipped_empty),
            "num_eval_images": len(eval_coco.imgs),
            "train_runtime_s": round(time.time() - started, 2),
            "resumed_from": str(resume_dir) if resume_dir else None,
            "num_processes": accelerator.num_processes,
            "data_wait_fraction": data_wait.summary()["data_wait_fraction"],
        }
    )
    if metrics:
        logger.info(
            "Evaluation: box AP %.4f (AP50 %.4f), mask AP %.4f (AP50 %.4f)",
            metrics["bbox"]["AP"],
            metrics["bbox"]["AP50"],
            metrics["segm"]["AP"],
            metrics["segm"]["AP50"],
        )
    if args.with_tracking:
        accelerator.log({k: v for k, v in results.items() if isinstance(v, (int, float))}, step=completed_steps)

    accelerator.wait_for_everyone()
    write_final_outputs(
        args,
        accelerator,
        model,
        image_processor,
        {"init_report.json": init_report.to_dict(), "all_results.json": results},
    )
    accelerator.wait_for_everyone()
    results["output_dir"] = str(output_dir)
    return results


def cli(argv=None) -> int:
    """`main`, with a `TrainingError` or bad data (`ValueError`) logged as one line and exit status 1."""
    try:
        main(argv)
    except (TrainingError, ValueError) as error:
        logger.error("%s", error)
        return 1
    return 0
