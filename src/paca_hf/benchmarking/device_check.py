"""One-shot GPU check (`scripts/device_check.sh`): three measurements on one GPU, summarised in one table.

1. inference, bf16, 224 x 224, batch 128, SDPA: PaCa-Tiny/Small/Base, Swin-T and PVTv2-b2, eager and
   `torch.compile` (`scripts/benchmark.py --backend eager,compile`), images/s;
2. a bf16 (autocast) training step of the ADE20k segmentor (PaCa-Tiny + PaCa head) at 512 x 512, batch 8, AdamW,
   against Segformer-B2: images/s and peak memory (`--task segmentation`). PaCa-Tiny runs with the Mix-FFN in bands
   (`chunk_size_feed_forward=4096`) and over the whole map (`=0`), in inference and training, so that the per-device
   default of `chunk_size_feed_forward` is decided by measurement;
3. 50 steps of `scripts/finetune_ade20k.py --mixed_precision bf16` on the built-in scenes (PaCa-Tiny's ADE20k config
   from scratch): the run must end with a finite loss and a saved model.

`--cpu --quick` is the dry mode (what the tests run, and what runs where there is no GPU): the same three steps on
the CPU, in fp32, at toy sizes and without `torch.compile`, to prove the commands, their outputs and the table.

Outputs in `--output-dir` (default outputs/device_check): one folder per step (the benchmark's results.csv etc., the
fine-tune's output folder and log) and device_check.txt, the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from ..file_utils import write_text_atomically
from .results import Report, fmt


ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ROOT / "scripts"
CHUNK_SETTINGS = ("pacavit-tiny:chunk_size_feed_forward=4096", "pacavit-tiny:chunk_size_feed_forward=0")
SEGMENTOR_CONFIG = "pacahead_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k"

GPU = {
    "classification": [
        "--models",
        "pacavit-tiny,pacavit-small,pacavit-base,swin-t,pvtv2-b2," + ",".join(CHUNK_SETTINGS),
        "--backend",
        "eager,compile",
        "--sizes",
        "224",
        "--batch-sizes",
        "128",
        "--mode",
        "inference",
        "--device",
        "cuda",
        "--dtype",
        "bf16",
        "--repeats",
        "10",
        "--warmup",
        "3",
        "--baseline",
        "swin-t",
    ],
    "segmentation": [
        "--task",
        "segmentation",
        "--models",
        ",".join(CHUNK_SETTINGS) + ",segformer-b2",
        "--train-sizes",
        "512",
        "--train-batch-sizes",
        "8",
        "--mode",
        "train",
        "--device",
        "cuda",
        "--dtype",
        "bf16",
        "--repeats",
        "10",
        "--warmup",
        "3",
        "--baseline",
        "segformer-b2",
    ],
    "finetune": [
        "--config_name",
        SEGMENTOR_CONFIG,
        "--num_clusters",
        "keep",
        "--dataset_name",
        "builtin-scenes",
        "--builtin_image_size",
        "512",
        "--crop_size",
        "512",
        "--per_device_train_batch_size",
        "8",
        "--num_train_images",
        "400",
        "--num_eval_images",
        "16",
        "--max_train_steps",
        "50",
        "--num_warmup_steps",
        "5",
        "--mixed_precision",
        "bf16",
        "--num_workers",
        "4",
        "--logging_steps",
        "10",
        "--disable_tqdm",
    ],
}
QUICK_CPU = {
    "classification": [
        "--models",
        "pvtv2-b2," + ",".join(CHUNK_SETTINGS),
        "--backend",
        "eager",
        "--sizes",
        "64",
        "--batch-sizes",
        "2",
        "--mode",
        "inference",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--baseline",
        "pvtv2-b2",
        "--threads",
        "1",
        "--memory",
        "off",
        "--no-flops",
    ],
    "segmentation": [
        "--task",
        "segmentation",
        "--models",
        ",".join(CHUNK_SETTINGS) + ",segformer-b2",
        "--train-sizes",
        "64",
        "--train-batch-sizes",
        "2",
        "--mode",
        "train",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--baseline",
        "segformer-b2",
        "--threads",
        "1",
        "--memory",
        "inprocess",
        "--no-flops",
    ],
    "finetune": [
        "--config_name",
        SEGMENTOR_CONFIG,
        "--num_clusters",
        "keep",
        "--dataset_name",
        "builtin-scenes",
        "--builtin_image_size",
        "64",
        "--crop_size",
        "64",
        "--per_device_train_batch_size",
        "2",
        "--num_train_images",
        "4",
        "--num_eval_images",
        "2",
        "--max_train_steps",
        "2",
        "--num_warmup_steps",
        "1",
        "--mixed_precision",
        "no",
        "--cpu",
        "--logging_steps",
        "1",
        "--disable_tqdm",
    ],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="scripts/device_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (dry mode; with --quick)")
    parser.add_argument("--quick", action="store_true", help="toy sizes, fp32, no compile (with --cpu)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "device_check")
    args = parser.parse_args(argv)
    if args.cpu != args.quick:
        parser.error("the dry mode is --cpu --quick together; without both the check runs the full sizes on CUDA")
    return args


def run_step(name: str, command: list[str], log: Path, report: Report) -> bool:
    """Run one step as a subprocess (its output to `log`); True when it exits with 0."""
    started = time.perf_counter()
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", PYTHONPATH=_python_path())
    with log.open("w") as handle:
        completed = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    report(f"  {name}: exit {completed.returncode} after {seconds:.0f} s (log {log})")
    return completed.returncode == 0


def _python_path() -> str:
    package_parent = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(path for path in (package_parent, os.environ.get("PYTHONPATH")) if path)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def finetune_outcome(output_dir: Path) -> dict:
    """Final train loss, whether it is finite, and whether a loadable model (config + safetensors) was saved."""
    results_path = output_dir / "all_results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    loss = results.get("train_loss")
    saved = (output_dir / "config.json").exists() and any(output_dir.glob("*.safetensors"))
    return {
        "train_loss": loss,
        "finite_loss": isinstance(loss, (int, float)) and math.isfinite(loss),
        "saved_model": saved,
        "train_steps": results.get("train_steps"),
        "data_wait_fraction": results.get("data_wait_fraction"),
        "eval_mean_iou": results.get("eval_mean_iou"),
    }


def summary_table(report: Report, classification: list[dict], segmentation: list[dict], finetune: dict | None):
    """The one table: every benchmark row (images/s, peak memory, ratio to its baseline) and the fine-tune."""
    body = []
    for row in classification + segmentation:
        ok = row["status"] == "ok"
        task = "segmentation train" if row.get("task") == "segmentation" else row["mode"]
        body.append(
            [
                task,
                row["model"],
                f"{row['size']} x{row['batch_size']} {row['dtype']}",
                fmt(float(row["images_per_s"]), ".1f") if ok else row["status"],
                fmt(float(row["peak_mem_mib"] or "nan"), ".0f") if ok else "-",
                fmt(float(row["ratio_vs_baseline"] or "nan"), ".3f") + f" ({row['baseline']})" if ok else "-",
            ]
        )
    report.table(["what", "model", "size x batch", "images/s", "peak MiB", "time / baseline"], body)
    if finetune is not None:
        report(
            f"\nfine-tune: {finetune['train_steps']} steps, final train loss {finetune['train_loss']} "
            f"({'finite' if finetune['finite_loss'] else 'NOT FINITE'}), model saved: {finetune['saved_model']}, "
            f"data wait {fmt(finetune['data_wait_fraction'] or float('nan'), '.1%')} of step time, "
            f"eval mIoU {finetune['eval_mean_iou']}"
        )


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = QUICK_CPU if args.quick else GPU
    if not args.cpu:
        if not torch_cuda_available():
            print("device_check: no CUDA device; run with --cpu --quick for the dry mode", file=sys.stderr)
            return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    report(f"device check ({'CPU dry mode' if args.cpu else 'GPU'}), outputs in {args.output_dir}")
    python = sys.executable
    ok = True
    for step in ("classification", "segmentation"):
        folder = args.output_dir / step
        command = [python, str(SCRIPTS / "benchmark.py"), *settings[step], "--output-dir", str(folder)]
        ok &= run_step(f"benchmark {step}", command, args.output_dir / f"{step}.log", report)
    finetune_dir = args.output_dir / "finetune"
    command = [python, str(SCRIPTS / "finetune_ade20k.py"), *settings["finetune"], "--output_dir", str(finetune_dir)]
    ok &= run_step("finetune_ade20k", command, args.output_dir / "finetune.log", report)

    finetune = finetune_outcome(finetune_dir)
    report("")
    summary_table(
        report,
        read_rows(args.output_dir / "classification" / "results.csv"),
        read_rows(args.output_dir / "segmentation" / "results.csv"),
        finetune,
    )
    ok &= finetune["finite_loss"] and finetune["saved_model"]
    report(f"\ndevice check: {'PASSED' if ok else 'FAILED'}")
    write_text_atomically(args.output_dir / "device_check.txt", "\n".join(report.lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
