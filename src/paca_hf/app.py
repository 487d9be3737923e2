"""A Gradio app (the Hub Space in `spaces/pacavit/`) that shows what a PaCa-ViT model predicts for a photo and how it
clusters the photo's patches.

    python -m paca_hf.app --model pacavit-small     # a converted folder or Hub id; or PACAVIT_MODEL=...; make app

Without a model it uses the segmentor `make demo` trained (`outputs/demo/model`) when it exists, else a small
PaCa-ViT classifier with random weights built on the spot, so it starts offline on a fresh machine; a banner says
which. The page shows the top-5 classes (classifiers) or a segmentation overlay with a legend (segmentors, UperNet
included), and per stage the hard cluster map and the soft map of one cluster, chosen with a slider or by clicking on
the hard map; drawing is `paca_hf.visualization`'s. Everything here but [`build_demo`] and [`main`] works without
gradio and is what the tests call.
"""

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from . import visualization
from .images import open_image


MODEL_ENVIRONMENT_VARIABLE = "PACAVIT_MODEL"
DEMO_MODEL_DIR = Path("outputs") / "demo" / "model"
TOP_K = 5
NUM_EXAMPLES = 3
EXAMPLE_SIZE = 224
DISPLAY_SIZE = 384  # longer side, in pixels, of the cluster pictures on the page
MIN_DISPLAY_SIDE = 96  # shorter side at least this (a very wide photo's maps are stretched, not drawn 1 px high)
# Photos are decoded whole before the processor resizes them: a few-hundred-KB PNG can hold 144 MP (6 GB decoded as
# 16-bit). PIL refuses only above 179 MP; the app takes up to a 48 MP phone photo.
MAX_PIXELS = 50_000_000


class AppInputError(ValueError):
    """An input the app cannot show (not an image, too large, ...): its message is shown on the page."""


@dataclass
class AppModel:
    """The model the app runs: `task` is "image-classification", "semantic-segmentation" or "feature-extraction";
    `banner` says where its weights come from when they are not a real checkpoint."""

    model: torch.nn.Module
    image_processor: object
    task: str
    name: str
    banner: str = ""


@dataclass
class Analysis:
    """What one photo gives: `picture` is what the model saw, `(H, W, 3)` uint8 (after the processor's resize and
    crop); `assignments` maps "stage1".. (and "head") to soft assignments `(clusters, h, w)`, each normalised over
    the patches; `classes` the top-5 `(label, probability)` of a classifier; `segmentation` a segmentor's label map
    `(H, W)` at the picture's size; `timings` milliseconds per step."""

    picture: np.ndarray
    assignments: dict[str, np.ndarray]
    classes: list[tuple[str, float]] = field(default_factory=list)
    segmentation: np.ndarray | None = None
    id2label: dict[int, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _task_of(model) -> str:
    name = type(model).__name__
    if name.endswith("ForImageClassification"):
        return "image-classification"
    if name.endswith("ForSemanticSegmentation"):
        return "semantic-segmentation"
    return "feature-extraction"


def random_model(seed: int = 0) -> AppModel:
    """A small PaCa-ViT classifier (the demo's layout, ImageNet-1k classes) with random weights, built offline."""
    from .configuration_pacavit import PaCaViTConfig, load_id2label
    from .image_processing_pil_pacavit import PaCaViTImageProcessorPil
    from .modeling_pacavit import PaCaViTForImageClassification
    from .training.segmentation.demo import DEMO_MODEL

    layout = {key: value for key, value in DEMO_MODEL.items() if key not in ("model_type", "decode_head_hidden_size")}
    config = PaCaViTConfig(**layout, id2label=load_id2label("imagenet-1k"))
    torch.manual_seed(seed)
    model = PaCaViTForImageClassification(config).eval()
    banner = (
        "This model has **random weights** (no model was given and `make demo` has not been run): its classes "
        "mean nothing, its clusters show only what an untrained PaCa-ViT does. Start the app with "
        "`--model FOLDER_OR_HUB_ID` (or `PACAVIT_MODEL`) for a converted checkpoint."
    )
    return AppModel(model, PaCaViTImageProcessorPil(), "image-classification", "random PaCa-ViT classifier", banner)


def load_app_model(name_or_path: str | None = None) -> AppModel:
    """The model to show: `name_or_path` (a converted folder or Hub id), else `$PACAVIT_MODEL`, else the demo's
    trained segmentor in `outputs/demo/model` when it exists, else [`random_model`]. `ValueError` when the given
    model cannot be loaded or has no PaCa-ViT clusters."""
    name_or_path = name_or_path or os.environ.get(MODEL_ENVIRONMENT_VARIABLE) or None
    banner = ""
    if name_or_path is None:
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            return random_model()
        name_or_path = str(DEMO_MODEL_DIR)
        banner = (
            "This model was **trained by `make demo`** on the built-in synthetic scenes (five shapes on "
            "textured backgrounds), not on real photos: try the examples."
        )
    try:
        model, image_processor = visualization.load_model_and_processor(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load model {name_or_path!r}: {error}") from error
    paca = visualization._model_with_clusters(model)  # a model without PaCa-ViT clusters has nothing to show here
    if not any(paca.config.num_clusters) and getattr(paca, "decode_head", None) is None:
        raise ValueError(
            f"{name_or_path!r}: num_clusters is 0 in every stage and there is no PaCa head: no clusters to draw"
        )
    return AppModel(model, image_processor, _task_of(model), str(name_or_path), banner)


def read_photo(path) -> PIL.Image.Image:
    """The uploaded file decoded as the package decodes every image (`paca_hf.images.open_image`: any PIL mode,
    16-bit, CMYK, EXIF orientation); `AppInputError` naming the problem when it is not a (usable) image."""
    if path is None:
        raise AppInputError("Upload a photo or pick an example first.")
    name = Path(path).name
    try:
        with PIL.Image.open(path) as header:  # reads the size only
            width, height = header.size
    except (OSError, ValueError, PIL.Image.DecompressionBombError):
        width = height = 0  # the decoder below names the problem
    if width * height > MAX_PIXELS:
        raise AppInputError(
            f"{name} is {width} x {height} pixels ({width * height / 1e6:.0f} MP): the app takes up to "
            f"{MAX_PIXELS / 1e6:.0f} MP. Please upload a smaller version."
        )
    try:
        return open_image(path)
    except ValueError as error:
        if isinstance(error.__cause__, PIL.Image.DecompressionBombError):
            raise AppInputError(f"{name} is too large to decode safely (PIL's decompression-bomb limit).") from None
        raise AppInputError(f"{name} is not an image the app can read (or it is damaged).") from None


@torch.no_grad()
def analyse(app_model: AppModel, image) -> Analysis:
    """Run the model once on `image` (a path or PIL image) through its own image processor (which resizes any
    image to the model's input size, so large photos cost the same) and collect predictions and clusters."""
    timings = {}
    started = time.perf_counter()
    photo = read_photo(image) if not isinstance(image, PIL.Image.Image) else image
    try:
        pixel_values, picture = visualization.prepare_image(photo, app_model.image_processor)
    except ValueError as error:
        raise AppInputError(f"The image processor cannot use this image: {error}") from None
    timings["preprocess"] = 1000 * (time.perf_counter() - started)

    started = time.perf_counter()
    model = app_model.model
    paca = visualization._model_with_clusters(model)
    if paca is model:
        outputs = model(pixel_values=pixel_values, output_cluster_assignments=True)
        assignments = visualization.assignments_from_outputs(outputs, model)
    else:  # a head over a PaCa-ViT backbone (UperNet): the clusters come from the backbone
        outputs = model(pixel_values=pixel_values)
        assignments = visualization.compute_cluster_assignments(paca, pixel_values)
    timings["model"] = 1000 * (time.perf_counter() - started)

    id2label = {int(key): str(value) for key, value in (model.config.id2label or {}).items()}
    analysis = Analysis(
        picture, {key: value[0].numpy() for key, value in assignments.items()}, id2label=id2label, timings=timings
    )
    if app_model.task == "image-classification":
        probabilities = outputs.logits[0].float().softmax(-1)
        values, indices = probabilities.topk(min(TOP_K, probabilities.numel()))
        analysis.classes = [(id2label.get(int(i), str(int(i))), float(v)) for v, i in zip(values, indices)]
    elif app_model.task == "semantic-segmentation":
        (label_map,) = app_model.image_processor.post_process_semantic_segmentation(
            outputs, target_sizes=[picture.shape[:2]]
        )
        analysis.segmentation = label_map.cpu().numpy()
    return analysis


def stage_choices(analysis: Analysis) -> list[tuple[str, str]]:
    """`(shown name, key)` of every assignment in the analysis, in model order."""
    choices = []
    for key, soft in analysis.assignments.items():
        clusters, height, width = soft.shape
        if key == visualization.HEAD_KEY:
            choices.append((f"segmentation head: {clusters} classes, {height}x{width}", key))
        else:
            choices.append((f"stage {key[len('stage') :]}: {clusters} clusters, {height}x{width} patches", key))
    return choices


def _assignment(analysis: Analysis, key: str) -> np.ndarray:
    if key not in analysis.assignments:
        raise AppInputError(f"no clusters for {key!r}; this model has {list(analysis.assignments)}")
    return analysis.assignments[key]


def cluster_name(analysis: Analysis, key: str, cluster: int) -> str:
    if key == visualization.HEAD_KEY:
        return analysis.id2label.get(cluster, f"class {cluster}")
    return f"cluster {cluster}"


def display_picture(analysis: Analysis) -> np.ndarray:
    """The picture the model saw, scaled (bilinear) to `DISPLAY_SIZE` on its longer side and at least
    `MIN_DISPLAY_SIDE` on its shorter one (stretched if need be, so every patch row stays visible and clickable):
    what maps are drawn on. Returns `(H, W, 3)` uint8."""
    height, width = analysis.picture.shape[:2]
    scale = DISPLAY_SIZE / max(height, width)
    size = (max(MIN_DISPLAY_SIDE, round(width * scale)), max(MIN_DISPLAY_SIDE, round(height * scale)))
    return np.asarray(PIL.Image.fromarray(analysis.picture).resize(size, PIL.Image.BILINEAR))


def hard_map_pictures(analysis: Analysis) -> list[tuple[np.ndarray, str]]:
    """Per stage (and head) the hard cluster map over the picture, captioned: what the gallery shows."""
    pictures, picture = [], display_picture(analysis)
    for label, key in stage_choices(analysis):
        soft = analysis.assignments[key]
        hard = visualization.hard_cluster_map(soft)
        palette = visualization.cluster_palette(soft.shape[0])
        used = int(np.unique(hard).size)
        pictures.append((visualization.draw_hard_map(hard, picture, palette), f"{label}; {used} used"))
    return pictures


def cluster_views(analysis: Analysis, key: str, cluster: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`(hard map, soft map of `cluster`, caption)` of one stage: both `(H, W, 3)` uint8 over [`display_picture`]. A
    cluster past the stage's last is an `AppInputError`."""
    soft = _assignment(analysis, key)
    try:
        cluster = int(cluster)
    except (TypeError, ValueError):
        raise AppInputError(f"a cluster is a whole number, not {cluster!r}") from None
    if not 0 <= cluster < soft.shape[0]:
        raise AppInputError(f"{key} has clusters 0..{soft.shape[0] - 1}, not {cluster}")
    hard = visualization.hard_cluster_map(soft)
    palette = visualization.cluster_palette(soft.shape[0])
    share = 100.0 * float((hard == cluster).mean())
    caption = (
        f"{cluster_name(analysis, key, cluster)}: wins {share:.0f}% of the patches; its soft assignment "
        f"(sums to 1 over the patches) stretched to its own range"
    )
    picture = display_picture(analysis)
    return (
        visualization.draw_hard_map(hard, picture, palette),
        visualization.draw_soft_map(soft[cluster], picture),
        caption,
    )


def cluster_at(analysis: Analysis, key: str, x: int, y: int) -> int:
    """The cluster of the hard map at pixel `(x, y)` of the drawn hard map ([`display_picture`]'s size): what a
    click on it selects."""
    hard = visualization.hard_cluster_map(_assignment(analysis, key))
    height, width = display_picture(analysis).shape[:2]
    if not (0 <= x < width and 0 <= y < height):
        raise AppInputError(f"({x}, {y}) lies outside the {width}x{height} picture")
    return int(
        hard[
            min(int(y * hard.shape[0] / height), hard.shape[0] - 1),
            min(int(x * hard.shape[1] / width), hard.shape[1] - 1),
        ]
    )


def segmentation_annotations(analysis: Analysis) -> list[tuple[np.ndarray, str]]:
    """`(mask (H, W) bool, class name)` of every class present in the segmentation, largest first."""
    if analysis.segmentation is None:
        return []
    labels, counts = np.unique(analysis.segmentation, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [
        (analysis.segmentation == labels[i], analysis.id2label.get(int(labels[i]), str(int(labels[i])))) for i in order
    ]


def timing_text(analysis: Analysis) -> str:
    return " · ".join(f"{step} {milliseconds:.0f} ms" for step, milliseconds in analysis.timings.items())


def example_images(folder: Path, count: int = NUM_EXAMPLES) -> list[str]:
    """Bundled examples: built-in synthetic scenes (`paca_hf.data.scenes`, the demo segmentor's domain) written
    once as PNG files into `folder`. Returns their paths."""
    from .data.scenes import scene_arrays
    from .file_utils import atomic_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"scene-{index}.png"
        if not path.is_file():
            image, _ = scene_arrays(10_000 + index, (EXAMPLE_SIZE, EXAMPLE_SIZE), seed=1)
            with atomic_file(path, "wb") as handle:
                PIL.Image.fromarray(image, mode="RGB").save(handle, format="PNG")
        paths.append(str(path))
    return paths


def build_demo(app_model: AppModel, examples: list[str] | None = None):
    """The gradio `Blocks` of the app (not launched)."""
    import gradio as gr

    def undecoded_upload(image_input):
        """Let an upload reach the app as its file path, undecoded, so the package's decoder reads it and a bad file
        gets the app's own message instead of gradio's. Set on the instance: gradio writes a `.pyi` stub beside the
        module of every `Component` subclass, which would write into the installed package."""
        default = image_input.preprocess

        def preprocess(payload):
            if payload is None or (payload.url and payload.url.startswith("data:")) or payload.path is None:
                return default(payload)
            return payload.path

        image_input.preprocess = preprocess
        return image_input

    def fail(error: Exception):
        raise gr.Error(str(error), print_exception=False)

    def on_photo(image):
        try:
            analysis = analyse(app_model, image)
        except AppInputError as error:
            fail(error)
        started = time.perf_counter()
        choices = stage_choices(analysis)
        key = choices[0][1]
        hard, soft, caption = cluster_views(analysis, key, 0)
        gallery = hard_map_pictures(analysis)
        analysis.timings["drawing"] = 1000 * (time.perf_counter() - started)
        classes = dict(analysis.classes)
        annotated = (
            (analysis.picture, segmentation_annotations(analysis)) if analysis.segmentation is not None else None
        )
        return (
            analysis,
            classes or None,
            annotated,
            gallery,
            gr.update(choices=choices, value=key),
            gr.update(maximum=analysis.assignments[key].shape[0] - 1, value=0),
            hard,
            soft,
            caption,
            timing_text(analysis),
        )

    def on_cluster(analysis, key, cluster):
        if analysis is None:
            return gr.update(), gr.update(), ""
        try:
            hard, soft, caption = cluster_views(analysis, key, cluster)
        except AppInputError as error:
            fail(error)
        return hard, soft, caption

    def on_stage(analysis, key):
        if analysis is None:
            return gr.update(), gr.update(), gr.update(), ""
        hard, soft, caption = cluster_views(analysis, key, 0)
        return gr.update(maximum=analysis.assignments[key].shape[0] - 1, value=0), hard, soft, caption

    def on_click(analysis, key, event: gr.SelectData):
        if analysis is None or event is None or event.index is None:
            return gr.update()
        x, y = event.index
        try:
            return cluster_at(analysis, key, int(x), int(y))
        except AppInputError as error:
            fail(error)

    title = "PaCa-ViT: patch-to-cluster attention"
    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\nModel: `{app_model.name}` ({app_model.task}). Upload a photo or pick an example; "
            "queries come from the patches, keys and values from a few learned clusters of patches, shown "
            "below for every stage."
        )
        if app_model.banner:
            gr.Markdown(f"> {app_model.banner}", elem_id="banner")
        analysis_state = gr.State(None)
        with gr.Row():
            with gr.Column():
                photo = undecoded_upload(
                    gr.Image(label="Photo", type="filepath", sources=["upload", "clipboard"], elem_id="photo")
                )
                run = gr.Button("Analyse", variant="primary", elem_id="analyse")
                examples_block = gr.Examples(examples, inputs=photo, label="Examples") if examples else None
                timings = gr.Markdown(elem_id="timings")
            with gr.Column():
                classes = gr.Label(
                    num_top_classes=TOP_K,
                    label="Top-5 classes",
                    elem_id="classes",
                    visible=app_model.task == "image-classification",
                )
                segmentation = gr.AnnotatedImage(
                    label="Segmentation", elem_id="segmentation", visible=app_model.task == "semantic-segmentation"
                )
        gallery = gr.Gallery(
            label="Hard cluster maps (each patch in the colour of its cluster), one per stage",
            columns=4,
            height="auto",
            elem_id="hard-maps",
        )
        with gr.Row():
            stage = gr.Dropdown(label="Stage", choices=[], elem_id="stage")
            cluster = gr.Slider(0, 1, value=0, step=1, label="Cluster (or click on the hard map)", elem_id="cluster")
        with gr.Row():
            hard_map = gr.Image(
                label="Hard cluster map: click a patch to pick its cluster", interactive=False, elem_id="hard-map"
            )
            soft_map = gr.Image(label="Soft map of the chosen cluster", interactive=False, elem_id="soft-map")
        caption = gr.Markdown(elem_id="caption")

        outputs = [
            analysis_state,
            classes,
            segmentation,
            gallery,
            stage,
            cluster,
            hard_map,
            soft_map,
            caption,
            timings,
        ]
        run.click(on_photo, inputs=photo, outputs=outputs)
        photo.upload(on_photo, inputs=photo, outputs=outputs)
        if examples_block is not None:  # a picked example is analysed once loaded, as an upload is
            examples_block.load_input_event.then(on_photo, inputs=photo, outputs=outputs)
        stage.input(on_stage, inputs=[analysis_state, stage], outputs=[cluster, hard_map, soft_map, caption])
        cluster.input(on_cluster, inputs=[analysis_state, stage, cluster], outputs=[hard_map, soft_map, caption])
        hard_map.select(on_click, inputs=[analysis_state, stage], outputs=cluster).then(
            on_cluster, inputs=[analysis_state, stage, cluster], outputs=[hard_map, soft_map, caption]
        )
    return demo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=None,
        help=f"a converted folder or Hub id (default: ${MODEL_ENVIRONMENT_VARIABLE}, else "
        f"{DEMO_MODEL_DIR} if make demo ran, else a random-weight model)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0 in a Space)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        help="default: $GRADIO_SERVER_PORT, else 7860",
    )
    parser.add_argument(
        "--examples-dir",
        type=Path,
        default=Path("outputs") / "app-examples",
        help="where the bundled example scenes are written",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="photos analysed at once; others wait in the queue")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        app_model = load_app_model(args.model)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        demo = build_demo(app_model, example_images(args.examples_dir))
    except ModuleNotFoundError as error:
        print(f'error: the app needs gradio ({error}): pip install "paca-hf[app]"', file=sys.stderr)
        return 1
    demo.queue(default_concurrency_limit=max(1, args.concurrency))
    try:
        demo.launch(server_name=args.host, server_port=args.port, show_error=True)
    except OSError as error:
        print(f"error: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
