"""Writing a converted checkpoint as a complete Hub repo folder (weights, config, image processor, remote code, model
card) and the checks it must pass before anyone loads or uploads it."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..convert import (
    ConversionError,
    build_model,
    convert_source,
    load_checkpoint,
    official_config,
    summarize_prefixes,
)
from ..file_utils import check_replaceable_dir, sha256sum, write_dir_atomically, write_text_atomically
from ..loading import default_image_processor
from ..releases import (
    BACKBONE,
    CLASSIFIER,
    DETECTOR,
    FORM_TASKS,
    OFFICIAL_NAMES,
    SEGMENTOR,
    UPERNET,
    Release,
    get_release,
)
from .errors import PublishError
from .model_card import check_model_card, custom_release, is_official, render_model_card
from .remote_code import (
    add_remote_code,
    assert_same,
    auto_map,
    check_inputs,
    check_remote_code,
    main_output,
    remote_code_files,
)


BASE_FILES = ("README.md", "config.json", "model.safetensors", "preprocessor_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def repo_files(form: str) -> tuple[str, ...]:
    """The exact files of a repo of this form. UperNet repos ship no source files: transformers has UperNet, and
    the PaCa-ViT backbone inside is registered by `import paca_hf` (remote code cannot name a backbone's class)."""
    if form == UPERNET:
        return BASE_FILES
    return BASE_FILES + tuple(path.name for path in remote_code_files(task=FORM_TASKS[form]))


REPO_FILES = repo_files(CLASSIFIER)


def form_of(model) -> str:
    """The release form (`paca_hf.releases.FORMS`) a converted model takes."""
    from transformers import UperNetForSemanticSegmentation

    from ..modeling_pacavit import PaCaViTBackbone, PaCaViTForImageClassification

    if isinstance(model, UperNetForSemanticSegmentation):
        return UPERNET
    if type(model).__name__ == "PaCaViTMaskRCNNForInstanceSegmentation":  # not imported: it needs torchvision
        return DETECTOR
    if isinstance(model, PaCaViTBackbone):
        return BACKBONE
    return CLASSIFIER if isinstance(model, PaCaViTForImageClassification) else SEGMENTOR


@torch.no_grad()
def check_repo(folder: str | os.PathLike, release: Release, model, remote_code: bool = True) -> list[str]:
    """Every check a repo must pass before it is uploaded; returns its file list. Raises `PublishError`.

    The folder holds exactly `repo_files(release.form)` (no pickle); `model.safetensors` holds bit for bit the
    converted weights; the folder reloads (local classes) to the same outputs; the card parses with the release's
    metadata; and, with `remote_code` (not for UperNet), the folder loads with `trust_remote_code=True` where
    `paca_hf` is not importable."""
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    folder = Path(folder)
    files = sorted(path.name for path in folder.iterdir())
    expected_files = repo_files(release.form)
    if any(name.endswith(PICKLE_SUFFIXES) for name in files) or set(files) != set(expected_files):
        raise PublishError(f"The repo holds {files}, expected exactly {sorted(expected_files)}.")
    try:
        stored = load_file(folder / "model.safetensors")
    except Exception as error:  # noqa: BLE001
        raise PublishError(f"model.safetensors does not load: {error}") from error
    weights = model.state_dict()
    if set(stored) != set(weights) or any(not torch.equal(stored[key], weights[key]) for key in weights):
        raise PublishError("model.safetensors does not hold exactly the converted weights.")
    reloaded = type(model).from_pretrained(folder).eval()
    pixel_values = check_inputs(model.config)
    assert_same(main_output(model(pixel_values)), main_output(reloaded(pixel_values)), "The reloaded repo")
    config = json.loads((folder / "config.json").read_text())
    if release.form != UPERNET and config.get("auto_map") != auto_map(release.task):
        raise PublishError(f"config.json has auto_map {config.get('auto_map')}, expected {auto_map(release.task)}.")
    check_model_card((folder / "README.md").read_text(encoding="utf-8"), release)
    if remote_code and release.form != UPERNET:
        image_processor = AutoImageProcessor.from_pretrained(folder)
        check_remote_code(folder, release.task, model, image_processor)
    return files


@dataclass
class BuiltRepo:
    folder: Path
    files: list[str]
    model: torch.nn.Module
    not_converted: list[str]


def check_output_dir(output_dir, checkpoint=None) -> None:
    """Refuse, before any work, an `output_dir` that is a file or that holds the checkpoint being converted
    (`FileExistsError`)."""
    check_replaceable_dir(output_dir)
    if checkpoint is not None and Path(output_dir).resolve() in Path(checkpoint).resolve().parents:
        raise FileExistsError(
            f"The checkpoint {str(checkpoint)!r} lies inside the output folder {str(output_dir)!r}, which the "
            "conversion replaces as a whole; choose another output folder."
        )


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def write_repo(model, release: Release, output_dir, checkpoint=None, not_converted=(), remote_code_check=True):
    """Write `model` (converted from `checkpoint`) as a complete repo for `release` into `output_dir`, atomically:
    the folder appears only once every `check_repo` check passed; otherwise the error is raised and an existing
    `output_dir` is left as it was. An existing folder is replaced only when it is an earlier model folder (it has
    a `config.json`) or holds nothing the new repo does not rewrite; anything else (a user's own files) is refused
    with `FileExistsError` (see `paca_hf.file_utils.write_dir_atomically`)."""
    check_output_dir(output_dir, checkpoint)
    image_processor = default_image_processor(release.task)
    card = render_model_card(
        release,
        num_parameters=sum(parameter.numel() for parameter in model.parameters()),
        checkpoint_name=Path(checkpoint).name if checkpoint else None,
        checkpoint_sha256=sha256sum(checkpoint) if checkpoint else None,
        num_labels=getattr(model.config, "num_labels", None) if release.form != BACKBONE else None,
        not_converted=summarize_prefixes(not_converted) if not_converted else None,
    )
    files = []

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        image_processor.save_pretrained(folder)
        if release.form != UPERNET:
            add_remote_code(folder, release.task)
        card.save(folder / "README.md")
        files.extend(check_repo(folder, release, model, remote_code=remote_code_check))

    folder = write_dir_atomically(output_dir, write, may_replace=_is_model_folder)
    return BuiltRepo(folder=folder, files=files, model=model, not_converted=list(not_converted))


_EXPECTED_LABELS = {CLASSIFIER: 1000, SEGMENTOR: 150, UPERNET: 150, DETECTOR: 80}


def build_repo(checkpoint, release: Release | str, output_dir, config=None, remote_code_check: bool = True):
    """Convert one of the authors' released checkpoints into its complete Hub repo folder (see `write_repo`).
    `config` defaults to the release's official config."""
    release = get_release(release) if isinstance(release, str) else release
    check_output_dir(output_dir, checkpoint)
    source, class_names = load_checkpoint(checkpoint, with_class_names=True)
    model, unused = convert_source(
        source, release.official_name if config is None else config, release.task, class_names
    )
    expected = _EXPECTED_LABELS.get(release.form)
    if config is None and expected is not None and model.config.num_labels != expected:
        raise ConversionError(
            f"The checkpoint's head has {model.config.num_labels} classes; {release.official_name} has {expected}."
        )
    if form_of(model) != release.form:
        raise ConversionError(
            f"{release.official_name} is a {release.form}, but the checkpoint converts to a {form_of(model)}."
        )
    return write_repo(model, release, output_dir, checkpoint, unused, remote_code_check)


def convert_checkpoint(
    checkpoint,
    config,
    output_dir,
    task: str = "image-classification",
    push_to_hub=None,
    remote_code_check: bool = False,
):
    """Convert one of the authors' checkpoints into a complete repo folder (`write_repo`: weights, config, image
    processor, remote code, model card) and return the model. With an official name as `config`, the card is that
    release's; otherwise it says the model is not an official release and carries no published numbers. Nothing is
    written unless the conversion is exact and the folder passed its checks; nothing is uploaded unless written."""
    check_output_dir(output_dir, checkpoint)
    source, class_names = load_checkpoint(checkpoint, with_class_names=True)
    model, unused = convert_source(source, config, task, class_names)
    form = form_of(model)
    repo_id = push_to_hub or str(output_dir)
    if isinstance(config, (str, os.PathLike)) and str(config) in OFFICIAL_NAMES:
        release = get_release(str(config))
        if release.form != form:
            release = custom_release(form, repo_id, Path(checkpoint).name)
    else:
        release = custom_release(form, repo_id, Path(checkpoint).name)
    built = write_repo(model, release, output_dir, checkpoint, unused, remote_code_check)
    if push_to_hub:
        from huggingface_hub import HfApi

        from .publishing import upload_repo

        message = "Upload PaCa-ViT converted from the authors' checkpoint"
        upload_repo(HfApi(), push_to_hub, built.folder, built.files, message)
    return model


def release_card(release: Release):
    """The card of an official release as `scripts/publish_all.py` would upload it, without a checkpoint: the
    parameter count is that of the official architecture (counted on the meta device)."""
    with torch.device("meta"):
        model = build_model(official_config(release.official_name), release.task)
    num_labels = getattr(model.config, "num_labels", None) if release.form != BACKBONE else None
    return render_model_card(release, num_parameters=sum(p.numel() for p in model.parameters()), num_labels=num_labels)


def write_release_cards(folder) -> list[Path]:
    """Write every release's card to `folder/<repo name>.md` (the repository's `model_cards/`)."""
    from ..releases import RELEASES

    return [
        write_text_atomically(Path(folder) / f"{release.repo_name}.md", str(release_card(release)) + "\n")
        for release in RELEASES
    ]


__all__ = [
    "BuiltRepo",
    "build_repo",
    "check_repo",
    "convert_checkpoint",
    "form_of",
    "is_official",
    "release_card",
    "repo_files",
    "write_release_cards",
    "write_repo",
]
