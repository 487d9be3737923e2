#!/usr/bin/env python
"""Speed and memory of PaCa-ViT against transformers' Swin-T and PVTv2-b1/b2, measured side by side.

All models are built from configs with random weights (no Hub download) and ImageNet heads (1000 labels):

    python scripts/benchmark.py                                   # inference, 224/512/1024, batch 1
    python scripts/benchmark.py --mode both --train-sizes 224 --train-batch-sizes 8
    python scripts/benchmark.py --device cuda --dtype bf16 --sizes 224 --batch-sizes 128 --compile
    python scripts/benchmark.py --quick                           # seconds; what the test runs
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

import argparse
import csv
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
try:
    import paca_hf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

MODEL_NAMES = ("pacavit-tiny", "pacavit-small", "pacavit-base", "swin-t", "pvtv2-b1", "pvtv2-b2")
MODES = ("inference", "train")
DEFAULT_CUDA_PEAK_TFLOPS = 989.0  # H100 / H200 SXM, dense bf16 tensor cores
NUM_LABELS = 1000
PROBE_MARKER = "MEMORY_PROBE_RESULT "
CSV_COLUMNS = (
    "model",
    "mode",
    "size",
    "batch_size",
    "pixels",
    "device",
    "dtype",
    "attn_implementation",
    "compiled",
    "threads",
    "optimizer",
    "repeats",
    "status",
    "median_ms",
    "iqr_ms",
    "min_ms",
    "max_ms",
    "images_per_s",
    "baseline",
    "ratio_vs_baseline",
    "gflops",
    "tflops_per_s",
    "peak_tflops",
    "peak_fraction",
    "peak_mem_mib",
    "mem_method",
    "params_m",
    "weights_mib",
    "times_ms",
)
SCALING_COLUMNS = (
    "model",
    "mode",
    "batch_size",
    "size_from",
    "size_to",
    "pixel_ratio",
    "time_ratio",
    "exponent",
)


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


def split_model_name(name: str) -> tuple[str, dict]:
    """`pacavit-tiny:chunk_size_feed_forward=0` -> ("pacavit-tiny", {"chunk_size_feed_forward": 0})."""
    base, *assignments = name.split(":")
    overrides = {}
    for assignment in assignments:
        field, separator, value = assignment.partition("=")
        if not separator or not field:
            raise ValueError(f"config override {assignment!r} of {name!r} is not `field=value`")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"value of {field!r} in {name!r} is not JSON: {value!r}") from None
    if base not in MODEL_NAMES:
        raise ValueError(f"unknown model {base!r}; choose from {', '.join(MODEL_NAMES)}")
    if overrides:
        from paca_hf import PaCaViTConfig

        if not base.startswith("pacavit-"):
            raise ValueError(f"config overrides are for PaCa-ViT models only, got {name!r}")
        unknown = sorted(set(overrides) - set(PaCaViTConfig().to_dict()))
        if unknown:
            raise ValueError(f"{name!r}: PaCaViTConfig has no field {', '.join(unknown)}")
    return base, overrides


def build_config(name: str):
    """Config of a benchmarked model, every hyper-parameter written out (no Hub download)."""
    name, overrides = split_model_name(name)
    if name.startswith("pacavit-"):
        from paca_hf import PaCaViTConfig

        variant = name.split("-", 1)[1]
        return PaCaViTConfig.from_official_name(f"pacavit_{variant}_p2cconv_100_0", **overrides)
    if name == "swin-t":
        from transformers import SwinConfig

        # microsoft/swin-tiny-patch4-window7-224
        return SwinConfig(
            image_size=224,
            patch_size=4,
            num_channels=3,
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            mlp_ratio=4.0,
            qkv_bias=True,
            hidden_act="gelu",
            use_absolute_embeddings=False,
            layer_norm_eps=1e-5,
            drop_path_rate=0.1,
            num_labels=NUM_LABELS,
        )
    if name in ("pvtv2-b1", "pvtv2-b2"):
        from transformers import PvtV2Config

        # OpenGVLab/pvt_v2_b1 and pvt_v2_b2
        return PvtV2Config(
            image_size=224,
            num_channels=3,
            num_encoder_blocks=4,
            hidden_sizes=[64, 128, 320, 512],
            depths=[2, 2, 2, 2] if name == "pvtv2-b1" else [3, 4, 6, 3],
            sr_ratios=[8, 4, 2, 1],
            patch_sizes=[7, 3, 3, 3],
            strides=[4, 2, 2, 2],
            num_attention_heads=[1, 2, 5, 8],
            mlp_ratios=[8, 8, 4, 4],
            hidden_act="gelu",
            qkv_bias=True,
            linear_attention=False,
            layer_norm_eps=1e-6,
            drop_path_rate=0.1,
            num_labels=NUM_LABELS,
        )
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def model_class(name: str):
    if name.startswith("pacavit-"):
        from paca_hf import PaCaViTForImageClassification

        return PaCaViTForImageClassification
    if name == "swin-t":
        from transformers import SwinForImageClassification

        return SwinForImageClassification
    from transformers import PvtV2ForImageClassification

    return PvtV2ForImageClassification


def build_model(name: str, attn_implementation: str) -> torch.nn.Module:
    """Random-weight classifier; models without SDPA support (PVTv2) fall back to their eager attention."""
    cls, config = model_class(name), build_config(name)
    try:
        return cls._from_config(config, attn_implementation=attn_implementation)
    except ValueError:
        if attn_implementation == "eager":
            raise
        return cls._from_config(config, attn_implementation="eager")


@contextmanager
def eager_attention(model: torch.nn.Module):
    """Temporarily route every attention of `model` through its eager (matmul) path."""
    configs = {id(module.config): module.config for module in model.modules() if hasattr(module, "config")}
    configs[id(model.config)] = model.config
    saved = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]


def conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **kwargs,
) -> int:
    """FLOPs of `aten.convolution_backward`: the forward's count for each of grad_input and grad_weight.

    torch's own formula (2.13) ignores `groups` in the backward and counts a depthwise conv's backward `groups`
    times too high (384x for a 384-channel depthwise conv)."""
    weight_fan_in = math.prod(w_shape[1:])  # (in or out channels / groups) * kernel area
    macs = math.prod(x_shape if transposed else grad_out_shape) * weight_fan_in
    return 2 * macs * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def autocast_context(device: str, dtype: torch.dtype, mode: str):
    if mode == "train" and dtype != torch.float32:
        return torch.autocast(device_type=device, dtype=dtype)
    return nullcontext()


class Runner:
    """One model prepared for one mode: `step()` runs one inference or one training step on the current inputs."""

    def __init__(self, name: str, mode: str, args, input_cache: dict | None = None):
        self.name, self.mode, self.args = name, mode, args
        self.device = torch.device(args.device)
        self.dtype = args.torch_dtype
        torch.manual_seed(args.seed)
        model = build_model(name, args.attn_implementation).to(self.device)
        self.attn_implementation = model.config._attn_implementation
        self.params_m = sum(p.numel() for p in model.parameters()) / 1e6
        if mode == "inference":
            model.eval()
            if self.dtype != torch.float32:
                model.to(self.dtype)
        else:
            model.train()
        self.weights_mib = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20
        self.model = model
        # dynamic=False: one specialised graph per input shape (a handful here), as a deployment at one size gets.
        self.forward_model = torch.compile(model, dynamic=False) if args.compile else model
        self.optimizer = None
        if mode == "train":
            if args.optimizer == "adamw":
                self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
            else:
                self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.pixel_values = self.labels = None
        self.input_cache = {} if input_cache is None else input_cache

    def set_inputs(self, size: int, batch_size: int):
        """Random images and labels, the same for every model (fixed seed); cached per (size, batch)."""
        if (size, batch_size) not in self.input_cache:
            generator = torch.Generator().manual_seed(self.args.seed)
            pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
            input_dtype = self.dtype if self.mode == "inference" else torch.float32
            labels = torch.randint(0, NUM_LABELS, (batch_size,), generator=generator)
            self.input_cache[(size, batch_size)] = (
                pixel_values.to(device=self.device, dtype=input_dtype),
                labels.to(self.device),
            )
        self.pixel_values, self.labels = self.input_cache[(size, batch_size)]

    def clear_inputs(self):
        self.pixel_values = self.labels = None

    def step(self, model=None):
        model = model if model is not None else self.forward_model
        if self.mode == "inference":
            with torch.inference_mode():
                return model(pixel_values=self.pixel_values).logits
        with autocast_context(self.device.type, self.dtype, self.mode):
            loss = model(pixel_values=self.pixel_values, labels=self.labels).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def count_flops(self) -> float:
        """FLOPs of one step (forward; plus backward in train) on the eager, uncompiled model."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(
            display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}
        )
        with eager_attention(self.model), counter:
            if self.mode == "inference":
                with torch.inference_mode():
                    self.model(pixel_values=self.pixel_values)
            else:
                with autocast_context(self.device.type, self.dtype, self.mode):
                    loss = self.model(pixel_values=self.pixel_values, labels=self.labels).loss
                loss.backward()
        if self.mode == "train":
            self.model.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed_step(self) -> float:
        self.sync()
        start = time.perf_counter()
        self.step()
        self.sync()
        return time.perf_counter() - start


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, (RuntimeError, MemoryError)) and (
        isinstance(error, MemoryError) or "out of memory" in text or "can't allocate" in text
    )


# --------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------


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


def measure_step_memory(runner: Runner) -> tuple[float, str]:
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
        runner = Runner(args.model, args.mode, args)
        runner.set_inputs(args.size, args.batch_size)
        runner.step()  # warm-up: lazy initialisation, optimizer state
        result["peak_mem_mib"], method = measure_step_memory(runner)
        result["mem_method"] = method + "_subprocess"
    except Exception as error:  # reported to the parent, which carries on
        result = {"status": "oom" if is_out_of_memory(error) else f"error: {type(error).__name__}: {error}"}
    print(PROBE_MARKER + json.dumps(result), flush=True)
    return 0


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
        "compile": False,
        "seed": args.seed,
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", json.dumps(spec)]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
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


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), linear interpolation between order statistics."""
    ordered = sorted(values)

    def at(fraction):
        position = fraction * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return at(0.25), statistics.median(ordered), at(0.75)


def add_ratios(rows: list[dict], baseline: str):
    """ratio_vs_baseline = median_ms / the baseline's median_ms for the same mode, size and batch."""
    reference = {
        (row["mode"], row["size"], row["batch_size"]): row["median_ms"]
        for row in rows
        if row["model"] == baseline and row["status"] == "ok"
    }
    for row in rows:
        base = reference.get((row["mode"], row["size"], row["batch_size"]))
        row["baseline"] = baseline
        ok = base is not None and row["status"] == "ok" and base > 0
        row["ratio_vs_baseline"] = row["median_ms"] / base if ok else float("nan")


def scaling_rows(rows: list[dict]) -> list[dict]:
    """time(size) / time(previous size) per model, mode and batch; exponent = log(time ratio) / log(pixel ratio)."""
    groups = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault((row["model"], row["mode"], row["batch_size"]), []).append(row)
    result = []
    for (model, mode, batch_size), group in groups.items():
        group.sort(key=lambda row: row["size"])
        for small, large in zip(group, group[1:]):
            pixel_ratio = large["pixels"] / small["pixels"]
            time_ratio = large["median_ms"] / small["median_ms"]
            result.append(
                {
                    "model": model,
                    "mode": mode,
                    "batch_size": batch_size,
                    "size_from": small["size"],
                    "size_to": large["size"],
                    "pixel_ratio": pixel_ratio,
                    "time_ratio": time_ratio,
                    "exponent": math.log(time_ratio) / math.log(pixel_ratio) if time_ratio > 0 else float("nan"),
                }
            )
    return result


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


class Report:
    """Prints and keeps every line for report.txt."""

    def __init__(self):
        self.lines = []

    def __call__(self, text: str = ""):
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: list[str], body: list[list[str]]):
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body)]

        def line(cells):
            return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        self(line(header))
        self("  ".join("-" * width for width in widths))
        for cells in body:
            self(line(cells))


def fmt(value: float, spec: str, empty: str = "-") -> str:
    return empty if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_tables(report: Report, rows: list[dict], scaling: list[dict], args):
    models = list(dict.fromkeys(row["model"] for row in rows))
    keyed = {(row["mode"], row["size"], row["batch_size"], row["model"]): row for row in rows}
    configurations = list(dict.fromkeys((row["mode"], row["size"], row["batch_size"]) for row in rows))
    others = [model for model in models if model != args.baseline]
    has_baseline = args.baseline in models

    def cell(key, model, render):
        row = keyed.get((*key, model))
        if row is None:
            return "-"
        return render(row) if row["status"] == "ok" else row["status"]

    report(f"\nMedian time per step in ms (+- IQR) over {args.repeats} interleaved repeats")
    header = ["mode", "size", "batch"] + models
    if has_baseline:
        header += [f"{model}/{args.baseline}" for model in others]
    body = []
    for key in configurations:
        cells = [key[0], str(key[1]), str(key[2])]
        cells += [cell(key, m, lambda r: f"{r['median_ms']:.1f} +-{r['iqr_ms']:.1f}") for m in models]
        if has_baseline:
            cells += [cell(key, m, lambda r: fmt(r["ratio_vs_baseline"], ".3f")) for m in others]
        body.append(cells)
    report.table(header, body)
    if has_baseline:
        report(f"(ratio < 1: faster than {args.baseline})")
    else:
        report(f"(baseline {args.baseline} not benchmarked: no ratios)")

    report("\nImages per second")
    report.table(
        ["mode", "size", "batch"] + models,
        [
            [k[0], str(k[1]), str(k[2])] + [cell(k, m, lambda r: f"{r['images_per_s']:.2f}") for m in models]
            for k in configurations
        ],
    )

    report("\nPeak extra memory of one step in MiB (above weights/optimizer state/inputs; see the docstring)")
    report.table(
        ["mode", "size", "batch"] + models,
        [
            [k[0], str(k[1]), str(k[2])] + [cell(k, m, lambda r: fmt(r["peak_mem_mib"], ".0f")) for m in models]
            for k in configurations
        ],
    )
    methods = sorted({row["mem_method"] for row in rows})
    report(f"(method: {', '.join(methods)})")

    if any(not math.isnan(row["gflops"]) for row in rows):
        show_peak = any(not math.isnan(row["peak_fraction"]) for row in rows)
        report("\nGFLOPs per step (FlopCounterMode, eager attention; 2 FLOPs per MAC) and achieved TFLOP/s")

        def compute(r):
            text = f"{r['gflops']:.1f} GF {r['tflops_per_s']:.3g} TF/s"
            return text + (f" {100 * r['peak_fraction']:.1f}%" if show_peak else "")

        report.table(
            ["mode", "size", "batch"] + models,
            [[k[0], str(k[1]), str(k[2])] + [cell(k, m, compute) for m in models] for k in configurations],
        )
        if show_peak:
            peak = next(row["peak_tflops"] for row in rows)
            report(
                f"(% = fraction of a peak of {peak:g} TFLOP/s"
                + (", the default: H100/H200 SXM dense bf16)" if args.peak_tflops is None else ")")
            )

    if scaling:
        report(
            "\nScaling: time(size) / time(previous size)  "
            "[exponent = log(time ratio) / log(pixel ratio); 1 = linear in pixels]"
        )
        report.table(
            ["model", "mode", "batch", "sizes", "pixels x", "time x", "exponent"],
            [
                [
                    s["model"],
                    s["mode"],
                    str(s["batch_size"]),
                    f"{s['size_from']}->{s['size_to']}",
                    f"{s['pixel_ratio']:.2f}",
                    f"{s['time_ratio']:.2f}",
                    f"{s['exponent']:.2f}",
                ]
                for s in scaling
            ],
        )


def write_csv(path: Path, columns, rows: list[dict]):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(row.get(column)) for column in columns})


def read_results(path: Path) -> list[dict]:
    """results.csv back as rows with numbers (for --plot-only)."""
    integers = {"size", "batch_size", "pixels", "threads", "repeats"}
    texts = {
        "model",
        "mode",
        "device",
        "dtype",
        "attn_implementation",
        "compiled",
        "optimizer",
        "status",
        "baseline",
        "mem_method",
        "times_ms",
    }
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for key, value in raw.items():
                if key in texts:
                    row[key] = value
                elif key in integers:
                    row[key] = int(value)
                else:
                    row[key] = float(value) if value != "" else float("nan")
            rows.append(row)
    return rows


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)  # repr: full precision, ratios re-derivable exactly
    return "" if value is None else value


def plot_scaling(path: Path, rows: list[dict], meta: dict) -> str | None:
    """Log-log median time against pixels, one line per model, one panel per (mode, batch) measured at two sizes
    or more (all panels if none is); None when written, else why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[plot]')"
    ok = [row for row in rows if row["status"] == "ok"]
    panels = list(dict.fromkeys((row["mode"], row["batch_size"]) for row in ok))
    if not panels:
        return "no successful measurements"
    sizes_of = {panel: {row["size"] for row in ok if (row["mode"], row["batch_size"]) == panel} for panel in panels}
    panels = [panel for panel in panels if len(sizes_of[panel]) > 1] or panels
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for axis, (mode, batch_size) in zip(axes[0], panels):
        panel = [row for row in ok if row["mode"] == mode and row["batch_size"] == batch_size]
        for model in dict.fromkeys(row["model"] for row in panel):
            points = sorted((row["pixels"], row["median_ms"], row["size"]) for row in panel if row["model"] == model)
            label = model
            if len(points) > 1:
                label += f" (x{points[-1][1] / points[-2][1]:.2f} from {points[-2][2]} to {points[-1][2]})"
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        pixels = sorted({row["pixels"] for row in panel})
        if len(pixels) > 1:
            anchor = min(row["median_ms"] for row in panel if row["pixels"] == pixels[0])
            axis.plot(pixels, [anchor * p / pixels[0] for p in pixels], "k--", alpha=0.4, label="linear in pixels")
        sizes = sorted({row["size"] for row in panel})
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks([size * size for size in sizes], [f"{size}²" for size in sizes])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_locator(NullLocator())
        axis.set_xlabel("pixels (image side²)")
        axis.set_ylabel("median time per step (ms)")
        axis.set_title(f"{mode}, batch {batch_size}")
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(
        f"{meta['device_name']} ({meta['device']}, {meta['dtype']}, {meta['threads']} threads), "
        f"medians of {meta['repeats']} interleaved runs",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return None


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def name_list(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    for name in names:
        try:
            split_model_name(name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return names


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        type=name_list,
        help=f"comma-separated, from {', '.join(MODEL_NAMES)}, PaCa-ViT ones optionally with `:field=value` config "
        f"overrides (default {','.join(DEFAULTS['models'])})",
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
        "--compile", action="store_true", help="torch.compile every model (at least 2 warm-up runs, which compile)"
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
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "benchmark")
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
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.train_sizes = args.train_sizes or args.sizes
    args.train_batch_sizes = args.train_batch_sizes or args.batch_sizes
    args.modes = list(MODES) if args.mode == "both" else [args.mode]
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.compile and args.warmup < 2:
        args.warmup = 2  # compilation (and the recompilation some models need on their second call) is not timed
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
                "pixels": size * size,
                "device": args.device,
                "dtype": args.dtype,
                "attn_implementation": runner.attn_implementation,
                "compiled": args.compile,
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
                "mem_method": "off" if args.memory == "off" else "",
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
                if not args.no_flops:
                    try:
                        row["gflops"] = runner.count_flops() / 1e9
                    except Exception as error:  # the count is extra; never lose the timings for it
                        report(f"  FLOP count of {name} failed: {type(error).__name__}: {str(error)[:200]}")
                    row["tflops_per_s"] = row["gflops"] / 1e3 / (median / 1000)
                    if args.peak_tflops_value is not None:
                        row["peak_fraction"] = row["tflops_per_s"] / args.peak_tflops_value
                if args.memory == "inprocess":
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
    command = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
    sys.stdout.flush()
    os.execve(sys.executable, command, dict(os.environ, **MALLOC_CACHE_ENV))


def main(argv=None) -> int:
    args = parse_args(argv)
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
        f"attention {args.attn_implementation}{', torch.compile' if args.compile else ''}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    report(f"models {', '.join(args.models)}; {args.warmup} warm-up + {args.repeats} interleaved timed runs each")
    environment = " ".join(f"{key}={value}" for key, value in meta["environment"].items())
    report(f"environment: {environment or 'no allocator or threading variables set (glibc malloc defaults)'}")

    rows = []
    for mode in args.modes:
        sizes = args.sizes if mode == "inference" else args.train_sizes
        batch_sizes = args.batch_sizes if mode == "inference" else args.train_batch_sizes
        inputs = {}  # (size, batch) -> (pixel_values, labels), shared by the models of this mode
        runners = {name: Runner(name, mode, args, inputs) for name in args.models}
        configurations = [(size, batch_size) for size in sizes for batch_size in batch_sizes]
        rows.extend(benchmark_mode(runners, mode, configurations, args, report))
        del runners, inputs
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()

    if args.memory == "subprocess":
        report("  memory: one subprocess per measurement ...")
        for row in rows:
            if row["status"] == "ok":
                row["peak_mem_mib"], row["mem_method"] = memory_in_subprocess(
                    args, row["model"], row["mode"], row["size"], row["batch_size"]
                )

    add_ratios(rows, args.baseline)
    scaling = scaling_rows(rows)
    print_tables(report, rows, scaling, args)

    write_csv(args.output_dir / "results.csv", CSV_COLUMNS, rows)
    write_csv(args.output_dir / "scaling.csv", SCALING_COLUMNS, scaling)
    (args.output_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    skipped = plot_scaling(args.output_dir / "scaling.png", rows, meta)
    report(f"\nwrote {args.output_dir / 'results.csv'}, {args.output_dir / 'scaling.csv'}, meta.json, report.txt")
    report(f"plot skipped: {skipped}" if skipped else f"wrote {args.output_dir / 'scaling.png'}")
    (args.output_dir / "report.txt").write_text("\n".join(report.lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
