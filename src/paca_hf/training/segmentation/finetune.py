"""The ADE20k fine-tune (`scripts/finetune_ade20k.py`) as a library: `parse_args(argv)` and `main(argv)`.

Fine-tunes PaCa-ViT with the PaCa segmentation head on ADE20k (or any `image` / `annotation` dataset) with
accelerate, following the authors' recipe (mmseg `pacahead_*_512x512_160k_ade20k`):

    AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01, none on norms; lr x10 on the decode head and on the
    backbone's clustering output layers (`to_clusters`); linear warm-up over 1500 steps from a factor 1e-6, then
    poly (power 1) to 0 at 160k steps; 16 images per step (2 per GPU x 8 GPUs); 512x512 crops with mmseg's ADE20k
    augmentation; cross-entropy averaged over the non-ignored pixels (`avg_non_ignore=True` in the authors'
    `configs/_base_/models/paca_head.py`; `--no-avg_non_ignore` for mmseg's default, all pixels); whole-image
    evaluation, mIoU.

The loop follows transformers' `run_semantic_segmentation_no_trainer.py` (same flag names); gradient accumulation
is accelerate's (`accelerator.accumulate`). Outputs in `--output_dir`: `all_results.json` (`eval_mean_iou`, ...),
`init_report.json`, the model (safetensors), its image processor, checkpoints `step_N` / `epoch_N` with a
`COMPLETE` marker.
"""

import logging
import time
from pathlib import Path

import torch

from ..checkpoint import (
    TrainingState,
)
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
from ..scheduler import PolyWithWarmup, make_scheduler, warmup_warning
from ..throughput import DataWaitMeter
from .arguments import parse_args
from .augmentation import SegmentationTrainAugment
from .data import collate_segmentation, load_segmentation_splits, resolve_id2label
from .evaluation import evaluate_segmentation, metrics_to_json
from .model import build_model, recipe_image_processor, segmentation_loss


logger = logging.getLogger(__name__)

# Settings that an exact resume needs unchanged (a resume with others is warned about).
RESUME_SENSITIVE_SETTINGS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_processes",
    "seed",
    "num_train_images",
    "learning_rate",
    "avg_non_ignore",
)


def main(argv=None) -> dict:
    """Run the fine-tune with the command-line arguments `argv` (default `sys.argv[1:]`); returns the results (also
    written to OUTPUT_DIR/all_results.json), or `{"stopped_at_step": N, "latest_checkpoint_step": M, ...}` with
    `--stop_after_step` (M: the step `--resume_from_checkpoint latest` restarts from, 0 without a checkpoint; on the
    main process). Raises `TrainingError` (`CheckpointError`, `NonFiniteError`) when the run cannot go on."""
    return run_with_accelerator(parse_args(argv), run)


def _write_outputs(args, accelerator, model, image_processor, results, init_report, pairs) -> None:
    def write_predictions(output_dir: Path) -> None:
        import numpy as np

        arrays = {}
        for index, (prediction, reference) in enumerate(pairs):
            arrays[f"prediction_{index}"] = prediction
            arrays[f"reference_{index}"] = reference
        np.savez_compressed(output_dir / "eval_predictions.npz", **arrays)

    write_final_outputs(
        args,
        accelerator,
        model,
        image_processor,
        {"init_report.json": init_report.to_dict(), "all_results.json": results},
        write_extra=write_predictions if pairs is not None else None,
    )


def run(args, accelerator) -> dict:
    """The fine-tune of `main` with parsed `args` on a ready `accelerator`."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    started = time.time()
    output_dir = Path(args.output_dir)
    logger.info("%s", accelerator.state)
    short_run = warmup_warning(
        args.num_warmup_steps, args.max_train_steps, args.learning_rate, args.warmup_start_factor, args.poly_power
    )
    if short_run is not None:
        logger.warning(short_run)

    resume_dir, resume_marker = resolve_resume(args)  # before anything is written: a bad one stops the run here

    set_seed(args.seed)

    with accelerator.main_process_first():
        train_dataset, eval_dataset = load_segmentation_splits(
            args.dataset_name,
            args.dataset_config_name,
            args.train_val_split,
            args.seed,
            args.num_train_images,
            args.num_eval_images,
            args.builtin_image_size,
            args.cache_dir,
            args.trust_remote_code,
        )
    id2label = resolve_id2label(args.dataset_name, args.reduce_labels, train_dataset, args.id2label_file)
    num_labels = len(id2label)
    logger.info(
        "Data: %d training and %d evaluation images, %d classes (reduce_labels=%s).",
        len(train_dataset),
        len(eval_dataset),
        num_labels,
        args.reduce_labels,
    )

    overrides = {} if args.drop_path_rate is None else {"drop_path_rate": args.drop_path_rate}
    model, init_report = build_model(
        id2label, args.model_name_or_path, args.config_name, args.num_clusters, overrides, args.cache_dir
    )
    logger.info("%s", init_report.summary())
    model = maybe_sync_batchnorm(model, accelerator)

    groups = param_groups(
        model, args.learning_rate, args.weight_decay, args.head_lr_mult, args.clustering_lr_mult, args.norm_decay_mult
    )
    logger.info("Parameter groups:\n%s", describe_param_groups(groups))
    optimizer = make_adamw(groups, args)
    # Not prepared: accelerate would step it once per process; it is stepped once per optimiser step below.
    scheduler = make_scheduler(
        optimizer, args.num_warmup_steps, args.max_train_steps, args.warmup_start_factor, args.poly_power
    )

    sampler = EpochSampler(len(train_dataset), seed=args.seed)
    # Dedicated generators: creating loader iterators must not draw from the global RNG (dropout's).
    train_loader = DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_segmentation,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = DataLoader(
        eval_dataset,
        batch_size=args.per_device_eval_batch_size,
        shuffle=False,
        collate_fn=collate_segmentation,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    state = TrainingState(args.seed, accelerator.process_index, accelerator.num_processes)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(state)

    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0 and args.max_train_steps > 0:
        raise TrainingError(
            f"{len(train_dataset)} training images make no full batch of {args.per_device_train_batch_size} per "
            f"process on {accelerator.num_processes} process(es)."
        )
    accumulation = args.gradient_accumulation_steps
    effective_batch = args.per_device_train_batch_size * accelerator.num_processes * accumulation
    logger.info(
        "Effective batch: %d per device x %d process(es) x %d accumulation = %d images per step (the authors: 2 x 8 "
        "GPUs = 16). %d steps, %d batches per epoch per process.",
        args.per_device_train_batch_size,
        accelerator.num_processes,
        accumulation,
        effective_batch,
        args.max_train_steps,
        batches_per_epoch,
    )

    augment = SegmentationTrainAugment(
        crop_size=(args.crop_size, args.crop_size),
        scale=args.resize_scale,
        reduce_zero_label=args.reduce_labels,
        ignore_index=255,
    )
    # Evaluated through the processor saved with the model: the figures are those of the deployed model.
    image_processor = recipe_image_processor(args.resize_scale, args.reduce_labels)

    run_info = {
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": accumulation,
        "num_processes": accelerator.num_processes,
        "seed": args.seed,
        "num_train_images": len(train_dataset),
        "max_train_steps": args.max_train_steps,
        "num_warmup_steps": args.num_warmup_steps,
        "learning_rate": args.learning_rate,
        "avg_non_ignore": args.avg_non_ignore,
    }
    if resume_dir is not None:
        schedule = PolyWithWarmup(
            args.num_warmup_steps, args.max_train_steps, args.warmup_start_factor, args.poly_power
        )
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
        accelerator.init_trackers("finetune_ade20k", tracker_config(args))

    def run_eval(keep_predictions=False):
        return evaluate_segmentation(
            model,
            eval_loader,
            accelerator,
            image_processor,
            num_labels,
            args.reduce_labels,
            255,
            keep_predictions=keep_predictions,
            disable_progress=args.disable_tqdm or not accelerator.is_main_process,
        )

    target = args.max_train_steps if args.stop_after_step is None else min(args.max_train_steps, args.stop_after_step)
    epoch, batches_in_epoch = resume_position(completed_steps, accumulation, batches_per_epoch)
    stream = batch_stream(train_loader, sampler, epoch, batches_in_epoch, accelerator.skip_first_batches)
    progress = tqdm(
        total=args.max_train_steps,
        initial=completed_steps,
        desc="train",
        disable=args.disable_tqdm or not accelerator.is_main_process,
    )

    def prepare(batch):
        return augment(batch["images"], batch["labels"], generator=state.generator, device=accelerator.device)

    def forward(inputs):
        loss, _ = segmentation_loss(model, *inputs, 255, args.avg_non_ignore)
        return loss, loss.reshape(1)

    model.train()
    running_loss, running_count, last_loss = 0.0, 0, None
    data_wait = DataWaitMeter()
    while completed_steps < target:
        epoch, step_loss = accumulated_step(
            accelerator, model, optimizer, scheduler, stream, data_wait, args, completed_steps + 1, prepare, forward
        )
        completed_steps += 1
        state.step = completed_steps
        progress.update(1)

        loss_value = accelerator.gather(step_loss).mean().item()
        last_loss = loss_value
        running_loss += loss_value
        running_count += 1
        data_wait.step_done()
        if completed_steps % max(args.logging_steps, 1) == 0 or completed_steps == target:
            lr = base_learning_rate(optimizer)
            logger.info(
                "step %d/%d  loss %.4f  lr %.3g  epoch %d",
                completed_steps,
                args.max_train_steps,
                running_loss / running_count,
                lr,
                epoch,
            )
            progress.set_postfix(loss=f"{running_loss / running_count:.3f}")
            if args.with_tracking:
                accelerator.log({"train_loss": running_loss / running_count, "lr": lr}, step=completed_steps)
            running_loss, running_count = 0.0, 0

        if args.eval_steps and completed_steps % args.eval_steps == 0 and completed_steps < args.max_train_steps:
            metrics, _ = run_eval()
            logger.info("step %d: eval mIoU %.4f", completed_steps, metrics["mean_iou"])
            if args.with_tracking:
                accelerator.log({"eval_mean_iou": metrics["mean_iou"]}, step=completed_steps)
        name = checkpoint_due(args.checkpointing_steps, completed_steps, accumulation, batches_per_epoch)
        if name is not None:
            save_run_checkpoint(accelerator, model, state, name, args, completed_steps, batches_per_epoch, run_info)
    progress.close()
    logger.info("%s", data_wait.describe(args.num_workers))

    if completed_steps < args.max_train_steps:
        return stopped_run_report(accelerator, output_dir, completed_steps, args.max_train_steps, resume_dir)

    check_finite_parameters(model, completed_steps, "final model", accelerator)
    metrics, pairs = run_eval(keep_predictions=args.save_predictions)
    results = metrics_to_json(metrics, id2label)
    results.update(
        {
            "train_steps": completed_steps,
            "train_loss": last_loss,
            "effective_batch_size": effective_batch,
            "num_train_images": len(train_dataset),
            "num_eval_images": len(eval_dataset),
            "train_runtime_s": round(time.time() - started, 2),
            "resumed_from": str(resume_dir) if resume_dir else None,
            "num_processes": accelerator.num_processes,
            "avg_non_ignore": args.avg_non_ignore,
            "data_wait_fraction": data_wait.summary()["data_wait_fraction"],
        }
    )
    logger.info(
        "Evaluation: mIoU %.4f, mean accuracy %.4f, overall accuracy %.4f",
        metrics["mean_iou"],
        metrics["mean_accuracy"],
        metrics["overall_accuracy"],
    )
    if args.with_tracking:
        accelerator.log({k: v for k, v in results.items() if isinstance(v, (int, float))}, step=completed_steps)

    accelerator.wait_for_everyone()
    _write_outputs(args, accelerator, model, image_processor, results, init_report, pairs)
    accelerator.wait_for_everyone()
    results["output_dir"] = str(output_dir)
    return results


def cli(argv=None) -> int:
    """`main`, with a `TrainingError` logged as one line and exit status 1."""
    try:
        main(argv)
    except TrainingError as error:
        logger.error("%s", error)
        return 1
    return 0
