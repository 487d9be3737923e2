#!/usr/bin/env python
"""How well and how fast `make demo` trains: runs the demo's fine-tune (same model, data and schedule) for a few
seeds and prints the validation mIoU and the minutes each took, plus mean and spread. Not a test: the minutes
depend on the machine and on what else runs on it.

    python scripts/benchmark_demo.py --seeds 0 1 2
"""

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

from paca_hf.file_utils import write_json_atomically
from paca_hf.training.segmentation import demo


ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="mIoU and minutes of the demo's fine-tune over seeds.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max_train_steps", type=int, default=demo.DEMO_SETTINGS["max_train_steps"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output_dir", type=Path, default=ROOT / "outputs" / "benchmark_demo")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    rows = []
    for seed in args.seeds:
        results, minutes = demo.run_finetune(
            args.output_dir / f"seed_{seed}",
            seed=seed,
            settings={"max_train_steps": args.max_train_steps},
            threads=args.threads,
            quiet=True,
        )
        rows.append(
            {
                "seed": seed,
                "eval_mean_iou": results["eval_mean_iou"],
                "eval_mean_accuracy": results["eval_mean_accuracy"],
                "eval_overall_accuracy": results["eval_overall_accuracy"],
                "minutes": round(minutes, 2),
                "per_category_iou": results.get("eval_per_category_iou"),
            }
        )
        print(f"seed {seed}: mIoU {results['eval_mean_iou']:.4f}  {minutes:.1f} min", flush=True)

    mious = [row["eval_mean_iou"] for row in rows]
    minutes = [row["minutes"] for row in rows]
    summary = {
        "settings": dict(demo.DEMO_SETTINGS, max_train_steps=args.max_train_steps),
        "model": demo.DEMO_MODEL,
        "threads": args.threads or demo.default_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "runs": rows,
        "miou_mean": statistics.mean(mious),
        "miou_stdev": statistics.stdev(mious) if len(mious) > 1 else 0.0,
        "minutes_mean": statistics.mean(minutes),
    }
    write_json_atomically(args.output_dir / "results.json", summary)
    spread = f" +- {summary['miou_stdev']:.4f}" if len(mious) > 1 else ""
    print(
        f"demo fine-tune over {len(rows)} seed(s): mIoU {summary['miou_mean']:.4f}{spread}, "
        f"{summary['minutes_mean']:.1f} min per run ({summary['threads']} thread(s), {os.cpu_count()} cores)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
