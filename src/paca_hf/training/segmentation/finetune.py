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
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ...file_utils import fsync_dir, fsync_file, give_normal_permissions, write_json_atomically
from ..checkpoint import (
    TrainingState,
    find_latest_checkpoint,
    load_checkpoint,
    resolve_resume_checkpoint,
    save_checkpoint,
    verify_checkpoint,
    weight_checksums,
)
from ..distributed import check_fsdp_device, check_launch, distributed_on_cpu
from ..errors import TrainingError, check_finite_loss, check_finite_parameters
from ..optim import describe_param_groups, param_groups
from ..scheduler import PolyWithWarmup, make_scheduler, warmup_warning
from ..throughput import DataWaitMeter
from .arguments import parse_args
from .augmentation import SegmentationTrainAugment
from .data import EpochSampler, batch_stream, collate_segmentation, load_segmentation_splits, resolve_id2label
from .evaluation import evaluate_segmentation, metrics_to_json
from .model import build_model, maybe_sync_batchnorm, recipe_image_processor, segmentation_loss

logger = logging.getLogger(__name__)


def make_accelerator(args):
    """The run's `Accelerator`: accumulation over `--gradient_accumulation_steps` batches, CPU when asked (or when
    launched distributed on a machine without GPUs), trackers with `--with_tracking`. Raises `TrainingError` for
    a launch that would start independent runs on several machines (`distributed.check_launch`)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    check_launch()
    cpu = args.cpu or distributed_on_cpu()
    check_fsdp_device(cpu)
    kwargs = {}
    if args.with_tracking:
        kwargs["log_with"] = args.report_to
    # A step is always `gradient_accumulation_steps` batches, also across an epoch's end (the stream of batches
    # is endless), so that checkpoints fall on step boundaries and a resumed run sees the same batches.
    accumulation = GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False)
    return Accelerator(
        cpu=cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_plugin=accumulation,
        project_config=ProjectConfiguration(project_dir=args.output_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.find_unused_parameters)],
        **kwargs,
    )


def setup_logging(accelerator) -> None:
    import datasets
    import transformers

    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # The global main process only: with several machines, every machine's first process would log it again.
    level = logging.INFO if accelerator.is_main_process else logging.ERROR
    logging.getLogger("paca_hf.training").setLevel(level)
    if accelerator.is_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    # DDP on CPU warns once per process about the depthwise convolutions' gradient layout (harmless).
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def save_final(accelerator, model, image_processor, output_dir: Path, state_dict: dict | None = None) -> None:
    """Model (safetensors) and image processor into `output_dir` (which also holds the checkpoints): written to a
    temporary folder there first, flushed, then each file moved into place (weights before config). Only the global
    main process writes. `state_dict` is the full one from `accelerator.get_state_dict(model)`, which is a
    collective under FSDP (every process holds a shard): call that on every process and pass it here."""
    if state_dict is None:
        state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-final-", dir=output_dir))
    try:
        # A copy: save_pretrained empties the dict it is given (it pops each tensor into its shard).
        accelerator.unwrap_model(model).save_pretrained(
            tmp, state_dict=dict(state_dict), safe_serialization=True, save_function=accelerator.save
        )
        image_processor.save_pretrained(tmp)
        give_normal_permissions(tmp)
        for name in sorted((p.name for p in tmp.iterdir()), key=lambda n: (n.endswith(".json"), n)):
            fsync_file(tmp / name)
            os.replace(tmp / name, output_dir / name)
        fsync_dir(output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _reset_accelerate_state(accelerator) -> None:
    """Let `main` run again in the same (non-distributed) process, e.g. from tests or the demo, possibly with other
    accelerate settings (accelerate keeps its state in process-wide singletons)."""
    if accelerator.num_processes > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def main(argv=None) -> dict:
    """Run the fine-tune with the command-line arguments `argv` (default `sys.argv[1:]`); returns the results (also
    written to OUTPUT_DIR/all_results.json), or `{"stopped_at_step": N, "latest_checkpoint_step": M, ...}` with
    `--stop_after_step` (M: the step `--resume_from_checkpoint latest` restarts from, 0 without a checkpoint; on the
    main process). Raises `TrainingError` (`CheckpointError`, `NonFiniteError`) when the run cannot go on."""
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    setup_logging(accelerator)
    try:
        return run(args, accelerator)
    finally:
        if args.with_tracking:
            accelerator.end_training()
        accelerator.free_memory()
        _reset_accelerate_state(accelerator)


def _follow_this_runs_schedule(args, scheduler, optimizer, step: int) -> None:
    """`LambdaLR` restores its schedule's settings from the checkpoint; continue with this run's flags instead."""
    schedule = PolyWithWarmup(args.num_warmup_steps, args.max_train_steps, args.warmup_start_factor, args.poly_power)
    if scheduler.lr_lambdas[0].__dict__ != schedule.__dict__:
        logger.warning("The schedule differs from the checkpoint's (%s); continuing with %s.",
                       scheduler.lr_lambdas[0].__dict__, schedule.__dict__)
        for fn in scheduler.lr_lambdas:
            fn.__dict__.update(schedule.__dict__)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * schedule(step)


def _warn_about_run_differences(saved_run: dict, current: dict) -> None:
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_processes", "seed",
                "num_train_images", "learning_rate", "avg_non_ignore"):
        if key in saved_run and saved_run[key] != current[key]:
            logger.warning("The checkpoint was written with %s=%s, this run has %s: the resumed run will not "
                           "match an uninterrupted one exactly.", key, saved_run[key], current[key])


def _write_outputs(args, accelerator, model, image_processor, results, init_report, pairs) -> None:
    output_dir = Path(args.output_dir)
    state_dict = accelerator.get_state_dict(model)  # every process: a collective under FSDP
    save_final(accelerator, model, image_processor, output_dir, state_dict)
    if args.debug_dump_weights:
        # The full weights this process holds (under FSDP, the main process only; the others get none).
        write_json_atomically(
            output_dir / "rank_checksums" / f"rank_{accelerator.process_index}.json",
            {"process_index": accelerator.process_index, "num_processes": accelerator.num_processes,
             "distributed_type": str(accelerator.distributed_type),
             "checksums": weight_checksums(state_dict)},
        )
    if not accelerator.is_main_process:
        return
    write_json_atomically(output_dir / "init_report.json", init_report.to_dict())
    if pairs is not None:
        import numpy as np

        arrays = {}
        for index, (prediction, reference) in enumerate(pairs):
            arrays[f"prediction_{index}"] = prediction
            arrays[f"reference_{index}"] = reference
        np.savez_compressed(output_dir / "eval_predictions.npz", **arrays)
    write_json_atomically(output_dir / "all_results.json", results)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=args.hub_token)
        repo_id = api.create_repo(args.hub_model_id, exist_ok=True).repo_id
        api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), commit_message="End of training",
                          ignore_patterns=["step_*", "epoch_*", ".*", "rank_checksums/*", "*.npz"])
        logger.info("Pushed to https://huggingface.co/%s", repo_id)


def run(args, accelerator) -> dict:
    """The fine-tune of `main` with parsed `args` on a ready `accelerator`."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    started = time.time()
    output_dir = Path(args.output_dir)
    logger.info("%s", accelerator.state)
    short_run = warmup_warning(args.num_warmup_steps, args.max_train_steps, args.learning_rate,
                               args.warmup_start_factor, args.poly_power)
    if short_run is not None:
        logger.warning(short_run)

    # Resolve the checkpoint before anything is written: a bad one stops the run here.
    resume_dir, resume_warnings = resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    for warning in resume_warnings:
        logger.warning(warning)
    resume_marker = verify_checkpoint(resume_dir, check_hashes=False) if resume_dir is not None else None

    set_seed(args.seed)

    with accelerator.main_process_first():
        train_dataset, eval_dataset = load_segmentation_splits(
            args.dataset_name, args.dataset_config_name, args.train_val_split, args.seed, args.num_train_images,
            args.num_eval_images, args.builtin_image_size, args.cache_dir, args.trust_remote_code,
        )
    id2label = resolve_id2label(args.dataset_name, args.reduce_labels, train_dataset, args.id2label_file)
    num_labels = len(id2label)
    logger.info("Data: %d training and %d evaluation images, %d classes (reduce_labels=%s).",
                len(train_dataset), len(eval_dataset), num_labels, args.reduce_labels)

    overrides = {} if args.drop_path_rate is None else {"drop_path_rate": args.drop_path_rate}
    model, init_report = build_model(
        id2label, args.model_name_or_path, args.config_name, args.num_clusters, overrides, args.cache_dir
    )
    logger.info("%s", init_report.summary())
    model = maybe_sync_batchnorm(model, accelerator)

    groups = param_groups(model, args.learning_rate, args.weight_decay, args.head_lr_mult,
                          args.clustering_lr_mult, args.norm_decay_mult)
    logger.info("Parameter groups:\n%s", describe_param_groups(groups))
    optimizer = torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )
    # Not prepared: accelerate would step it once per process; it is stepped once per optimiser step below.
    scheduler = make_scheduler(optimizer, args.num_warmup_steps, args.max_train_steps, args.warmup_start_factor,
                               args.poly_power)

    sampler = EpochSampler(len(train_dataset), seed=args.seed)
    # Dedicated generators: creating loader iterators must not draw from the global RNG (dropout's).
    train_loader = DataLoader(
        train_dataset, batch_size=args.per_device_train_batch_size, sampler=sampler, drop_last=True,
        collate_fn=collate_segmentation, num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = DataLoader(
        eval_dataset, batch_size=args.per_device_eval_batch_size, shuffle=False, collate_fn=collate_segmentation,
        num_workers=args.num_workers, generator=torch.Generator().manual_seed(args.seed),
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
        args.per_device_train_batch_size, accelerator.num_processes, accumulation, effective_batch,
        args.max_train_steps, batches_per_epoch,
    )

    augment = SegmentationTrainAugment(
        crop_size=(args.crop_size, args.crop_size), scale=args.resize_scale, reduce_zero_label=args.reduce_labels,
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
        logger.info("Resuming from %s (step %s).", resume_dir, resume_marker["step"])
        _warn_about_run_differences(resume_marker.get("run", {}), run_info)
        load_checkpoint(accelerator, resume_dir)
        _follow_this_runs_schedule(args, scheduler, optimizer, state.step)
    completed_steps = state.step

    if args.with_tracking:
        config = {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers("finetune_ade20k", config)

    def checkpoint(name: str) -> None:
        check_finite_parameters(model, completed_steps, f"checkpoint {name}", accelerator)
        consumed = completed_steps * accumulation
        info = {"step": completed_steps, "epoch": consumed // max(batches_per_epoch, 1),
                "batches_in_epoch": consumed % max(batches_per_epoch, 1), "run": run_info}
        folder = save_checkpoint(accelerator, output_dir, name, info, state, args.checkpoints_total_limit or None)
        logger.info("Saved checkpoint %s (step %d).", folder, completed_steps)

    def run_eval(keep_predictions=False):
        return evaluate_segmentation(
            model, eval_loader, accelerator, image_processor, num_labels, args.reduce_labels, 255,
            keep_predictions=keep_predictions,
            disable_progress=args.disable_tqdm or not accelerator.is_main_process,
        )

    target = args.max_train_steps if args.stop_after_step is None else min(args.max_train_steps, args.stop_after_step)
    consumed = completed_steps * accumulation
    epoch = consumed // max(batches_per_epoch, 1)
    stream = batch_stream(train_loader, sampler, epoch, consumed % max(batches_per_epoch, 1),
                          accelerator.skip_first_batches)
    progress = tqdm(total=args.max_train_steps, initial=completed_steps, desc="train",
                    disable=args.disable_tqdm or not accelerator.is_main_process)
    model.train()
    running_loss, running_count, last_loss = 0.0, 0, None
    data_wait = DataWaitMeter()
    while completed_steps < target:
        step_loss = torch.zeros((), device=accelerator.device)
        # One optimiser step: accelerate skips the gradient all-reduce, `optimizer.step` and `zero_grad` on all
        # but the last of these batches, and divides the loss by their number in `backward`.
        for _ in range(accumulation):
            with data_wait.waiting():
                epoch, batch = next(stream)
                images, labels = augment(batch["images"], batch["labels"], generator=state.generator,
                                         device=accelerator.device)
            with accelerator.accumulate(model):
                loss, _ = segmentation_loss(model, images, labels, 255, args.avg_non_ignore)
                check_finite_loss(loss, completed_steps + 1, accelerator)
                accelerator.backward(loss)
                step_loss += loss.detach() / accumulation
                if accelerator.sync_gradients and args.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        completed_steps += 1
        state.step = completed_steps
        progress.update(1)

        loss_value = accelerator.gather(step_loss.reshape(1)).mean().item()
        last_loss = loss_value
        running_loss += loss_value
        running_count += 1
        data_wait.step_done()
        if completed_steps % max(args.logging_steps, 1) == 0 or completed_steps == target:
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
            logger.info("step %d/%d  loss %.4f  lr %.3g  epoch %d", completed_steps, args.max_train_steps,
                        running_loss / running_count, lr, epoch)
            progress.set_postfix(loss=f"{running_loss / running_count:.3f}")
            if args.with_tracking:
                accelerator.log({"train_loss": running_loss / running_count, "lr": lr}, step=completed_steps)
            running_loss, running_count = 0.0, 0

        if args.eval_steps and completed_steps % args.eval_steps == 0 and completed_steps < args.max_train_steps:
            metrics, _ = run_eval()
            logger.info("step %d: eval mIoU %.4f", completed_steps, metrics["mean_iou"])
            if args.with_tracking:
                accelerator.log({"eval_mean_iou": metrics["mean_iou"]}, step=completed_steps)
        if isinstance(args.checkpointing_steps, int) and completed_steps % args.checkpointing_steps == 0:
            checkpoint(f"step_{completed_steps}")
        elif args.checkpointing_steps == "epoch" and batches_per_epoch:
            before = ((completed_steps - 1) * accumulation) // batches_per_epoch
            after = (completed_steps * accumulation) // batches_per_epoch
            if after > before:
                checkpoint(f"epoch_{after - 1}")
    progress.close()
    logger.info("%s", data_wait.describe(args.num_workers))

    if completed_steps < args.max_train_steps:
        # As if interrupted: the stop step itself is saved only when it falls on --checkpointing_steps.
        latest, _ = find_latest_checkpoint(output_dir) if accelerator.is_main_process else (None, [])
        saved = int(verify_checkpoint(latest, check_hashes=False)["step"]) if latest is not None else 0
        where = f"{latest.name} (step {saved})" if latest is not None else "the beginning (no checkpoint saved)"
        lost = "" if saved >= completed_steps else (
            f"; steps {saved + 1}-{completed_steps} are not saved and will be trained again")
        logger.info("Stopped after step %d of %d (--stop_after_step); --resume_from_checkpoint latest restarts from "
                    "%s%s.", completed_steps, args.max_train_steps, where, lost)
        return {"stopped_at_step": completed_steps, "resumed_from": str(resume_dir) if resume_dir else None,
                "latest_checkpoint_step": saved}

    check_finite_parameters(model, completed_steps, "final model", accelerator)
    metrics, pairs = run_eval(keep_predictions=args.save_predictions)
    results = metrics_to_json(metrics, id2label)
    results.update({
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
    })
    logger.info("Evaluation: mIoU %.4f, mean accuracy %.4f, overall accuracy %.4f",
                metrics["mean_iou"], metrics["mean_accuracy"], metrics["overall_accuracy"])
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
