"""Hub-ready repos of the authors' released PaCa-ViT checkpoints: the release table, remote code, model cards, checks
and publishing.

One table (`RELEASES`) maps every checkpoint the authors released to its Hub repo and its download URL. A repo built
by `build_repo` holds `config.json` (with an `auto_map`), `model.safetensors`, `preprocessor_config.json`,
`README.md` (the model card) and the package's configuration / modeling / image-processing source files, so that
`trust_remote_code=True` loads it where `paca_hf` is not installed; with `paca_hf` installed, `import paca_hf` is
enough. `publish` uploads a repo only after its conversion was strict and every check in `check_repo` passed.
"""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .configuration_pacavit import _ADE20K_MODELS, PaCaViTConfig
from .convert import ConversionError, convert_model, default_image_processor, write_atomically



ORGANIZATION = "ivmcl"
AUTHORS_REPO = "https://github.com/iVMCL/PaCaViT"
RELEASE_URL_PREFIX = "https://github.com/iVMCL/PaCaViT/releases/download/pacavit/"
PAPER_URL = "https://arxiv.org/abs/2203.11987"
PAPER_TITLE = "PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers"
PAPER_AUTHORS = "Ryan Grainger, Thomas Paniagua, Xi Song, Naresh Cuntoor, Mun Wai Lee, Tianfu Wu"
BIBTEX = """@inproceedings{grainger2023pacavit,
  title     = {PaCa-ViT: Learning Patch-to-Cluster Attention in Vision Transformers},
  author    = {Grainger, Ryan and Paniagua, Thomas and Song, Xi and Cuntoor, Naresh and Lee, Mun Wai and Wu, Tianfu},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "pacavit.md"

CLASSIFICATION = "image-classification"
SEGMENTATION = "semantic-segmentation"


class PublishError(RuntimeError):
    """A repo that must not be uploaded: its checkpoint is missing, or the built repo failed a check."""


@dataclass(frozen=True)
class Release:
    """One checkpoint released by the authors. `repo_id` is None for releases this package cannot convert (`note`
    says why); `url` is None where the authors give no download link."""

    official_name: str
    repo_id: str | None
    task: str
    title: str
    url: str | None
    metric: float | None  # ImageNet-1k top-1 (%) or ADE20k single-scale mIoU (%), as published; None if unpublished
    params_m: float | None  # millions, as published (or counted, see `numbers_source`)
    gmacs: float | None  # multiply-accumulates of one forward pass (224x224 / 512x512), as published
    numbers_source: str = "paper"  # "paper": the authors' README / paper; "counted": counted on the authors' model
    note: str = ""
    result: str | None = None  # the published result in words where `metric` does not say it (COCO box / mask AP)

    @property
    def convertible(self) -> bool:
        return self.repo_id is not None

    @property
    def repo_name(self) -> str:
        return self.repo_id.split("/")[-1]

    @property
    def dataset(self) -> str:
        return "imagenet-1k" if self.task == CLASSIFICATION else "scene_parse_150"

    @property
    def checkpoint_filenames(self) -> list[str]:
        """File names looked for in a local checkpoints folder, best first."""
        names = [self.url.rsplit("/", 1)[-1]] if self.url else []
        if self.task == CLASSIFICATION:
            names.append(f"IMNET_224_{self.official_name}.pth")
        names.append(f"{self.official_name}.pth")
        return list(dict.fromkeys(names))

    @property
    def imagenet_backbone(self) -> str | None:
        """For an ADE20k segmentor: the ImageNet-1k classifier its backbone was initialised from."""
        entry = _ADE20K_MODELS.get(self.official_name)
        return entry[0] if entry else None


def _release(name, repo, task, title, file, metric, params_m, gmacs, **extra) -> Release:
    url = RELEASE_URL_PREFIX + file if file else None
    return Release(name, repo and f"{ORGANIZATION}/{repo}", task, title, url, metric, params_m, gmacs, **extra)


_C, _S = CLASSIFICATION, SEGMENTATION
_NO_UPERNET = "not converted: no converter for mmseg's UperNet head weights"
_NO_MASK_RCNN = "not converted: transformers has no Mask R-CNN"

# THE table: official name -> Hub repo -> the authors' release (file under RELEASE_URL_PREFIX) and published numbers.
RELEASES: tuple[Release, ...] = (
    # ImageNet-1k classifiers (224x224): conv clustering, MLP clustering, the ConvMixer-teacher models, ablations.
    _release("pacavit_tiny_p2cconv_100_0", "pacavit-tiny", _C, "PaCa-Tiny (conv)",
             "IMNET_224_pacavit_tiny_p2cconv_100_0.pth", 80.9, 12.2, 3.2),
    _release("pacavit_small_p2cconv_100_0", "pacavit-small", _C, "PaCa-Small (conv)",
             "IMNET_224_pacavit_small_p2cconv_100_0.pth", 83.08, 22.0, 5.5),
    _release("pacavit_base_p2cconv_100_0", "pacavit-base", _C, "PaCa-Base (conv)",
             "IMNET_224_pacavit_base_p2cconv_100_0.pth", 83.96, 46.9, 9.5),
    _release("pacavit_small_p2cmlp_100_0", "pacavit-small-mlp", _C, "PaCa-Small (mlp)",
             "IMNET_224_pacavit_small_p2cmlp_100_0.pth", 83.13, 22.6, 5.9),
    _release("pacavit_convmixer_tiny_100", "pacavit-tiny-teacher", _C, "PaCa-Tiny (teacher)",
             None, None, 12.5, 3.4, numbers_source="counted",
             note="not released: the authors' README gives no download link or result for this checkpoint"),
    _release("pacavit_convmixer_small_100", "pacavit-small-teacher", _C, "PaCa-Small (teacher)",
             "IMNET_224_pacavit_convmixer_small_100.pth", 83.17, 21.1, 5.4),
    _release("pacavit_convmixer_base_100", "pacavit-base-teacher", _C, "PaCa-Base (teacher)",
             "IMNET_224_pacavit_convmixer_base_100.pth", 84.22, 46.7, 9.7),
    _release("pacavit_small_p2cconv_2_0", "pacavit-small-clusters-2-0", _C, "PaCa-Small, clusters 2/2/2/0",
             "IMNET_224_pacavit_small_p2cconv_2_0.pth", 82.28, 22.0, 4.7),
    _release("pacavit_small_p2cconv_49_0", "pacavit-small-clusters-49-0", _C, "PaCa-Small, clusters 49/49/49/0",
             "IMNET_224_pacavit_small_p2cconv_49_0.pth", 82.95, 22.0, 5.0),
    _release("pacavit_small_p2cconv_49_100", "pacavit-small-clusters-49-100", _C,
             "PaCa-Small, clusters 49/64/81/100", "IMNET_224_pacavit_small_p2cconv_49_100.pth", 82.98, 22.2, 5.3),
    _release("pacavit_small_p2cconv_100_49", "pacavit-small-clusters-100-49", _C,
             "PaCa-Small, clusters 100/81/64/49", "IMNET_224_pacavit_small_p2cconv_100_49.pth", 82.87, 22.2, 5.3),
    _release("pacavit_small_p2cconv_100", "pacavit-small-clusters-100", _C, "PaCa-Small, clusters 100/100/100/100",
             "IMNET_224_pacavit_small_p2cconv_100.pth", 83.05, 22.3, 5.6),
    _release("pacavit_small_p2cconv_100_blockwise", "pacavit-small-blockwise", _C, "PaCa-Small, block-wise clustering",
             "IMNET_224_pacavit_small_p2cconv_100_blockwise.pth", 82.93, 24.1, 6.1),
    # ADE20k semantic segmentation (512x512, 160k iterations), PaCa head.
    _release("pacahead_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k", "pacavit-tiny-ade20k", _S,
             "PaCa-Tiny (conv) + PaCa head", "pacahead_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k.pth",
             45.65, 13.3, 34.4),
    _release("pacahead_pacavit_small_p2cconv_100_0_512x512_160k_ade20k", "pacavit-small-ade20k", _S,
             "PaCa-Small (conv) + PaCa head", "pacahead_pacavit_small_p2cconv_100_0_512x512_160k_ade20k.pth",
             48.3, 23.2, 47.2),
    _release("pacahead_pacavit_base_p2cconv_100_0_512x512_160k_ade20k", "pacavit-base-ade20k", _S,
             "PaCa-Base (conv) + PaCa head", "pacahead_pacavit_base_p2cconv_100_0_512x512_160k_ade20k.pth",
             50.39, 48.0, 68.5),
    _release("pacahead_pacavit_small_p2cmlp_100_0_512x512_160k_ade20k", "pacavit-small-mlp-ade20k", _S,
             "PaCa-Small (mlp) + PaCa head", "pacahead_pacavit_small_p2cmlp_100_0_512x512_160k_ade20k.pth",
             48.2, 24.0, 50.0),
    _release("pacahead_pacavit_convmixer_small_100_512x512_160k_ade20k", "pacavit-small-teacher-ade20k", _S,
             "PaCa-Small (teacher) + PaCa head", "pacahead_pacavit_convmixer_small_100_512x512_160k_ade20k.pth",
             46.2, 22.2, 46.4),
    _release("pacahead_pacavit_convmixer_base_100_512x512_160k_ade20k", "pacavit-base-teacher-ade20k", _S,
             "PaCa-Base (teacher) + PaCa head", "pacahead_pacavit_convmixer_base_100_512x512_160k_ade20k.pth",
             48.4, 48.8, 68.7),
    # Released by the authors but not convertible here.
    _release("upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k", None, _S, "PaCa-Tiny (conv) + UperNet",
             "upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k.pth", 44.49, 41.6, 229.9, note=_NO_UPERNET),
    _release("upernet_pacavit_small_p2cconv_100_0_512x512_160k_ade20k", None, _S, "PaCa-Small (conv) + UperNet",
             "upernet_pacavit_small_p2cconv_100_0_512x512_160k_ade20k.pth", 47.6, 51.4, 242.7, note=_NO_UPERNET),
    _release("upernet_pacavit_base_p2cconv_100_0_512x512_160k_ade20k", None, _S, "PaCa-Base (conv) + UperNet",
             "upernet_pacavit_base_p2cconv_100_0_512x512_160k_ade20k.pth", 49.67, 77.2, 264.1, note=_NO_UPERNET),
    _release("mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco", None, "instance-segmentation",
             "PaCa-Tiny (conv) + Mask R-CNN", "mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco.pth",
             None, 32.0, 252, note=_NO_MASK_RCNN, result="43.3 box AP / 39.6 mask AP"),
    _release("mask_rcnn_pacavit_small_p2cconv_100_0_mstrain_480_800_1x_coco", None, "instance-segmentation",
             "PaCa-Small (conv) + Mask R-CNN", "mask_rcnn_pacavit_small_p2cconv_100_0_mstrain_480_800_1x_coco.pth",
             None, 41.8, 296, note=_NO_MASK_RCNN, result="46.4 box AP / 41.8 mask AP"),
    _release("mask_rcnn_pacavit_small_p2cmlp_100_0_mstrain_480_800_1x_coco", None, "instance-segmentation",
             "PaCa-Small (mlp) + Mask R-CNN", "mask_rcnn_pacavit_small_p2cmlp_100_0_mstrain_480_800_1x_coco.pth",
             None, 42.4, 303, note=_NO_MASK_RCNN, result="46.6 box AP / 41.9 mask AP"),
    _release("mask_rcnn_pacavit_base_p2cconv_100_0_mstrain_480_800_1x_coco", None, "instance-segmentation",
             "PaCa-Base (conv) + Mask R-CNN", "mask_rcnn_pacavit_base_p2cconv_100_0_mstrain_480_800_1x_coco.pth",
             None, 66.6, 373, note=_NO_MASK_RCNN, result="48.0 box AP / 42.9 mask AP"),
)


def convertible_releases() -> list[Release]:
    return [release for release in RELEASES if release.convertible]


def get_release(name: str) -> Release:
    """The release with this official name or Hub repo id (with or without the organization)."""
    for release in RELEASES:
        if name in (release.official_name, release.repo_id) or (release.repo_id and name == release.repo_name):
            return release
    known = ", ".join(release.official_name for release in convertible_releases())
    raise KeyError(f"Unknown PaCa-ViT release {name!r}. Known: {known}.")


def _result_text(release: Release) -> str:
    if release.result:
        return release.result
    if release.metric is None:
        return "not published"
    return f"{release.metric:g}% top-1" if release.task == CLASSIFICATION else f"{release.metric:g} mIoU"


_TASK_TEXT = {
    CLASSIFICATION: "ImageNet-1k classification",
    SEGMENTATION: "ADE20k segmentation",
    "instance-segmentation": "COCO detection (Mask R-CNN 1x)",
}


def render_releases_table() -> str:
    """The Markdown table of every release (for the project README): official name, Hub repo, task, published
    result, and the authors' download link."""
    lines = [
        "| Authors' checkpoint | Hub repo | Task | Published result | Authors' release |",
        "| --- | --- | --- | --- | --- |",
    ]
    for release in RELEASES:
        if release.convertible:
            repo = f"[`{release.repo_id}`](https://huggingface.co/{release.repo_id})"
        else:
            repo = release.note.replace("|", "/")
        result = _result_text(release)
        if release.url:
            source = f"[{release.url.rsplit('/', 1)[-1]}]({release.url})"
        else:
            source = "not released (no download link in the authors' README)"
        lines.append(f"| `{release.official_name}` | {repo} | {_TASK_TEXT[release.task]} | {result} | {source} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- remote code

REMOTE_CODE_MODULES = ("configuration_pacavit", "modeling_pacavit", "image_processing_pacavit")
# Top-level packages the copied files may import (besides the standard library): transformers and its own
# dependencies, which every environment that can load the repo has.
ALLOWED_IMPORTS = frozenset({"torch", "transformers", "huggingface_hub", "numpy", "PIL", "safetensors"})


def remote_code_files(package_dir: str | os.PathLike | None = None) -> list[Path]:
    """The source files a repo needs for `trust_remote_code=True`: `REMOTE_CODE_MODULES` and, recursively, every
    module they import relatively. Raises `PublishError` if any of them imports something that a machine without
    `paca_hf` may lack (`paca_hf` itself included) or uses a relative import transformers' loader cannot follow."""
    package_dir = Path(package_dir) if package_dir else Path(__file__).resolve().parent
    pending, seen, problems = list(REMOTE_CODE_MODULES), {}, []
    allowed = ALLOWED_IMPORTS | set(sys.stdlib_module_names)
    while pending:
        module = pending.pop(0)
        if module in seen:
            continue
        path = package_dir / f"{module}.py"
        if not path.is_file():
            problems.append(f"{module}.py is imported but does not exist in {package_dir}")
            continue
        seen[module] = path
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] not in allowed:
                        problems.append(f"{where} imports {alias.name!r}")
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    if node.module.split(".")[0] not in allowed:
                        problems.append(f"{where} imports from {node.module!r}")
                elif node.level == 1 and node.module and "." not in node.module:
                    pending.append(node.module)
                else:
                    dots = "." * node.level
                    problems.append(
                        f"{where} uses `from {dots}{node.module or ''} import ...`; transformers' remote-code loader "
                        f"only follows `from .module import name` within one folder"
                    )
    if problems:
        raise PublishError("The source files cannot be shipped as remote code: " + "; ".join(problems))
    return list(seen.values())


def auto_map(task: str) -> dict[str, str]:
    """The `auto_map` of a repo's config.json: which class each Auto class loads with `trust_remote_code=True`."""
    heads = {
        CLASSIFICATION: {"AutoModelForImageClassification": "modeling_pacavit.PaCaViTForImageClassification"},
        SEGMENTATION: {"AutoModelForSemanticSegmentation": "modeling_pacavit.PaCaViTForSemanticSegmentation"},
        "backbone": {},
    }
    if task not in heads:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(heads)}.")
    return {
        "AutoConfig": "configuration_pacavit.PaCaViTConfig",
        "AutoModel": "modeling_pacavit.PaCaViTModel",
        "AutoBackbone": "modeling_pacavit.PaCaViTBackbone",
        **heads[task],
        "AutoImageProcessor": "image_processing_pacavit.PaCaViTImageProcessor",
    }


def _update_json(path: Path, **entries) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(entries)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def add_remote_code(folder: str | os.PathLike, task: str) -> list[Path]:
    """Copy the source files into a saved model folder and add the `auto_map` entries to its `config.json` and
    `preprocessor_config.json` (what transformers' `register_for_auto_class` produces). Returns the copied files."""
    folder = Path(folder)
    copied = []
    for source in remote_code_files():
        shutil.copyfile(source, folder / source.name)
        copied.append(folder / source.name)
    _update_json(folder / "config.json", auto_map=auto_map(task))
    _update_json(
        folder / "preprocessor_config.json",
        auto_map={"AutoImageProcessor": "image_processing_pacavit.PaCaViTImageProcessor"},
    )
    return copied


# --------------------------------------------------------------------------------------------------- model card

_USAGE = {
    CLASSIFICATION: """\
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

repo_id = "{repo_id}"
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True).eval()

image = Image.open("image.jpg").convert("RGB")  # any RGB image
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
probabilities = logits.softmax(dim=-1)[0]
for probability, index in zip(*probabilities.topk(5)):
    print(f"{{model.config.id2label[index.item()]}}: {{probability.item():.3f}}")
""",
    SEGMENTATION: """\
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

repo_id = "{repo_id}"
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained(repo_id, trust_remote_code=True).eval()

image = Image.open("image.jpg").convert("RGB")  # any RGB image
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
# One map of ADE20k class ids per image, at the image's own size (height, width).
segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
for class_id in segmentation.unique().tolist():
    share = (segmentation == class_id).float().mean().item()
    print(f"{{model.config.id2label[class_id]}}: {{share:.1%}} of the pixels")
""",
}


def usage_snippet(release: Release) -> str:
    return _USAGE[release.task].format(repo_id=release.repo_id)


def extract_usage_snippet(card_text: str) -> str:
    """The first ```python block of a model card."""
    match = re.search(r"```python\n(.*?)```", card_text, flags=re.DOTALL)
    if match is None:
        raise PublishError("The model card has no ```python usage block.")
    return match.group(1)


def model_card_data(release: Release):
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = None
    if release.metric is not None:
        if release.task == CLASSIFICATION:
            metric = dict(metric_type="accuracy", metric_name="Top-1 accuracy (%)", dataset_name="ImageNet-1k",
                          task_name="Image Classification", task_type="image-classification")
        else:
            metric = dict(metric_type="mean_iou", metric_name="mIoU (single-scale, %)", dataset_name="ADE20k",
                          task_name="Semantic Segmentation", task_type="image-segmentation")
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
    backbone = release.imagenet_backbone
    return ModelCardData(
        license="mit",
        library_name="transformers",
        pipeline_tag="image-classification" if release.task == CLASSIFICATION else "image-segmentation",
        tags=["vision", "pacavit", "paca-vit", release.task, "custom_code"],
        datasets=[release.dataset],
        metrics=["accuracy" if release.task == CLASSIFICATION else "mean_iou"],
        base_model=get_release(backbone).repo_id if backbone else None,
        model_name=release.repo_name,
        eval_results=eval_results,
    )


def render_model_card(
    release: Release,
    num_parameters: int,
    checkpoint_name: str | None = None,
    checkpoint_sha256: str | None = None,
    template_path: str | os.PathLike | None = None,
):
    """The model card (`huggingface_hub.ModelCard`) of a converted release, rendered from `model_cards/pacavit.md`."""
    from huggingface_hub import ModelCard

    template_path = Path(template_path or MODEL_CARD_TEMPLATE)
    if not template_path.is_file():
        raise PublishError(f"The model card template {str(template_path)!r} is missing.")
    backbone = release.imagenet_backbone
    return ModelCard.from_template(
        model_card_data(release),
        template_path=str(template_path),
        release=release,
        is_classification=release.task == CLASSIFICATION,
        result_text=_result_text(release),
        num_parameters=f"{num_parameters:,}",
        num_parameters_m=f"{num_parameters / 1e6:.1f}",
        backbone_repo=get_release(backbone).repo_id if backbone else None,
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
    if release.metric is None:
        if results:
            problems.append("has a model-index although no result was published")
    elif len(results) != 1 or results[0].metric_value != release.metric or results[0].dataset_type != release.dataset:
        problems.append(f"model-index should hold the published {release.metric} on {release.dataset}: {results}")
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


# --------------------------------------------------------------------------------------------------- building

REPO_FILES = ("README.md", "config.json", "model.safetensors", "preprocessor_config.json") + tuple(
    f"{module}.py" for module in REMOTE_CODE_MODULES
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def sha256sum(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_inputs(config) -> torch.Tensor:
    return torch.randn(1, config.num_channels, 64, 80, generator=torch.Generator().manual_seed(0))


def _main_output(outputs) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state


def _assert_same(expected: torch.Tensor, actual: torch.Tensor, what: str) -> None:
    # The same weights give the same outputs up to float rounding (summation order differs with memory alignment
    # and thread count), i.e. within a small fraction of the outputs' scale.
    scale = max(1.0, expected.abs().max().item())
    try:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)
    except AssertionError as error:
        raise PublishError(f"{what} does not reproduce the converted model's outputs: {error}") from error


def hidden_package_environment(directory: str | os.PathLike) -> dict[str, str]:
    """Environment for a Python subprocess in which `import paca_hf` fails (an importable stub that raises
    ImportError shadows the installed package) and dynamic modules go to `directory`."""
    directory = Path(directory)
    stub = directory / "hide_paca_hf" / "paca_hf"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text('raise ImportError("paca_hf is hidden: this process must not use it")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stub.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["HF_MODULES_CACHE"] = str(directory / "modules")
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


_REMOTE_CHECK = textwrap.dedent(
    """
    import sys
    try:
        import paca_hf  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("paca_hf is importable; the remote-code check needs it hidden")
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForSemanticSegmentation

    folder, task, inputs, outputs, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    auto = AutoModelForImageClassification if task == "image-classification" else AutoModelForSemanticSegmentation
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    for loaded in (model, model.config, processor):
        if not type(loaded).__module__.startswith("transformers_modules."):
            sys.exit(f"{type(loaded)} was not loaded from the repo's code")
    image = np.arange(48 * 40 * 3, dtype=np.uint8).reshape(48, 40, 3)
    with torch.no_grad():
        logits = model(load_file(inputs)["pixel_values"]).logits
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    save_file({"logits": logits.contiguous(), "processed": pixel_values.contiguous()}, outputs)
    """
)


# Digests of repo folders that passed `check_remote_code` in this process (the check starts a Python process).
_REMOTE_CODE_CHECKED: set[str] = set()


def _folder_digest(folder: Path, task: str) -> str:
    digest = hashlib.sha256(task.encode())
    for path in sorted(folder.iterdir()):
        digest.update(f"{path.name}\0{sha256sum(path)}\0".encode())
    return digest.hexdigest()


def check_remote_code(folder: str | os.PathLike, task: str, model, image_processor) -> None:
    """Load `folder` with `trust_remote_code=True` in a subprocess where `paca_hf` cannot be imported, and check that
    the model and the image processor compute what the local classes compute. A folder whose files are byte for
    byte those of one that already passed in this process is not loaded again (the caller has checked that the
    weights file holds exactly `model`'s weights)."""
    from safetensors.torch import load_file, save_file

    digest = _folder_digest(Path(folder), task)
    if digest in _REMOTE_CODE_CHECKED:
        return
    with tempfile.TemporaryDirectory(prefix="paca-remote-check-") as tmp:
        pixel_values = _check_inputs(model.config)
        save_file({"pixel_values": pixel_values}, f"{tmp}/inputs.safetensors")
        result = subprocess.run(
            [sys.executable, "-c", _REMOTE_CHECK, str(Path(folder).resolve()), task, f"{tmp}/inputs.safetensors",
             f"{tmp}/outputs.safetensors", str(torch.get_num_threads())],
            cwd=tmp, env=hidden_package_environment(tmp), capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0:
            raise PublishError(
                f"The repo does not load with trust_remote_code=True without paca_hf:\n{result.stderr[-4000:]}"
            )
        outputs = load_file(f"{tmp}/outputs.safetensors")
    with torch.no_grad():
        expected = model(pixel_values).logits
    _assert_same(expected, outputs["logits"], "The repo loaded as remote code")
    image = torch.arange(48 * 40 * 3, dtype=torch.uint8).reshape(48, 40, 3).numpy()
    _assert_same(image_processor(images=image, return_tensors="pt")["pixel_values"], outputs["processed"],
                 "The image processor loaded as remote code")
    _REMOTE_CODE_CHECKED.add(digest)


@torch.no_grad()
def check_repo(folder: str | os.PathLike, release: Release, model, remote_code: bool = True) -> list[str]:
    """Every check a repo must pass before it is uploaded; returns its file list. Raises `PublishError`.

    The folder holds exactly `REPO_FILES` (no pickle); `model.safetensors` holds bit for bit the converted weights;
    the folder reloads (local classes) to the same outputs; the card parses with the release's metadata; and, with
    `remote_code`, the folder loads with `trust_remote_code=True` where `paca_hf` is not importable."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    folder = Path(folder)
    files = sorted(path.name for path in folder.iterdir())
    if any(name.endswith(PICKLE_SUFFIXES) for name in files) or set(files) != set(REPO_FILES):
        raise PublishError(f"The repo holds {files}, expected exactly {sorted(REPO_FILES)}.")
    try:
        stored = load_file(folder / "model.safetensors")
    except Exception as error:  # noqa: BLE001
        raise PublishError(f"model.safetensors does not load: {error}") from error
    weights = model.state_dict()
    if set(stored) != set(weights) or any(not torch.equal(stored[key], weights[key]) for key in weights):
        raise PublishError("model.safetensors does not hold exactly the converted weights.")
    reloaded = type(model).from_pretrained(folder).eval()
    pixel_values = _check_inputs(model.config)
    _assert_same(_main_output(model(pixel_values)), _main_output(reloaded(pixel_values)), "The reloaded repo")
    config = json.loads((folder / "config.json").read_text())
    if config.get("auto_map") != auto_map(release.task):
        raise PublishError(f"config.json has auto_map {config.get('auto_map')}, expected {auto_map(release.task)}.")
    check_model_card((folder / "README.md").read_text(encoding="utf-8"), release)
    if remote_code:
        image_processor = AutoImageProcessor.from_pretrained(folder)
        check_remote_code(folder, release.task, model, image_processor)
    return files


@dataclass
class BuiltRepo:
    folder: Path
    files: list[str]
    model: torch.nn.Module


def build_repo(
    checkpoint: str | os.PathLike,
    release: Release | str,
    output_dir: str | os.PathLike,
    config: str | os.PathLike | PaCaViTConfig | None = None,
    remote_code_check: bool = True,
) -> BuiltRepo:
    """Convert one of the authors' checkpoints into a complete Hub repo folder: weights (safetensors), config with
    `auto_map`, image processor, source files and model card. `config` defaults to the release's official config.
    The folder is written only once the conversion is strict and `check_repo` passed; otherwise the error is raised
    and `output_dir` is left as it was."""
    release = get_release(release) if isinstance(release, str) else release
    if not release.convertible:
        raise PublishError(f"{release.official_name} cannot be converted: {release.note}")
    model = convert_model(checkpoint, release.official_name if config is None else config, release.task)
    expected = 1000 if release.task == CLASSIFICATION else 150
    if config is None and model.config.num_labels != expected:
        raise ConversionError(
            f"The checkpoint's head has {model.config.num_labels} classes; {release.official_name} has {expected}."
        )
    image_processor = default_image_processor(release.task)
    card = render_model_card(
        release,
        num_parameters=sum(parameter.numel() for parameter in model.parameters()),
        checkpoint_name=Path(checkpoint).name,
        checkpoint_sha256=sha256sum(checkpoint),
    )
    files = []

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        image_processor.save_pretrained(folder)
        add_remote_code(folder, release.task)
        card.save(folder / "README.md")
        files.extend(check_repo(folder, release, model, remote_code=remote_code_check))

    folder = write_atomically(output_dir, write)
    return BuiltRepo(folder=folder, files=files, model=model)


# --------------------------------------------------------------------------------------------------- publishing


def download_checkpoint(url: str, destination: str | os.PathLike) -> Path:
    """Download `url` to `destination` (kept if already complete). Refuses in offline mode (`HF_HUB_OFFLINE`)."""
    from huggingface_hub import constants

    destination = Path(destination)
    if destination.is_file():
        return destination
    if constants.is_offline_mode():
        raise PublishError(
            f"Offline (HF_HUB_OFFLINE is set): cannot download {url}; pass --checkpoints-dir with the file."
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            shutil.copyfileobj(response, handle, length=1 << 20)
        os.replace(partial, destination)
    except OSError as error:
        raise PublishError(f"Could not download {url}: {error}") from error
    finally:
        partial.unlink(missing_ok=True)
    return destination


def locate_checkpoint(release: Release, checkpoints_dir=None, download_dir=None, download=download_checkpoint):
    """The checkpoint file of a release: from `checkpoints_dir` when given (never downloaded then), else downloaded
    from the authors' release URL into `download_dir`."""
    if checkpoints_dir is not None:
        for name in release.checkpoint_filenames:
            if (Path(checkpoints_dir) / name).is_file():
                return Path(checkpoints_dir) / name
        raise PublishError(
            f"No checkpoint for {release.official_name} in {checkpoints_dir} (looked for "
            f"{', '.join(release.checkpoint_filenames)})."
        )
    if release.url is None:
        raise PublishError(f"{release.official_name} has no release URL ({release.note}); pass --checkpoints-dir.")
    return download(release.url, Path(download_dir) / release.checkpoint_filenames[0])


def upload_repo(api, repo_id: str, folder: str | os.PathLike, files: list[str], commit_message: str) -> None:
    """Create the Hub repo if needed and upload exactly `files` of a checked folder in one commit, deleting any
    pickle file an earlier upload may have left."""
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=list(files),
        delete_patterns=[f"*{suffix}" for suffix in PICKLE_SUFFIXES],
        commit_message=commit_message,
    )


def publish(
    names=None,
    checkpoints_dir=None,
    work_dir="outputs/hub",
    api=None,
    dry_run: bool = False,
    download=download_checkpoint,
    log=print,
) -> dict[str, str]:
    """Build, check and upload the repos of `names` (official names or repo ids; default: every convertible
    release). A repo is uploaded (`api.create_repo` then `api.upload_folder`) only after `build_repo` succeeded,
    i.e. after a strict conversion and every check; with `dry_run` nothing is uploaded and the repo id and files are
    printed. Releases without a download link are skipped unless named or found in `checkpoints_dir`.

    Returns {official name: "uploaded" | "dry-run" | "skipped: ..." | "failed: ..."}."""
    releases = [get_release(name) for name in names] if names else convertible_releases()
    if api is None and not dry_run:
        from huggingface_hub import HfApi

        api = HfApi()
    work_dir = Path(work_dir)
    status = {}
    for release in releases:
        name = release.official_name
        if not release.convertible:
            status[name] = f"failed: {release.note}"
            log(f"error: {name}: {release.note}")
            continue
        if release.url is None and not names and (
            checkpoints_dir is None
            or not any((Path(checkpoints_dir) / file).is_file() for file in release.checkpoint_filenames)
        ):
            status[name] = f"skipped: {release.note}"
            log(f"skipped: {name}: {release.note}")
            continue
        try:
            checkpoint = locate_checkpoint(release, checkpoints_dir, work_dir / "downloads", download)
            log(f"converting {name} from {checkpoint}")
            built = build_repo(checkpoint, release, work_dir / "repos" / release.repo_name)
        except (ConversionError, PublishError) as error:
            status[name] = f"failed: {error}"
            log(f"error: {name}: nothing uploaded to {release.repo_id}: {error}")
            continue
        built.model = None  # free it before the next release is built
        if dry_run:
            size = sum((built.folder / file).stat().st_size for file in built.files)
            log(f"[dry-run] would upload {release.repo_id} ({len(built.files)} files, {size / 1e6:.1f} MB):")
            for file in built.files:
                log(f"  {file}")
            status[name] = "dry-run"
            continue
        upload_repo(api, release.repo_id, built.folder, built.files,
                    commit_message=f"Upload {name}, converted from the authors' checkpoint")
        status[name] = "uploaded"
        log(f"uploaded {release.repo_id}")
    return status
