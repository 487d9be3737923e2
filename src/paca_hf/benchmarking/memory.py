"""Peak memory of one benchmark step: CUDA's allocator statistics, or on CPU the resident set size (VmHWM), measured
in a fresh subprocess (`python -m paca_hf.benchmarking --memory-probe SPEC`)."""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys

import torch

from .models import is_out_of_memory


PROBE_MARKER = "MEMORY_PROBE_RESULT "


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_memory_method() -> str | None:
    """'vmhwm' when the peak RSS can be reset here (Linux), else None."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        _proc_status_kib("VmHWM")
        return "vmhwm"
    except OSError:
        return None
    except RuntimeError:
        return None


def release_freed_memory_to_os():
    """Make glibc return every freed block >= 64 KiB to the system, so RSS tracks the live tensors."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixed from now on)
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def measure_step_memory(runner) -> tuple[float, str]:
    """Extra memory (MiB) that one step needs above what is resident before it; the step must be warmed up."""
    gc.collect()
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(runner.device)
        before = torch.cuda.memory_allocated(runner.device)
        runner.step()
        torch.cuda.synchronize(runner.device)
        return (torch.cuda.max_memory_allocated(runner.device) - before) / 2**20, "cuda_max_allocated"
    if cpu_memory_method() is None:
        return float("nan"), "unavailable"
    release_freed_memory_to_os()
    gc.collect()
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := current RSS
    runner.step()
    return (_proc_status_kib("VmHWM") - before) / 1024, "cpu_rss_peak"


def memory_probe_main(spec: dict) -> int:
    """Entry point of the subprocess that measures one (model, mode, size, batch) with a clean heap."""
    release_freed_memory_to_os()
    args = argparse.Namespace(**spec)
    args.torch_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"status": "ok"}
    try:
        from .data import make_runner

        runner = make_runner(args.model, args.mode, args)
        runner.set_inputs(args.size, args.batch_size)
        runner.step()  # warm-up: lazy initialisation, optimizer state
        result["peak_mem_mib"], method = measure_step_memory(runner)
        result["mem_method"] = method + "_subprocess"
    except Exception as error:  # reported to the parent, which carries on
        result = {"status": "oom" if is_out_of_memory(error) else f"error: {type(error).__name__}: {error}"}
    print(PROBE_MARKER + json.dumps(result), flush=True)
    return 0


def _python_path() -> str:
    """PYTHONPATH for a child process that imports this copy of paca_hf (installed or not)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join(path for path in (package_parent, os.environ.get("PYTHONPATH")) if path)


def memory_in_subprocess(args, model: str, mode: str, size: int, batch_size: int) -> tuple[float, str]:
    spec = {
        "model": model,
        "mode": mode,
        "size": size,
        "batch_size": batch_size,
        "device": "cpu",
        "dtype": args.dtype,
        "attn_implementation": args.attn_implementation,
        "threads": args.threads,
        "optimizer": args.optimizer,
        "task": args.task,
        "backend": "eager",
        "seed": args.seed,
    }
    command = [sys.executable, "-m", "paca_hf.benchmarking", "--memory-probe", json.dumps(spec)]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", PYTHONPATH=_python_path())
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.probe_timeout)
    except subprocess.TimeoutExpired:
        return float("nan"), "probe_timeout"
    for line in completed.stdout.splitlines():
        if line.startswith(PROBE_MARKER):
            result = json.loads(line[len(PROBE_MARKER) :])
            if result["status"] == "ok":
                return result["peak_mem_mib"], result["mem_method"]
            return float("nan"), f"probe_{result['status'][:100]}"
    # Killed (for instance by the kernel's OOM killer) before it could answer.
    return float("nan"), f"probe_failed_rc{completed.returncode}"


MALLOC_CACHE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def restart_with_malloc_cache(argv):
    """glibc returns every freed block above its mmap threshold (at most 32 MiB unless set at start-up) to the
    system, and the next tensor of that size is faulted in page by page again: at 1024x1024 that is most of the
    large activations, and a 100 MB elementwise op then costs several times its compute. The thresholds can only
    be raised before the process starts, hence the restart."""
    if all(os.environ.get(key) == value for key, value in MALLOC_CACHE_ENV.items()):
        return
    if platform.libc_ver()[0] != "glibc":
        print("--malloc-cache: not a glibc system, ignored", flush=True)
        return
    command = [sys.executable, sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    sys.stdout.flush()
    os.execve(sys.executable, command, dict(os.environ, **MALLOC_CACHE_ENV))
