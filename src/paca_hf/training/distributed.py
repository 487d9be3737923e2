"""How the training scripts find out how they were launched (one process, several on one machine, several machines).

Both scripts run under `accelerate launch` (or `torchrun`), which set `WORLD_SIZE`, `RANK` and `LOCAL_RANK` for
every process of a distributed run. Two launches are caught here because they would train silently wrong:

* processes started for a distributed run on machines without GPUs: accelerate would pick no distributed backend
  (it looks for GPUs) and each process would train alone; the scripts use the CPU (gloo) instead;
* `accelerate launch --num_machines N` (or `--num_processes N`) without `--multi_gpu` on machines with fewer than
  two GPUs: accelerate's plain launcher then starts one *non-distributed* process per machine, with `MASTER_ADDR`
  set but no `WORLD_SIZE`; every machine would train its own model and write it into the same output folder, so
  the scripts refuse to start.

FSDP (`accelerate launch --use_fsdp`) needs GPUs (or another accelerator) in accelerate 1.x: its
`FullyShardedDataParallelPlugin` raises "no available devices found" without one (with `sync_module_states`, the
launcher's default), and `AcceleratorState` turns a run into FSDP only for GPU-like multi-device runs, never for
`MULTI_CPU` (so without that error the run would silently be plain data parallel); `check_fsdp_device` says so.
"""

import os

import torch

from .errors import TrainingError


# Where launchers put the number of processes: torchrun / accelerate, then MPI's (accelerate's `--mpirun_hostfile`).
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """The number of processes of the run, from `WORLD_SIZE` or MPI's equivalents (1 when none is set)."""
    for name in WORLD_SIZE_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    return 1


def distributed_on_cpu() -> bool:
    """True when this process belongs to a distributed run (`WORLD_SIZE` > 1) but no GPU is visible: the run must be
    told to use the CPU (gloo), or accelerate gives every process a separate, non-distributed run."""
    return launched_world_size() > 1 and not torch.cuda.is_available()


def check_launch() -> None:
    """Raise `TrainingError` when `accelerate launch` was asked for several processes or machines but started this
    process outside any distributed run (see the module's docstring): `MASTER_ADDR` and accelerate's launch
    settings are in the environment, `WORLD_SIZE` is not."""
    env = os.environ
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in env or "ACCELERATE_DYNAMO_BACKEND" in env
    in_a_run = any(name in env for name in WORLD_SIZE_VARIABLES)
    if not (launched_by_accelerate and "MASTER_ADDR" in env) or in_a_run:
        return
    raise TrainingError(
        f"accelerate launch set MASTER_ADDR={env['MASTER_ADDR']} (it does so when asked for several processes or "
        f"machines) but started this process outside a distributed run (no WORLD_SIZE / RANK): with fewer than two "
        f"GPUs per machine its plain launcher runs one independent process per machine, and every machine would "
        f"train alone and write into the same output folder. Add --multi_gpu to the launch command (on machines "
        f"without GPUs the script then runs on the CPU with gloo), or unset MASTER_ADDR for a single-process run."
    )


def check_fsdp_device(cpu: bool) -> None:
    """Raise `TrainingError` when FSDP is asked for (`accelerate launch --use_fsdp` sets `ACCELERATE_USE_FSDP`) but
    the run is on the CPU, which accelerate's FSDP does not support (see the module's docstring)."""
    if not cpu or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    raise TrainingError(
        "FSDP (--use_fsdp) needs GPUs: accelerate's FullyShardedDataParallelPlugin finds no device on the CPU and "
        "accelerate shards models only in GPU-like multi-device runs, not in CPU (gloo) runs. Without GPUs, launch "
        "with --multi_gpu instead (data parallel on the CPU)."
    )
