"""The accelerate side of the fine-tunes (`segmentation.finetune`, `detection.finetune`): the run's `Accelerator`,
logging from the global main process only, the run's setup and teardown, AdamW from the flags, resolving and
loading a checkpoint to resume from, the final save (single writer, atomic), resetting accelerate's process-wide
state between runs in one process, warnings about a resume with other settings, SyncBatchNorm; the training loops'
shared steps (an accumulated optimiser step with the NaN stop and clipping, the checkpoint cadence
and save, the resume position, the trackers' config); the demo fine-tunes' run (`segmentation.demo`,
`detection.demo`)."""

import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ..file_utils import fsync_dir, fsync_file, give_normal_permissions, write_json_atomically
from .checkpoint import (
    find_latest_checkpoint,
    load_checkpoint,
    resolve_resume_checkpoint,
    save_checkpoint,
    verify_checkpoint,
    weight_checksums,
)
from .distributed import check_fsdp_device, check_launch, distributed_on_cpu
from .errors import check_finite_loss, check_finite_parameters
from .scheduler import follow_schedule


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


def reset_accelerate_state(accelerator) -> None:
    """Let `main` run again in the same (non-distributed) process, e.g. from tests or the demo, possibly with other
    accelerate settings (accelerate keeps its state in process-wide singletons)."""
    if accelerator.num_processes > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def warn_about_run_differences(saved_run: dict, current: dict, keys) -> None:
    """Warn about each setting `keys` of `current` (this run's) that the checkpoint's run (`saved_run`, its
    marker's `run`) had otherwise: an exact resume needs the same ones."""
    for key in keys:
        if key in saved_run and saved_run[key] != current[key]:
            logger.warning(
                "The checkpoint was written with %s=%s, this run has %s: the resumed run will not "
                "match an uninterrupted one exactly.",
                key,
                saved_run[key],
                current[key],
            )


def maybe_sync_batchnorm(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """SyncBatchNorm (the authors' norm_cfg) when distributed on GPUs; it needs CUDA + NCCL, so on CPU (gloo) the
    plain BatchNorm is kept, with a warning."""
    if accelerator.num_processes <= 1:
        return model
    if accelerator.device.type == "cuda":
        logger.info("Converting BatchNorm to SyncBatchNorm across %d processes.", accelerator.num_processes)
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    logger.warning(
        "SyncBatchNorm needs CUDA/NCCL; running on %s with %d processes, so BatchNorm statistics stay per process.",
        accelerator.device.type,
        accelerator.num_processes,
    )
    return model


def stopped_run_report(accelerator, output_dir: Path, completed_steps: int, max_train_steps: int, resume_dir) -> dict:
    """What a run stopped by `--stop_after_step` returns (and logs): `{"stopped_at_step", "resumed_from",
    "latest_checkpoint_step"}`, the last being the step `--resume_from_checkpoint latest` restarts from (0 without
    a checkpoint; found on the main process). The stop step itself is saved only when it falls on
    `--checkpointing_steps`, as in a real interruption."""
    latest, _ = find_latest_checkpoint(output_dir) if accelerator.is_main_process else (None, [])
    saved = int(verify_checkpoint(latest, check_hashes=False)["step"]) if latest is not None else 0
    where = f"{latest.name} (step {saved})" if latest is not None else "the beginning (no checkpoint saved)"
    lost = (
        ""
        if saved >= completed_steps
        else (f"; steps {saved + 1}-{completed_steps} are not saved and will be trained again")
    )
    logger.info(
        "Stopped after step %d of %d (--stop_after_step); --resume_from_checkpoint latest restarts from %s%s.",
        completed_steps,
        max_train_steps,
        where,
        lost,
    )
    return {
        "stopped_at_step": completed_steps,
        "resumed_from": str(resume_dir) if resume_dir else None,
        "latest_checkpoint_step": saved,
    }


def write_final_outputs(args, accelerator, model, image_processor, json_files: dict, write_extra=None) -> None:
    """The end of a fine-tune, on every process (the weights are gathered: a collective under FSDP): the model and
    image processor ([`save_final`]), with `--debug_dump_weights` each process's weight checksums
    (`rank_checksums/rank_N.json`); then on the global main process only `write_extra(output_dir)` (if given), the
    JSON files `{name: content}` in their order (atomically), and with `--push_to_hub` the upload of the folder
    (checkpoints, hidden and per-rank files left out)."""
    output_dir = Path(args.output_dir)
    state_dict = accelerator.get_state_dict(model)  # every process: a collective under FSDP
    save_final(accelerator, model, image_processor, output_dir, state_dict)
    if args.debug_dump_weights:
        # The full weights this process holds (under FSDP, the main process only; the others get none).
        write_json_atomically(
            output_dir / "rank_checksums" / f"rank_{accelerator.process_index}.json",
            {
                "process_index": accelerator.process_index,
                "num_processes": accelerator.num_processes,
                "distributed_type": str(accelerator.distributed_type),
                "checksums": weight_checksums(state_dict),
            },
        )
    if not accelerator.is_main_process:
        return
    if write_extra is not None:
        write_extra(output_dir)
    for name, content in json_files.items():
        write_json_atomically(output_dir / name, content)
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=args.hub_token)
        repo_id = api.create_repo(args.hub_model_id, exist_ok=True).repo_id
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(output_dir),
            commit_message="End of training",
            ignore_patterns=["step_*", "epoch_*", ".*", "rank_checksums/*", "*.npz", "builtin-scenes-coco/*"],
        )
        logger.info("Pushed to https://huggingface.co/%s", repo_id)


def default_threads() -> int:
    """Torch threads of the demo fine-tunes: one on a 2-core (often shared) machine, where OpenMP threads fighting for
    busy cores were 3-4x slower than one thread in our measurements; more where there are more cores (at most 8)."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(8, cores // 2)


def run_demo_finetune(main, output_dir, config: dict, config_name: str, argv, threads=None, quiet=False) -> tuple:
    """`(results, minutes)` of one demo fine-tune: `config` (the demo model's config dict) written atomically to
    `output_dir / config_name`, then `main(argv(output_dir, config_path))` (a task's `finetune.main`, plus
    `--disable_tqdm` if `quiet`) with `threads` torch threads (default [`default_threads`]); minutes of wall time."""
    torch.set_num_threads(threads or default_threads())
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / config_name
    write_json_atomically(config_path, config, indent=1)
    arguments = list(argv(output_dir, config_path))
    if quiet:
        arguments.append("--disable_tqdm")
    started = time.time()
    results = main(arguments)
    return results, (time.time() - started) / 60.0


def tracker_config(args) -> dict:
    """`vars(args)` for `accelerator.init_trackers`: numbers, strings, booleans and `None` as they are, the rest as
    strings (trackers take no tuples or lists)."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
        for key, value in vars(args).items()
    }


def resume_position(completed_steps: int, accumulation: int, batches_per_epoch: int) -> tuple[int, int]:
    """`(epoch, batches_in_epoch)` after `completed_steps` optimiser steps of `accumulation` batches each, with
    `batches_per_epoch` batches per process in an epoch (0: every batch counts in epoch 0)."""
    consumed = completed_steps * accumulation
    return consumed // max(batches_per_epoch, 1), consumed % max(batches_per_epoch, 1)


def checkpoint_due(checkpointing_steps, completed_steps: int, accumulation: int, batches_per_epoch: int):
    """The name of the checkpoint to save after optimiser step `completed_steps` (`step_N` every
    `checkpointing_steps` steps; `epoch_E` when this step finished epoch E with `checkpointing_steps == "epoch"`),
    or `None`."""
    if isinstance(checkpointing_steps, int) and completed_steps % checkpointing_steps == 0:
        return f"step_{completed_steps}"
    if checkpointing_steps == "epoch" and batches_per_epoch:
        before = ((completed_steps - 1) * accumulation) // batches_per_epoch
        after = (completed_steps * accumulation) // batches_per_epoch
        if after > before:
            return f"epoch_{after - 1}"
    return None


def save_run_checkpoint(
    accelerator, model, state, name: str, args, completed_steps: int, batches_per_epoch: int, run_info: dict
) -> Path:
    """Save checkpoint `name` in `args.output_dir` after checking that every weight is finite: the accelerate state
    and `state`, with the step, the position in the epoch and `run_info` (the settings a resume compares) in its
    marker; at most `args.checkpoints_total_limit` complete checkpoints are kept (0: all). The folder."""
    check_finite_parameters(model, completed_steps, f"checkpoint {name}", accelerator)
    epoch, batches_in_epoch = resume_position(completed_steps, args.gradient_accumulation_steps, batches_per_epoch)
    info = {"step": completed_steps, "epoch": epoch, "batches_in_epoch": batches_in_epoch, "run": run_info}
    folder = save_checkpoint(
        accelerator, Path(args.output_dir), name, info, state, args.checkpoints_total_limit or None
    )
    logger.info("Saved checkpoint %s (step %d).", folder, completed_steps)
    return folder


def accumulated_step(accelerator, model, optimizer, scheduler, stream, data_wait, args, step: int, prepare, forward):
    """One optimiser step of `args.gradient_accumulation_steps` batches from `stream` (`(epoch, batch)` pairs):
    `prepare(batch)` (augmentation, timed as data wait) then `forward(inputs) -> (loss, values)` under
    `accelerator.accumulate`; the loss checked finite (`step`: the step's number, in the error), back-propagated,
    gradients clipped to `args.max_grad_norm` at the synchronising batch; then the scheduler's step. Returns
    `(epoch, values)`: the epoch of the last batch and the mean of the batches' detached `values` (1-D)."""
    accumulation = args.gradient_accumulation_steps
    total = None
    epoch = None
    # accelerate skips the gradient all-reduce, `optimizer.step` and `zero_grad` on all but the last of these
    # batches, and divides the loss by their number in `backward`.
    for _ in range(accumulation):
        with data_wait.waiting():
            epoch, batch = next(stream)
            inputs = prepare(batch)
        with accelerator.accumulate(model):
            loss, values = forward(inputs)
            check_finite_loss(loss, step, accelerator)
            accelerator.backward(loss)
            if total is None:
                total = torch.zeros(values.shape, device=values.device)  # float32 also under mixed precision
            total += values.detach() / accumulation
            if accelerator.sync_gradients and args.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return epoch, total


def base_learning_rate(optimizer) -> float:
    """The learning rate of the first parameter group without its `lr_mult`: the schedule's rate."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_mult", 1.0)


def run_with_accelerator(args, run) -> dict:
    """`run(args, accelerator)` on the run's `Accelerator` ([`make_accelerator`], logging set up), then, also when it
    raises, the trackers ended (with `--with_tracking`), accelerate's memory freed and its process-wide state reset
    (another run may follow in this process). What `run` returns."""
    accelerator = make_accelerator(args)
    setup_logging(accelerator)
    try:
        return run(args, accelerator)
    finally:
        if args.with_tracking:
            accelerator.end_training()
        accelerator.free_memory()
        reset_accelerate_state(accelerator)


def resolve_resume(args) -> tuple[Path | None, dict | None]:
    """`(folder, marker)` of the checkpoint `--resume_from_checkpoint` names (`(None, None)`: start from the
    beginning), resolved and verified before anything is written, so that a bad one stops the run here
    (`CheckpointError`); the resolution's warnings are logged."""
    resume_dir, resume_warnings = resolve_resume_checkpoint(args.resume_from_checkpoint, Path(args.output_dir))
    for warning in resume_warnings:
        logger.warning(warning)
    return resume_dir, verify_checkpoint(resume_dir, check_hashes=False) if resume_dir is not None else None


def make_adamw(groups, args) -> torch.optim.AdamW:
    """AdamW over the parameter `groups` with `--learning_rate`, `--adam_beta1/2`, `--adam_epsilon` and
    `--weight_decay` (groups that set their own keep theirs)."""
    return torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )


def resume_training(
    accelerator, resume_dir, resume_marker, run_info: dict, keys, scheduler, optimizer, schedule, state
):
    """Load the checkpoint `resume_dir` (its `resume_marker` from [`resolve_resume`]) into the prepared objects and
    the registered `state` (a `TrainingState`), then bring the (unprepared) `scheduler` to the loaded step on
    `schedule`; first a warning about each of `keys` in which the saved run's settings differ from `run_info`."""
    logger.info("Resuming from %s (step %s).", resume_dir, resume_marker["step"])
    warn_about_run_differences(resume_marker.get("run", {}), run_info, keys)
    load_checkpoint(accelerator, resume_dir)
    follow_schedule(scheduler, optimizer, schedule, state.step)
