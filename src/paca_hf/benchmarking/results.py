"""Benchmark results: statistics (quartiles, ratios to the baseline, scaling between sizes), the printed report,
CSV files and the scaling plot."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from ..file_utils import atomic_file


CSV_COLUMNS = (
    "model",
    "mode",
    "size",
    "batch_size",
    "pixels",
    "device",
    "dtype",
    "attn_implementation",
    "task",
    "backend",
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
    "max_abs_diff",
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

    if getattr(args, "task", "") == "data":
        report("\nImages per second per thread (per CPU core when each thread has a core)")
        report.table(
            ["mode", "size", "batch"] + models,
            [
                [k[0], str(k[1]), str(k[2])]
                + [cell(k, m, lambda r: f"{r['images_per_s'] / r['threads']:.2f}") for m in models]
                for k in configurations
            ],
        )
        return
    if any(row.get("backend", "eager") != "eager" for row in rows):
        report("\nLargest absolute difference of the inference logits from the eager model's (same weights, inputs)")
        report.table(
            ["mode", "size", "batch"] + models,
            [
                [k[0], str(k[1]), str(k[2])] + [cell(k, m, lambda r: fmt(r["max_abs_diff"], ".2e")) for m in models]
                for k in configurations
                if k[0] == "inference"
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
    with atomic_file(path, "w", newline="") as handle:
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
        "task",
        "backend",
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
    with atomic_file(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)
    return None
