"""Model cards of converted checkpoints (rendered from the package's `templates/model_card.md`) and the README's
table of releases."""

import re
from importlib import resources
from pathlib import Path

from ..releases import BACKBONE, CLASSIFIER, DETECTOR, RELEASES, SEGMENTOR, UPERNET, Architecture, Release, get_release
from .errors import PublishError


AUTHORS_REPO = "https://github.com/iVMCL/PaCaViT"
PAPER_URL = "https://arxiv.org/abs/2203.11987"
PAPER_TITLE = "PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers"
PAPER_AUTHORS = "Ryan Grainger, Thomas Paniagua, Xi Song, Naresh Cuntoor, Mun Wai Lee, Tianfu Wu"
BIBTEX = """@inproceedings{grainger2023pacavit,
  title     = {PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers},
  author    = {Grainger, Ryan and Paniagua, Thomas and Song, Xi and Cuntoor, Naresh and Lee, Mun Wai and Wu, Tianfu},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""

_FORM_TEXT = {
    CLASSIFIER: "classifier (ImageNet-1k)",
    SEGMENTOR: "segmentor, PaCa head (ADE20k)",
    UPERNET: "segmentor, UperNet (ADE20k)",
    DETECTOR: "detector, Mask R-CNN (COCO)",
    BACKBONE: "backbone of a Mask R-CNN (COCO)",
}
_PIPELINE_TAGS = {
    CLASSIFIER: "image-classification",
    SEGMENTOR: "image-segmentation",
    UPERNET: "image-segmentation",
    DETECTOR: "image-segmentation",
    BACKBONE: "image-feature-extraction",
}


def model_card_template() -> str:
    """The card template shipped inside the package (`paca_hf/templates/model_card.md`)."""
    return resources.files("paca_hf").joinpath("templates", "model_card.md").read_text(encoding="utf-8")


def result_text(release: Release) -> str:
    if release.result:
        return release.result
    if release.metric is None:
        return "not published"
    return f"{release.metric:g}% top-1" if release.form == CLASSIFIER else f"{release.metric:g} mIoU"


def render_releases_table() -> str:
    """The Markdown table of every release (for the project README): official name, the form it takes here, the
    Hub repo id `scripts/publish_all.py` creates, published result, and the authors' download link."""
    lines = [
        "| Authors' checkpoint | Form in transformers | Repo id (created by `publish_all.py`) | Published result "
        "| Authors' release |",
        "| --- | --- | --- | --- | --- |",
    ]
    for release in RELEASES:
        if release.url:
            source = f"[{release.url.rsplit('/', 1)[-1]}]({release.url})"
        else:
            source = "not released (no download link in the authors' README)"
        lines.append(
            f"| `{release.official_name}` | {_FORM_TEXT[release.form]} | `{release.repo_id}` | "
            f"{result_text(release)} | {source} |"
        )
    return "\n".join(lines) + "\n"


_USAGE = {
    CLASSIFIER: """\
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

repo_id = "{repo_id}"
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True).eval()

image = Image.open("image.jpg")  # any mode: the processor decodes 16-bit, palette, CMYK and EXIF orientation
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
probabilities = logits.softmax(dim=-1)[0]
for probability, index in zip(*probabilities.topk(5)):
    print(f"{{model.config.id2label[index.item()]}}: {{probability.item():.3f}}")
""",
    SEGMENTOR: """\
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

repo_id = "{repo_id}"
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained(repo_id, trust_remote_code=True).eval()

image = Image.open("image.jpg")  # any mode: the processor decodes 16-bit, palette, CMYK and EXIF orientation
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
# One map of class ids per image, at the image's own size (height, width).
segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
for class_id in segmentation.unique().tolist():
    share = (segmentation == class_id).float().mean().item()
    print(f"{{model.config.id2label[class_id]}}: {{share:.1%}} of the pixels")
""",
    UPERNET: """\
from PIL import Image
from transformers import pipeline

import paca_hf  # noqa: F401  (registers the PaCa-ViT backbone with transformers)

repo_id = "{repo_id}"
segmenter = pipeline("image-segmentation", model=repo_id)
image = Image.open("image.jpg")  # any mode: the processor decodes 16-bit, palette, CMYK and EXIF orientation
for segment in segmenter(image):
    share = sum(1 for value in segment["mask"].getdata() if value) / (image.width * image.height)
    print(f"{{segment['label']}}: {{share:.1%}} of the pixels")
""",
    DETECTOR: """\
from PIL import Image
from transformers import pipeline

repo_id = "{repo_id}"
image = Image.open("image.jpg")  # any mode: the processor decodes 16-bit, palette, CMYK and EXIF orientation
# Boxes, in the image's pixels.
detector = pipeline("object-detection", model=repo_id, trust_remote_code=True)
for detection in detector(image, threshold=0.5):
    print(detection["label"], round(detection["score"], 3), detection["box"])
# Instance masks (one PIL mask per instance; where masks overlap, the higher score keeps the pixel).
segmenter = pipeline("image-segmentation", model=repo_id, subtask="instance", trust_remote_code=True)
for instance in segmenter(image, threshold=0.5):
    print(instance["label"], round(instance["score"], 3), instance["mask"].size)
""",
    BACKBONE: """\
import torch
from transformers import AutoBackbone, AutoConfig, UperNetConfig, UperNetForSemanticSegmentation
from transformers.dynamic_module_utils import get_class_from_dynamic_module

repo_id = "{repo_id}"
# The repo's own backbone class (remote code). `AutoBackbone.from_pretrained` would work for a Hub id online, but
# transformers 5 checks that the repo exists on the Hub first, which fails for local folders and offline.
backbone_class = get_class_from_dynamic_module("modeling_pacavit.PaCaViTBackbone", repo_id)
backbone = backbone_class.from_pretrained(repo_id).eval()
# Make the repo's classes known to the Auto classes, so that transformers' heads can build this backbone
# (not needed after `import paca_hf`).
AutoConfig.register("pacavit", type(backbone.config), exist_ok=True)
AutoBackbone.register(type(backbone.config), type(backbone), exist_ok=True)
pixel_values = torch.randn(1, 3, 512, 768)  # a normalized image batch
with torch.no_grad():
    feature_maps = backbone(pixel_values).feature_maps
for name, features in zip(backbone.out_features, feature_maps):
    print(name, tuple(features.shape))  # strides 4, 8, 16, 32

# A transformers head that takes a backbone: here UperNet for 19 classes, to fine-tune.
model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone.config, num_labels=19))
model.backbone.load_state_dict(backbone.state_dict())  # pretrained backbone; the head is newly initialized
with torch.no_grad():
    print(model.eval()(pixel_values).logits.shape)  # (1, 19, 512, 768)
""",
}


def usage_snippet(release: Release) -> str:
    return _USAGE[release.form].format(repo_id=release.repo_id)


def extract_usage_snippet(card_text: str) -> str:
    """The first ```python block of a model card."""
    match = re.search(r"```python\n(.*?)```", card_text, flags=re.DOTALL)
    if match is None:
        raise PublishError("The model card has no ```python usage block.")
    return match.group(1)


def is_official(release: Release) -> bool:
    return any(release == official for official in RELEASES)


def custom_release(form: str, repo_id: str, checkpoint_name: str) -> Release:
    """A stand-in `Release` for a checkpoint converted with a config that is not an official release: no URL, no
    published numbers."""
    return Release(
        checkpoint_name,
        form,
        Architecture("custom", "conv", ()),
        repo_id,
        f"PaCa-ViT {form} ({checkpoint_name})",
        None,
        None,
        None,
        None,
        numbers_source="none",
    )


def _backbone_repo(release: Release) -> str | None:
    if not is_official(release) or release.initialized_from is None:
        return None
    return get_release(release.initialized_from).repo_id


def _coco_ap(result: str) -> tuple[float, float]:
    """(box AP, mask AP) of a detector's published result (`"43.3 box AP / 39.6 mask AP"`)."""
    match = re.fullmatch(r"([\d.]+) box AP / ([\d.]+) mask AP", result)
    if match is None:
        raise ValueError(f"a detector's result must read 'X box AP / Y mask AP', got {result!r}")
    return float(match[1]), float(match[2])


def model_card_data(release: Release):
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = None
    if release.metric is not None and is_official(release):
        if release.form == CLASSIFIER:
            metric = {
                "metric_type": "accuracy",
                "metric_name": "Top-1 accuracy (%)",
                "dataset_name": "ImageNet-1k",
                "task_name": "Image Classification",
                "task_type": "image-classification",
            }
        else:
            metric = {
                "metric_type": "mean_iou",
                "metric_name": "mIoU (single-scale, %)",
                "dataset_name": "ADE20k",
                "task_name": "Semantic Segmentation",
                "task_type": "image-segmentation",
            }
        eval_results = [
            EvalResult(
                dataset_type=release.dataset,
                dataset_split="validation",
                metric_value=release.metric,
                source_name=f"{PAPER_TITLE} (CVPR 2023), the authors' reported result",
                source_url=AUTHORS_REPO,
                **metric,
            )
        ]
    elif release.form == DETECTOR and is_official(release) and release.result:
        eval_results = [
            EvalResult(
                dataset_type=release.dataset,
                dataset_name="COCO val2017",
                dataset_split="validation",
                metric_value=value,
                source_name=f"{PAPER_TITLE} (CVPR 2023), the authors' reported result",
                source_url=AUTHORS_REPO,
                **metric,
            )
            for value, metric in zip(
                _coco_ap(release.result),
                (
                    {
                        "metric_type": "box_ap",
                        "metric_name": "box AP",
                        "task_name": "Object Detection",
                        "task_type": "object-detection",
                    },
                    {
                        "metric_type": "mask_ap",
                        "metric_name": "mask AP",
                        "task_name": "Instance Segmentation",
                        "task_type": "image-segmentation",
                    },
                ),
            )
        ]
    tags = ["vision", "pacavit", "paca-vit", release.task]
    if release.form == UPERNET:
        tags.append("upernet")
    else:
        tags.append("custom_code")
    return ModelCardData(
        license="mit",
        library_name="transformers",
        pipeline_tag=_PIPELINE_TAGS[release.form],
        tags=tags,
        datasets=[release.dataset] if is_official(release) else None,
        metrics=(
            ["accuracy" if release.form == CLASSIFIER else "mean_iou"]
            if release.metric is not None and is_official(release)
            else None
        ),
        base_model=_backbone_repo(release),
        model_name=release.repo_name,
        eval_results=eval_results,
    )


def render_model_card(
    release: Release,
    num_parameters: int,
    checkpoint_name: str | None = None,
    checkpoint_sha256: str | None = None,
    num_labels: int | None = None,
    not_converted: str | None = None,
    template_path=None,
):
    """The model card (`huggingface_hub.ModelCard`) of a converted checkpoint: an official release, or a
    [`custom_release`] (then the card says it is not one and carries no published numbers). `not_converted`
    describes what the conversion left out (a detector's neck and heads)."""
    from huggingface_hub import ModelCard

    template = Path(template_path).read_text(encoding="utf-8") if template_path else model_card_template()
    official = is_official(release)
    if num_labels is None:
        num_labels = {CLASSIFIER: 1000, SEGMENTOR: 150, UPERNET: 150, DETECTOR: 80}.get(release.form)
    if release.form == BACKBONE and not_converted is None:
        not_converted = "the `neck.`, `rpn_head.` and `roi_head.` tensors of the checkpoint"
    metric_label = {
        CLASSIFIER: "ImageNet-1k top-1 (224x224)",
        SEGMENTOR: "ADE20k mIoU (single-scale, 512x512)",
        UPERNET: "ADE20k mIoU (single-scale, 512x512)",
        DETECTOR: "COCO val2017, Mask R-CNN 1x",
        BACKBONE: "COCO val2017, whole Mask R-CNN 1x detector",
    }[release.form]
    return ModelCard.from_template(
        model_card_data(release),
        template_str=template,
        release=release,
        form=release.form,
        official=official,
        metric_label=metric_label,
        result_text=result_text(release)
        if release.result
        else (f"{release.metric}%" if release.metric is not None else "not published"),
        resolution={CLASSIFIER: "224x224", BACKBONE: "1280x800", DETECTOR: "1280x800"}.get(release.form, "512x512"),
        num_labels=f"{num_labels:,}" if num_labels else "",
        num_parameters=f"{num_parameters:,}",
        backbone_repo=_backbone_repo(release),
        not_converted=not_converted,
        usage=usage_snippet(release).rstrip("\n"),
        checkpoint_name=checkpoint_name,
        checkpoint_sha256=checkpoint_sha256,
        paper_title=PAPER_TITLE,
        paper_authors=PAPER_AUTHORS,
        paper_url=PAPER_URL,
        authors_repo=AUTHORS_REPO,
        bibtex=BIBTEX,
    )


def check_model_card(text: str, release: Release) -> None:
    """Raise `PublishError` unless `text` parses as a model card with the release's metadata (including the
    model-index of its published result), a usage snippet that compiles, and the citation."""
    from huggingface_hub import ModelCard

    problems = []
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as error:  # noqa: BLE001 - any parse failure is reported as such
        raise PublishError(f"The model card does not parse: {error}") from error
    data = card.data
    expected = model_card_data(release)
    for field in ("license", "library_name", "pipeline_tag", "datasets", "base_model", "model_name"):
        found, wanted = getattr(data, field, None), getattr(expected, field, None)
        if found != wanted:
            problems.append(f"`{field}` is {found!r}, expected {wanted!r}")
    results = data.eval_results or []
    if expected.eval_results is None:
        if results:
            problems.append("has a model-index although no result was published")
    else:
        found = [(result.metric_type, result.metric_value, result.dataset_type) for result in results]
        wanted = [(result.metric_type, result.metric_value, result.dataset_type) for result in expected.eval_results]
        if found != wanted:
            problems.append(f"model-index should hold the published results {wanted}: {found}")
    if not is_official(release) and "not one of the authors' released checkpoints" not in text:
        problems.append("the card of a custom conversion must say it is not an official release")
    try:
        snippet = extract_usage_snippet(text)
        compile(snippet, "usage snippet", "exec")
        if f'"{release.repo_id}"' not in snippet:
            problems.append(f"the usage snippet does not load {release.repo_id}")
    except (PublishError, SyntaxError) as error:
        problems.append(str(error))
    if "Grainger" not in text or "CVPR" not in text:
        problems.append("the citation is missing")
    if problems:
        raise PublishError(f"The model card of {release.repo_id} is wrong: " + "; ".join(problems))
