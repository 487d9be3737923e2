"""Speed and memory of PaCa-ViT against transformers' Swin-T and PVTv2-b1/b2 (ADE20k segmentors: Segformer-B1/B2,
UperNet-Swin-T), on eager PyTorch, torch.compile or ONNX Runtime, measured side by side.

All models are built from configs with random weights (no Hub download) and ImageNet heads (1000 labels):

    python scripts/benchmark.py                                   # inference, 224/512/1024, batch 1
    python scripts/benchmark.py --mode both --train-sizes 224 --train-batch-sizes 8
    python scripts/benchmark.py --device cuda --dtype bf16 --sizes 224 --batch-sizes 128 --compile
    python scripts/benchmark.py --quick                           # seconds; what the test runs
    python scripts/benchmark.py --models pacavit-tiny --backend eager,compile,onnxruntime --baseline pacavit-tiny
    python scripts/benchmark.py --task segmentation               # PaCa head vs Segformer-B1/B2, UperNet-Swin-T
    python scripts/benchmark.py --task data --threads 1           # image processor backends, ADE20k augmentation
    python scripts/benchmark.py --task detection                  # PaCa-Tiny Mask R-CNN vs torchvision's R-50 one
    python scripts/benchmark.py --models pacavit-tiny,pacavit-tiny:chunk_size_feed_forward=0   # config A/B

A PaCa-ViT model name may carry config overrides after colons, `name:field=value[:field=value...]` (values read as
JSON), to compare settings side by side in one run.

Method
    * For every (mode, size, batch) each model gets `--warmup` untimed runs. Then the `--repeats` timed runs are
      interleaved round-robin: repeat r runs every size and batch of the mode and, within each, every model once
      (model order rotated by r), so that load changes on a shared machine fall on all models and all sizes alike
      (the baseline ratios compare models, the scaling ratios compare sizes). Reported: median and inter-quartile
      range of the repeats; the raw times are in the CSV.
    * Time is wall-clock (`time.perf_counter`), with `torch.cuda.synchronize()` before and after on CUDA.
    * inference: `model.eval()` under `torch.inference_mode()`; with `--dtype bf16` weights and inputs are bf16.
      train: `model.train()`, forward with labels (cross-entropy over 1000 classes), `loss.backward()`,
      `optimizer.step()` (AdamW by default, `--optimizer sgd` for SGD with momentum 0.9),
      `optimizer.zero_grad(set_to_none=True)`; with `--dtype bf16` the weights stay fp32 under bf16 autocast.
    * ratio_vs_baseline = median time of the model / median time of `--baseline` for the same mode, size and batch
      (< 1 means faster than the baseline). The scaling ratio is time(size) / time(previous size); for
      1024 vs 512 pixels grow 4x, so a ratio near 4 means time linear in pixels.
    * peak_mem_mib is the memory one step needs on top of what is resident before it (weights, optimizer state and
      inputs excluded; see weights_mib for the weights). CUDA: `torch.cuda.max_memory_allocated()` after
      `reset_peak_memory_stats()`, minus `memory_allocated()` before the step. CPU: peak resident set size during
      the step (VmHWM of /proc/self/status, reset through /proc/self/clear_refs) minus the resident set size
      before it, with glibc told to give every block of 64 KiB or more back to the system on free
      (mallopt(M_MMAP_THRESHOLD)) so that the RSS follows the live tensors. By default on CPU every measurement
      runs in a fresh subprocess (after one untimed warm-up step at the same size), away from the timed runs.
      Only eager runs are measured (mem_method "eager_only" for the other backends).
    * --backend: `model@compile` is `torch.compile(dynamic=False)` (inductor; weights frozen for inference),
      `model@onnxruntime` an ONNX export per input shape run by onnxruntime on the CPU (see `models.Runner`);
      max_abs_diff is the largest absolute difference of their inference logits from the eager model's.
    * CPU with glibc: a freed tensor above malloc's mmap threshold (32 MiB at most unless set at start-up) is
      unmapped and the next one faulted in again page by page; at 1024x1024 that covers most activations and makes
      timings depend on allocator history (a 100 MB add: ~70 ms instead of ~13 ms here). `--malloc-cache` restarts
      the script with the thresholds raised, as jemalloc/tcmalloc behave; meta.json records such variables.
    * gflops: FLOPs of one step (the whole batch; forward, plus backward for train, not the optimizer) counted by
      `torch.utils.flop_counter.FlopCounterMode` on the eager attention path (matmuls and convolutions,
      2 FLOPs per multiply-accumulate). tflops_per_s = gflops / median time; peak_fraction = tflops_per_s /
      `--peak-tflops`, whose default on CUDA is 989 TFLOP/s, the dense bf16 tensor-core peak of an H100/H200 SXM
      (pass your GPU's own peak; for fp32 use its fp32 or TF32 peak). No default peak on CPU.

Outputs (in `--output-dir`, default outputs/benchmark): results.csv (one row per model, mode, size and batch),
scaling.csv, report.txt (the printed tables), meta.json (versions, device, command) and, when matplotlib is
installed (`pip install -e ".[plot]"`), scaling.png: log-log median time against pixels, one line per model
(`--plot-only` redraws it from an existing results.csv).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..file_utils import write_json_atomically, write_text_atomically
from .data import DATA_DEFAULTS, DATA_PIPELINES, DATA_QUICK, make_runner
from .memory import (
    measure_step_memory,
    memory_in_subprocess,
    memory_probe_main,
    release_freed_memory_to_os,
    restart_with_malloc_cache,
)
from .models import (
    BACKENDS,
    DETECTION_MODEL_NAMES,
    MODEL_NAMES,
    SEGMENTATION_MODEL_NAMES,
    detection_shape,
    input_pixels,
    is_out_of_memory,
    split_model_name,
)
from .results import (
    CSV_COLUMNS,
    SCALING_COLUMNS,
    Report,
    add_ratios,
    plot_scaling,
    print_tables,
    quartiles,
    read_results,
    scaling_rows,
    write_csv,
)


# Where the outputs go unless --output-dir is given (scripts/benchmark.py passes its checkout's outputs/benchmark).
DEFAULT_OUTPUT_DIR = Path("outputs") / "benchmark"
MODES = ("inference", "train")
DEFAULT_CUDA_PEAK_TFLOPS = 989.0  # H100 / H200 SXM, dense bf16 tensor cores


def int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def name_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def backend_list(text: str) -> list[str]:
    backends = name_list(text)
    unknown = [backend for backend in backends if backend not in BACKENDS]
    if unknown or not backends:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    return backends


QUICK = {  # transformers' Swin fails below 224 (its windows outgrow the feature maps), so PVTv2 is the partner
    "models": ["pacavit-tiny", "pvtv2-b1"],
    "baseline": "pvtv2-b1",
    "sizes": [64, 96],
    "batch_sizes": [1],
    "train_sizes": [64],
    "train_batch_sizes": [2],
    "mode": "both",
    "repeats": 2,
    "warmup": 0,
    "memory": "inprocess",
    "threads": 1,  # tests run beside other jobs: one thread avoids OpenMP stalls on a busy machine
}
# --task segmentation: the ADE20k segmentors; PaCa-ViT at 64 still has 2x2 maps in stage 4
SEGMENTATION_QUICK = dict(QUICK, models=["pacavit-tiny", "segformer-b1"], baseline="segformer-b1")
SEGMENTATION_DEFAULTS = {
    "models": ["pacavit-tiny", "segformer-b1", "segformer-b2", "upernet-swin-t"],
    "baseline": "segformer-b2",
    "sizes": [512],
    "batch_sizes": [1],
    "train_sizes": None,
    "train_batch_sizes": [2],
    "mode": "both",
    "repeats": 5,
    "warmup": 1,
    "memory": "auto",
    "threads": None,
}
# --task detection: the COCO Mask R-CNN detectors at COCO's test size (800 x 1216), inference and one train step
DETECTION_QUICK = dict(
    QUICK,
    models=["pacavit-tiny", "maskrcnn-r50"],
    baseline="maskrcnn-r50",
    sizes=[64],
    train_sizes=[64],
    train_batch_sizes=[1],
)
DETECTION_DEFAULTS = {
    "models": ["pacavit-tiny", "maskrcnn-r50"],
    "baseline": "maskrcnn-r50",
    "sizes": [800],
    "batch_sizes": [1],
    "train_sizes": None,
    "train_batch_sizes": [1],
    "mode": "both",
    "repeats": 5,
    "warmup": 1,
    "memory": "auto",
    "threads": None,
}
DEFAULTS = {
    "models": ["pacavit-tiny", "swin-t", "pvtv2-b1"],
    "baseline": "swin-t",
    "sizes": [224, 512, 1024],
    "batch_sizes": [1],
    "train_sizes": None,  # -> sizes
    "train_batch_sizes": None,  # -> batch sizes
    "mode": "inference",
    "repeats": 7,
    "warmup": 2,
    "memory": "auto",
    "threads": None,  # torch's choice
}


def parse_args(argv=None, default_output_dir: Path = DEFAULT_OUTPUT_DIR):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--task",
        choices=("classification", "segmentation", "detection", "data"),
        default="classification",
        help="classification: ImageNet classifiers; segmentation: ADE20k segmentors (PaCa head vs Segformer-B1/B2 "
        "and UperNet-Swin-T); detection: COCO Mask R-CNN (PaCa-ViT vs torchvision's maskrcnn_resnet50_fpn), a size "
        "being the image height (width x1.52, rounded to a multiple of 32: 800 -> 800 x 1216); data: the image "
        "processor's backends and the ADE20k training augmentation",
    )
    parser.add_argument(
        "--models",
        type=name_list,
        help=f"comma-separated, from {', '.join(MODEL_NAMES)} (classification) or "
        f"{', '.join(SEGMENTATION_MODEL_NAMES)} (segmentation) or {', '.join(DETECTION_MODEL_NAMES)} (detection) or "
        f"{', '.join(DATA_PIPELINES)} (data); PaCa-ViT "
        "ones optionally with `:field=value` config overrides, any with `@backend` "
        f"(default {','.join(DEFAULTS['models'])}; segmentation {','.join(SEGMENTATION_DEFAULTS['models'])})",
    )
    parser.add_argument(
        "--backend",
        type=backend_list,
        default=None,
        help="comma-separated from eager, compile (torch.compile, inductor), onnxruntime (ONNX export + onnxruntime, "
        "CPU inference only); every model runs on each, named `model@backend` for all but eager (default eager)",
    )
    parser.add_argument("--sizes", type=int_list, help="image sides, e.g. 224,512,1024,2048 (default 224,512,1024)")
    parser.add_argument("--batch-sizes", type=int_list, help="default 1")
    parser.add_argument("--train-sizes", type=int_list, help="sizes of the train mode (default: --sizes)")
    parser.add_argument(
        "--train-batch-sizes", type=int_list, help="batch sizes of the train mode (default: --batch-sizes)"
    )
    parser.add_argument("--mode", choices=("inference", "train", "both"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, help="timed runs per model and configuration (default 7)")
    parser.add_argument("--warmup", type=int, help="untimed runs before them (default 2)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice; 1 with --quick)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="same as --backend compile: torch.compile every model (at least 2 warm-up runs, which compile)",
    )
    parser.add_argument("--attn-implementation", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="of the train step")
    parser.add_argument(
        "--baseline", help="ratios are model time / baseline time (default swin-t; pvtv2-b1 with --quick)"
    )
    parser.add_argument(
        "--memory",
        choices=("auto", "subprocess", "inprocess", "off"),
        help="auto: subprocess on CPU, in-process on CUDA",
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"peak for peak_fraction (CUDA default {DEFAULT_CUDA_PEAK_TFLOPS:g}, H100/H200 bf16 dense)",
    )
    parser.add_argument("--output-dir", type=Path, default=default_output_dir)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-timeout", type=float, default=1800.0, help="seconds per memory subprocess")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings for tests: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    parser.add_argument(
        "--malloc-cache",
        action="store_true",
        help="CPU, glibc: restart with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ = 4 GiB so that freed tensors "
        "stay in the heap (as jemalloc/tcmalloc keep them) instead of being unmapped and faulted in again",
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw scaling.png from --output-dir's results.csv")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe is not None:
        return args
    if args.task == "data":
        defaults = DATA_QUICK if args.quick else DATA_DEFAULTS
    elif args.task == "segmentation":
        defaults = SEGMENTATION_QUICK if args.quick else SEGMENTATION_DEFAULTS
    elif args.task == "detection":
        defaults = DETECTION_QUICK if args.quick else DETECTION_DEFAULTS
    else:
        defaults = QUICK if args.quick else DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.backend is None:
        args.backend = ["compile"] if args.compile else ["eager"]
    elif args.compile:
        parser.error("--compile is --backend compile; pass one of them")
    args.compile = args.backend == ["compile"]
    if args.task == "data":
        unknown = [name for name in args.models if name not in DATA_PIPELINES]
        if unknown:
            parser.error(f"unknown data pipeline {', '.join(unknown)}; choose from {', '.join(DATA_PIPELINES)}")
        args.backend, args.no_flops = ["eager"], True
    else:
        try:
            for name in args.models:
                split_model_name(name, args.task)
        except ValueError as error:
            parser.error(str(error))
        args.models = [
            name if "@" in name or backend == "eager" else f"{name}@{backend}"
            for backend in args.backend
            for name in args.models
        ]
    if args.baseline not in args.models and f"{args.baseline}@{args.backend[0]}" in args.models:
        args.baseline = f"{args.baseline}@{args.backend[0]}"
    if "onnxruntime" in args.backend and (args.device != "cpu" or args.mode != "inference"):
        parser.error("--backend onnxruntime runs inference on the CPU: pass --mode inference --device cpu")
    args.train_sizes = args.train_sizes or args.sizes
    args.train_batch_sizes = args.train_batch_sizes or args.batch_sizes
    args.modes = ["data"] if args.task == "data" else list(MODES) if args.mode == "both" else [args.mode]
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if any("@" in name and not name.endswith("@eager") for name in args.models) and args.warmup < 2:
        args.warmup = 2  # compilation / export (and the recompilation some models need on their 2nd call) is untimed
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.memory == "auto":
        args.memory = "subprocess" if args.device == "cpu" else "inprocess"
    if args.memory == "subprocess" and args.device == "cuda":
        args.memory = "inprocess"
    args.torch_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    return args


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def benchmark_mode(runners: dict, mode: str, configurations: list, args, report: Report) -> list[dict]:
    """Time every (size, batch) of one mode for every model, interleaved: after the warm-ups, each repeat runs
    every configuration and, within it, every model once (rotated order), so that load changes on a shared
    machine fall on all models and all sizes alike (the scaling ratios compare sizes). FLOPs and in-process
    memory are measured after all timed runs."""
    names = list(runners)
    status = {(name, config): "ok" for name in names for config in configurations}
    times = {(name, config): [] for name in names for config in configurations}

    def fail(name, config, error):
        """Out of memory -> 'oom', anything else -> 'error'; the model sits out this configuration."""
        status[(name, config)] = "oom" if is_out_of_memory(error) else "error"
        report(f"  {name}, {mode}, size {config[0]}, batch {config[1]}: {type(error).__name__}: {str(error)[:300]}")
        runners[name].clear_inputs()
        gc.collect()
        if runners[name].device.type == "cuda":
            torch.cuda.empty_cache()

    for config in configurations:
        for name, runner in runners.items():
            try:
                runner.set_inputs(*config)
                for _ in range(args.warmup):
                    runner.step()
            except Exception as error:
                fail(name, config, error)
    started = time.perf_counter()
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for config in configurations:
            for name in order:
                if status[(name, config)] != "ok":
                    continue
                try:
                    runners[name].set_inputs(*config)
                    times[(name, config)].append(runners[name].timed_step())
                except Exception as error:
                    fail(name, config, error)
        report(f"  {mode}: repeat {repeat + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s)")

    rows = []
    for config in configurations:
        size, batch_size = config
        for name, runner in runners.items():
            measured, ok = times[(name, config)], status[(name, config)] == "ok"
            row = {
                "model": name,
                "mode": mode,
                "size": size,
                "batch_size": batch_size,
                "pixels": input_pixels(size, args.task),
                "device": args.device,
                "dtype": args.dtype,
                "attn_implementation": runner.attn_implementation,
                "task": args.task,
                "backend": runner.backend,
                "compiled": runner.backend == "compile",
                "threads": torch.get_num_threads(),
                "optimizer": args.optimizer if mode == "train" else "",
                "repeats": len(measured),
                "status": status[(name, config)],
                "params_m": runner.params_m,
                "weights_mib": runner.weights_mib,
                "median_ms": float("nan"),
                "iqr_ms": float("nan"),
                "min_ms": float("nan"),
                "max_ms": float("nan"),
                "images_per_s": float("nan"),
                "gflops": float("nan"),
                "tflops_per_s": float("nan"),
                "peak_tflops": args.peak_tflops_value,
                "peak_fraction": float("nan"),
                "peak_mem_mib": float("nan"),
                "mem_method": "off" if args.memory == "off" else "" if runner.backend == "eager" else "eager_only",
                "max_abs_diff": float("nan"),
                "times_ms": ";".join(f"{1000 * t:.4f}" for t in measured),
            }
            if ok:
                first, median, third = quartiles([1000 * t for t in measured])
                row.update(
                    median_ms=median,
                    iqr_ms=third - first,
                    min_ms=1000 * min(measured),
                    max_ms=1000 * max(measured),
                    images_per_s=batch_size / (median / 1000),
                )
                runner.set_inputs(*config)
                try:
                    row["max_abs_diff"] = runner.output_difference()
                except Exception as error:
                    report(f"  output check of {name} failed: {type(error).__name__}: {str(error)[:200]}")
                if not args.no_flops:
                    try:
                        row["gflops"] = runner.count_flops() / 1e9
                    except Exception as error:  # the count is extra; never lose the timings for it
                        report(f"  FLOP count of {name} failed: {type(error).__name__}: {str(error)[:200]}")
                    row["tflops_per_s"] = row["gflops"] / 1e3 / (median / 1000)
                    if args.peak_tflops_value is not None:
                        row["peak_fraction"] = row["tflops_per_s"] / args.peak_tflops_value
                if args.memory == "inprocess" and runner.backend == "eager":
                    try:
                        row["peak_mem_mib"], row["mem_method"] = measure_step_memory(runner)
                    except Exception as error:
                        row["mem_method"] = "oom" if is_out_of_memory(error) else "error"
                runner.clear_inputs()
            rows.append(row)
        summary = ", ".join(
            f"{row['model']} {row['median_ms']:.1f} ms" if row["status"] == "ok" else f"{row['model']} {row['status']}"
            for row in rows[-len(runners) :]
        )
        report(f"  {mode:9s} size {size:5d} batch {batch_size:3d}: {summary}")
    return rows


def main(argv=None, default_output_dir: Path = DEFAULT_OUTPUT_DIR) -> int:
    args = parse_args(argv, default_output_dir)
    if args.malloc_cache and args.device == "cpu" and args.memory_probe is None and not args.plot_only:
        restart_with_malloc_cache(argv)
    if args.memory_probe is not None:
        return memory_probe_main(json.loads(args.memory_probe))
    if args.plot_only:
        meta = json.loads((args.output_dir / "meta.json").read_text())
        skipped = plot_scaling(args.output_dir / "scaling.png", read_results(args.output_dir / "results.csv"), meta)
        print(f"plot skipped: {skipped}" if skipped else f"wrote {args.output_dir / 'scaling.png'}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory == "inprocess" and args.device == "cpu":
        # Before any model exists: glibc gives freed tensors back to the system, so RSS follows live memory.
        # (This also applies to the timed runs of this process; the default subprocess mode avoids that.)
        release_freed_memory_to_os()
    args.peak_tflops_value = args.peak_tflops
    if args.peak_tflops_value is None and args.device == "cuda":
        args.peak_tflops_value = DEFAULT_CUDA_PEAK_TFLOPS
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    import transformers

    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": device_name(args.device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "task": args.task,
        "backend": args.backend,
        "compile": args.compile,
        "attn_implementation": args.attn_implementation,
        "optimizer": args.optimizer,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "memory": args.memory,
        "peak_tflops": args.peak_tflops_value,
        "baseline": args.baseline,
        # These change CPU timings a lot (glibc returns tensors > 32 MiB to the system and faults them in again).
        "environment": {
            key: os.environ[key]
            for key in sorted(os.environ)
            if key.startswith(("MALLOC_", "OMP_", "MKL_", "KMP_")) or key in ("GLIBC_TUNABLES", "LD_PRELOAD")
        },
    }
    report(f"benchmark: {meta['command']}")
    report(
        f"{meta['device_name']} ({args.device}, {meta['threads']} threads of {meta['cpu_count']} cores), "
        f"{args.dtype}, "
        f"attention {args.attn_implementation}, backends {', '.join(args.backend)}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    report(f"models {', '.join(args.models)}; {args.warmup} warm-up + {args.repeats} interleaved timed runs each")
    if args.task == "detection":
        shapes = sorted({*args.sizes, *args.train_sizes})
        report(
            "detection inputs (height x width): "
            + ", ".join("x".join(map(str, detection_shape(size))) for size in shapes)
        )
    environment = " ".join(f"{key}={value}" for key, value in meta["environment"].items())
    report(f"environment: {environment or 'no allocator or threading variables set (glibc malloc defaults)'}")

    rows = []
    for mode in args.modes:
        sizes = args.train_sizes if mode == "train" else args.sizes
        batch_sizes = args.train_batch_sizes if mode == "train" else args.batch_sizes
        inputs = {}  # (size, batch) -> (pixel_values, labels), shared by the models of this mode
        runners = {name: make_runner(name, mode, args, inputs) for name in args.models}
        configurations = [(size, batch_size) for size in sizes for batch_size in batch_sizes]
        rows.extend(benchmark_mode(runners, mode, configurations, args, report))
        del runners, inputs
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()

    if args.memory == "subprocess":
        report("  memory: one subprocess per measurement ...")
        for row in rows:
            if row["status"] == "ok" and row["backend"] == "eager":
                row["peak_mem_mib"], row["mem_method"] = memory_in_subprocess(
                    args, row["model"], row["mode"], row["size"], row["batch_size"]
                )

    add_ratios(rows, args.baseline)
    scaling = scaling_rows(rows)
    print_tables(report, rows, scaling, args)

    write_csv(args.output_dir / "results.csv", CSV_COLUMNS, rows)
    write_csv(args.output_dir / "scaling.csv", SCALING_COLUMNS, scaling)
    write_json_atomically(args.output_dir / "meta.json", meta)
    skipped = plot_scaling(args.output_dir / "scaling.png", rows, meta)
    report(f"\nwrote {args.output_dir / 'results.csv'}, {args.output_dir / 'scaling.csv'}, meta.json, report.txt")
    report(f"plot skipped: {skipped}" if skipped else f"wrote {args.output_dir / 'scaling.png'}")
    write_text_atomically(args.output_dir / "report.txt", "\n".join(report.lines) + "\n")
    return 0
