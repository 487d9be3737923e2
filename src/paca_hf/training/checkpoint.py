"""Training checkpoints that are written completely before they replace anything, and verified before a run
resumes from them.

A checkpoint is `accelerator.save_state` into `OUTPUT_DIR/.tmp-NAME`, then a `COMPLETE` marker (JSON: the run's
progress and every file's size and sha256, written last), then a rename to `OUTPUT_DIR/NAME` (`step_N` or
`epoch_N`). A folder without the marker, or whose files differ from it, is never resumed from. The augmentation
RNG travels with it in [`TrainingState`]. Writing, hashing and removing go through `paca_hf.file_utils`.

transformers' `Trainer` (the ImageNet recipe) writes its own checkpoints straight into `OUTPUT_DIR/checkpoint-N`;
`paca_hf.training.classification.train.PaCaTrainer` adds the same marker once every file is written, and the
functions that list, resume and prune take `name_pattern=TRAINER_CHECKPOINT_NAME` for those folders.
"""

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import torch
from torch import nn

from ..file_utils import (
    file_manifest,
    fsync_dir,
    fsync_file,
    give_normal_permissions,
    remove_dir,
    replace_dir,
    verify_manifest,
    write_json_atomically,
)
from .errors import CheckpointError


logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")
TRAINER_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR-global_step
_TMP_PREFIX = ".tmp-"


class TrainingState:
    """Progress and the augmentation RNG, saved with `accelerator.register_for_checkpointing`.

    Every process has its own `torch.Generator` (seeded with `seed` and the process index). Call `gather` on every
    process just before `accelerator.save_state` (it is a collective): the main process then saves all
    generators' states, and on loading each process takes its own."""

    def __init__(self, seed: int, process_index: int = 0, num_processes: int = 1):
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.num_processes = int(num_processes)
        self.generator = torch.Generator().manual_seed(self.seed * 7919 + 104729 * self.process_index + 1)
        self.step = 0
        self._gathered: list[torch.Tensor] | None = None

    def gather(self, accelerator) -> None:
        state = self.generator.get_state()
        if self.num_processes > 1:
            states = accelerator.gather(state[None].to(accelerator.device)).cpu()
            self._gathered = [row.clone() for row in states]
        else:
            self._gathered = [state.clone()]

    def state_dict(self) -> dict:
        states = self._gathered if self._gathered is not None else [self.generator.get_state()]
        return {
            "format": 1,
            "step": self.step,
            "seed": self.seed,
            "num_processes": self.num_processes,
            "generator_states": states,
        }

    def load_state_dict(self, state: dict) -> None:
        states = state["generator_states"]
        if len(states) != self.num_processes:
            raise CheckpointError(
                f"The checkpoint was written by {len(states)} process(es) but this run has {self.num_processes}: "
                f"an exact resume needs the same number of processes (and batch settings)."
            )
        self.step = int(state["step"])
        self.generator.set_state(states[self.process_index])


def write_complete_marker(folder, info: dict) -> dict:
    """Write `COMPLETE` into `folder` last: JSON with `info` and every file's size and sha256 (each file is flushed
    to disk first). A folder without it was not written completely. Returns the marker's content."""
    folder = Path(folder)
    for path in folder.rglob("*"):
        if path.is_file():
            fsync_file(path)
    files = file_manifest(folder, exclude=(COMPLETE_MARKER,))
    marker = {"format": CHECKPOINT_FORMAT, **info, "files": files, "written_at": time.time()}
    write_json_atomically(folder / COMPLETE_MARKER, marker, indent=1)
    return marker


def verify_checkpoint(folder, check_hashes: bool = True) -> dict:
    """The `COMPLETE` marker of `folder` after checking every listed file (size, and sha256 unless
    `check_hashes=False`); `CheckpointError` saying what is wrong otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint {str(folder)!r} does not exist or is not a folder.")
    marker_path = folder / COMPLETE_MARKER
    if not marker_path.is_file():
        raise CheckpointError(
            f"Checkpoint {str(folder)!r} is incomplete: it has no {COMPLETE_MARKER} marker, which is written last, "
            f"so it was interrupted while being saved (or was not written by this script). Resume from an earlier "
            f"checkpoint, or use --resume_from_checkpoint latest to pick the newest complete one."
        )
    try:
        marker = json.loads(marker_path.read_text())
        files = marker["files"]
        int(marker["step"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"Checkpoint {str(folder)!r} has an unreadable {COMPLETE_MARKER} marker ({error}).")
    problems = verify_manifest(folder, files, check_hashes=check_hashes)
    # accelerate's names: model.safetensors (DDP, one process), pytorch_model_fsdp_0* (FSDP, full or sharded).
    if not any(name.startswith(("model", "pytorch_model")) for name in files):
        problems.append("it holds no model weights")
    if problems:
        raise CheckpointError(f"Checkpoint {str(folder)!r} is corrupt: {'; '.join(problems)}.")
    return marker


def list_checkpoints(output_dir, name_pattern: re.Pattern = _CHECKPOINT_NAME) -> list[Path]:
    """Checkpoint folders in `output_dir` whose names match `name_pattern` (default: the fine-tune's `step_N`,
    `epoch_N`; `TRAINER_CHECKPOINT_NAME` for Trainer's `checkpoint-N`), complete or not."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and name_pattern.match(p.name))


def partial_saves(output_dir) -> list[Path]:
    """Leftovers of saves that were interrupted before their rename (`.tmp-step_N`)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith(_TMP_PREFIX))


def find_latest_checkpoint(
    output_dir, name_pattern: re.Pattern = _CHECKPOINT_NAME
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """`(newest complete checkpoint or None, [(skipped folder, reason), ...])` among the [`list_checkpoints`] of
    `output_dir`, newest by the step recorded in each marker. Partial and corrupt folders are skipped (and returned,
    so that they can be reported)."""
    best, best_step, skipped = None, -1, []
    for folder in list_checkpoints(output_dir, name_pattern):
        try:
            marker = verify_checkpoint(folder)
        except CheckpointError as error:
            skipped.append((folder, str(error)))
            continue
        if int(marker["step"]) > best_step:
            best, best_step = folder, int(marker["step"])
    for folder in partial_saves(output_dir):
        skipped.append((folder, f"{str(folder)!r} is an interrupted save (never completed)"))
    return best, skipped


def resolve_resume_checkpoint(
    value: str | None, output_dir, name_pattern: re.Pattern = _CHECKPOINT_NAME
) -> tuple[Path | None, list[str]]:
    """The folder `--resume_from_checkpoint` names, verified, and warnings to log (`name_pattern`: which folders
    are checkpoints, as in [`list_checkpoints`]).

    * a path (or a folder name inside `output_dir`): must be a complete, intact checkpoint, else
      `CheckpointError` (never silently skipped);
    * `latest`: the newest complete checkpoint in `output_dir`; partial or corrupt ones are skipped with a
      warning naming them; if there are checkpoint folders but none is usable, `CheckpointError`; if there are
      none at all, training starts from the beginning (with a warning), so that a job can always be restarted
      with `--resume_from_checkpoint latest`.
    """
    if value is None or value == "":
        return None, []
    if value == "latest":
        best, skipped = find_latest_checkpoint(output_dir, name_pattern)
        warnings = [f"--resume_from_checkpoint latest skipped {reason}" for _, reason in skipped]
        if best is not None:
            return best, warnings
        if list_checkpoints(output_dir, name_pattern):
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no usable checkpoint in {str(output_dir)!r}; "
                + " | ".join(reason for _, reason in skipped)
            )
        return None, warnings + [
            f"--resume_from_checkpoint latest: no checkpoint in {str(output_dir)!r} yet, starting from the beginning."
        ]
    folder = Path(value)
    if not folder.exists() and output_dir is not None and (Path(output_dir) / value).exists():
        folder = Path(output_dir) / value
    verify_checkpoint(folder)
    return folder, []


def save_checkpoint(
    accelerator,
    output_dir,
    name: str,
    info: dict,
    training_state: TrainingState | None = None,
    total_limit: int | None = None,
) -> Path:
    """`accelerator.save_state` into `output_dir/.tmp-NAME`, then (main process) the `COMPLETE` marker, then a
    rename to `output_dir/NAME`; only then are older checkpoints beyond `total_limit` removed. A save that is
    interrupted leaves the earlier checkpoints untouched and a `.tmp-` folder that resuming ignores.
    Collective: call it on every process."""
    output_dir = Path(output_dir)
    final = output_dir / name
    tmp = output_dir / f"{_TMP_PREFIX}{name}"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_dir(tmp)
    accelerator.wait_for_everyone()
    if training_state is not None:
        training_state.gather(accelerator)
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        give_normal_permissions(tmp)
        write_complete_marker(tmp, info)
        replace_dir(tmp, final)
        if total_limit is not None and total_limit > 0:
            prune_checkpoints(output_dir, keep=total_limit, protect=final)
        for leftover in partial_saves(output_dir):
            logger.warning(f"Removing {leftover}, left by an interrupted save.")
            remove_dir(leftover)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir, keep: int, protect=None, name_pattern: re.Pattern = _CHECKPOINT_NAME) -> list[Path]:
    """Delete the oldest complete checkpoints so that `keep` remain (never `protect`: a folder or several);
    incomplete ones are left for the user to look at. Returns the deleted folders."""
    if protect is None:
        protect = []
    elif isinstance(protect, (str, Path)):
        protect = [protect]
    protected = {Path(folder).resolve() for folder in protect}
    complete = []
    for folder in list_checkpoints(output_dir, name_pattern):
        try:
            marker = verify_checkpoint(folder, check_hashes=False)
        except CheckpointError:
            continue
        complete.append((int(marker["step"]), folder))
    complete.sort()
    removed = []
    for _, folder in complete[: max(0, len(complete) - keep)]:
        if folder.resolve() in protected:
            continue
        remove_dir(folder)
        removed.append(folder)
    if removed:
        fsync_dir(output_dir)
    return removed


def load_checkpoint(accelerator, folder) -> None:
    """`accelerator.load_state`, with failures reported as `CheckpointError`."""
    try:
        accelerator.load_state(str(folder))
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - anything unreadable becomes a clear message
        raise CheckpointError(
            f"Could not resume from {str(folder)!r}: {type(error).__name__}: {error}. It may come from a different "
            f"model / optimizer setup, or be damaged."
        ) from error


def weight_checksums(model: nn.Module | dict) -> dict[str, str]:
    """sha256 of every parameter and buffer of a model or a state dict (bytes on the CPU), for comparing processes
    or runs."""
    state_dict = model.state_dict() if isinstance(model, nn.Module) else model
    out = {}
    for name, tensor in sorted(state_dict.items()):
        data = tensor.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        out[name] = hashlib.sha256(data.numpy().tobytes()).hexdigest()
    return out
