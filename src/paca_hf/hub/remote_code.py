"""Remote code: the package's source files a repo ships so that `trust_remote_code=True` loads it where `paca_hf`
is not installed, the `auto_map` entries that point at them, and the check that such a repo really loads and computes
what the local classes compute."""

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from ..file_utils import sha256sum
from .errors import PublishError


PACKAGE_DIR = Path(__file__).resolve().parents[1]
CLASSIFICATION = "image-classification"
SEGMENTATION = "semantic-segmentation"
INSTANCE_SEGMENTATION = "instance-segmentation"


# The classes a repo's `auto_map` names, by module; every module they import relatively ships too (`images.py`,
# `releases.py`, ...). A module listed here that the package does not have (yet) is left out.
REMOTE_CODE_MODULES = (
    "configuration_pacavit",
    "modeling_pacavit",
    "image_processing_pacavit",
    "image_processing_pil_pacavit",
)
IMAGE_PROCESSOR_CLASS = "image_processing_pacavit.PaCaViTImageProcessor"
# The Mask R-CNN detector's modules, shipped besides those above by detector repos. They are built from torchvision's
# detection parts, so torchvision is a requirement of those repos, not an optional import.
DETECTOR_REMOTE_CODE_MODULES = (
    "configuration_pacavit_mask_rcnn",
    "modeling_pacavit_mask_rcnn",
    "image_processing_pacavit_mask_rcnn",
)
DETECTOR_CLASS = "modeling_pacavit_mask_rcnn.PaCaViTMaskRCNNForInstanceSegmentation"
DETECTOR_IMAGE_PROCESSOR_CLASS = "image_processing_pacavit_mask_rcnn.PaCaViTMaskRCNNImageProcessor"
# Top-level packages the copied files may import (besides the standard library): transformers and its own
# dependencies, which every environment that can load the repo has.
ALLOWED_IMPORTS = frozenset({"torch", "transformers", "huggingface_hub", "numpy", "PIL", "safetensors"})
# Packages the files may import only inside `try: ... except ImportError:` (transformers' loader skips those
# imports when it checks what a repo needs), so that the repo loads without them.
OPTIONAL_IMPORTS = frozenset({"torchvision"})


def _optional_import_lines(tree: ast.AST) -> set[int]:
    """Line numbers of import statements inside a `try` body."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for statement in node.body:
                for inner in ast.walk(statement):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        lines.add(inner.lineno)
    return lines


def remote_code_files(package_dir: str | os.PathLike | None = None, task: str | None = None) -> list[Path]:
    """The source files a repo needs for `trust_remote_code=True`: `REMOTE_CODE_MODULES` (and for an
    `"instance-segmentation"` detector `DETECTOR_REMOTE_CODE_MODULES`) and, recursively, every module they import
    relatively. Raises `PublishError` if any of them imports something that a machine without `paca_hf` may lack
    (`paca_hf` itself included; torchvision except for a detector) or uses a relative import transformers' loader
    cannot follow."""
    package_dir = Path(package_dir) if package_dir else PACKAGE_DIR
    modules = REMOTE_CODE_MODULES + (DETECTOR_REMOTE_CODE_MODULES if task == INSTANCE_SEGMENTATION else ())
    pending = [module for module in modules if (package_dir / f"{module}.py").is_file()]
    seen, problems = {}, []
    allowed = (
        ALLOWED_IMPORTS
        | set(sys.stdlib_module_names)
        | (OPTIONAL_IMPORTS if task == INSTANCE_SEGMENTATION else frozenset())
    )
    while pending:
        module = pending.pop(0)
        if module in seen:
            continue
        path = package_dir / f"{module}.py"
        if not path.is_file():
            problems.append(f"{module}.py is imported but does not exist in {package_dir}")
            continue
        seen[module] = path
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        optional = _optional_import_lines(tree)
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            ok = allowed | (OPTIONAL_IMPORTS if getattr(node, "lineno", None) in optional else frozenset())
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] not in ok:
                        problems.append(f"{where} imports {alias.name!r}" + _optional_hint(alias.name))
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    if node.module.split(".")[0] not in ok:
                        problems.append(f"{where} imports from {node.module!r}" + _optional_hint(node.module))
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


def _optional_hint(module: str) -> str:
    if module.split(".")[0] in OPTIONAL_IMPORTS:
        return " outside `try: ... except ImportError:` (it must stay optional)"
    return ""


def auto_map(task: str) -> dict[str, str]:
    """The `auto_map` of a repo's config.json: which class each Auto class loads with `trust_remote_code=True`."""
    heads = {
        CLASSIFICATION: {"AutoModelForImageClassification": "modeling_pacavit.PaCaViTForImageClassification"},
        SEGMENTATION: {"AutoModelForSemanticSegmentation": "modeling_pacavit.PaCaViTForSemanticSegmentation"},
        "backbone": {},
    }
    if task == INSTANCE_SEGMENTATION:
        # The backbone's own classes stay loadable (its config is `backbone_config` inside the detector's).
        return {
            "AutoConfig": "configuration_pacavit_mask_rcnn.PaCaViTMaskRCNNConfig",
            "AutoModelForInstanceSegmentation": DETECTOR_CLASS,
            "AutoModelForObjectDetection": DETECTOR_CLASS,
            "AutoModelForImageSegmentation": DETECTOR_CLASS,  # the image-segmentation pipeline loads with it
            "AutoImageProcessor": DETECTOR_IMAGE_PROCESSOR_CLASS,
        }
    if task not in heads:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join([*heads, INSTANCE_SEGMENTATION])}.")
    return {
        "AutoConfig": "configuration_pacavit.PaCaViTConfig",
        "AutoModel": "modeling_pacavit.PaCaViTModel",
        "AutoBackbone": "modeling_pacavit.PaCaViTBackbone",
        **heads[task],
        "AutoImageProcessor": IMAGE_PROCESSOR_CLASS,
    }


def _update_json(path: Path, **entries) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(entries)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def add_remote_code(folder: str | os.PathLike, task: str) -> list[Path]:
    """Copy the source files into a saved model folder and add the `auto_map` entries to its `config.json` and
    `preprocessor_config.json` (what transformers' `register_for_auto_class` produces; the latter where the folder
    has one and the task's `auto_map` names an image processor). Returns the copied files."""
    folder = Path(folder)
    copied = []
    for source in remote_code_files(task=task):
        shutil.copyfile(source, folder / source.name)
        copied.append(folder / source.name)
    entries = auto_map(task)
    _update_json(folder / "config.json", auto_map=entries)
    if "AutoImageProcessor" in entries and (folder / "preprocessor_config.json").is_file():
        _update_json(
            folder / "preprocessor_config.json",
            auto_map={"AutoImageProcessor": entries["AutoImageProcessor"]},
        )
    return copied


def check_inputs(config) -> torch.Tensor:
    """A fixed random batch of one 64x80 image for `config` (or the backbone config of an `UperNetConfig`)."""
    num_channels = getattr(config, "backbone_config", config).num_channels
    return torch.randn(1, num_channels, 64, 80, generator=torch.Generator().manual_seed(0))


def main_output(outputs) -> torch.Tensor:
    """The output a check compares: logits, the last feature map of a backbone, a detector's FPN levels (flattened and
    concatenated: dense, unlike its detections, which may be empty), or the last hidden state."""
    if getattr(outputs, "fpn_hidden_states", None) is not None:
        return torch.cat([level.flatten() for level in outputs.fpn_hidden_states])
    if getattr(outputs, "logits", None) is not None:
        return outputs.logits
    if getattr(outputs, "feature_maps", None) is not None:
        return outputs.feature_maps[-1]
    return outputs.last_hidden_state


def assert_same(expected: torch.Tensor, actual: torch.Tensor, what: str) -> None:
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
    import json
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
    import transformers
    from transformers import AutoImageProcessor

    folder, task, inputs, outputs, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    auto = {"image-classification": "AutoModelForImageClassification", "backbone": "AutoBackbone",
            "semantic-segmentation": "AutoModelForSemanticSegmentation",
            "instance-segmentation": "AutoModelForInstanceSegmentation"}[task]
    if task == "backbone":
        # AutoBackbone.from_pretrained looks the id up on the Hub first (no local folders): load the class it names.
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        model = get_class_from_dynamic_module(
            json.load(open(f"{folder}/config.json"))["auto_map"]["AutoBackbone"], folder
        ).from_pretrained(folder).eval()
    else:
        model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    for loaded in (model, model.config, processor):
        if not type(loaded).__module__.startswith("transformers_modules."):
            sys.exit(f"{type(loaded)} was not loaded from the repo's code")
    image = np.arange(48 * 40 * 3, dtype=np.uint8).reshape(48, 40, 3)
    with torch.no_grad():
        result = model(load_file(inputs)["pixel_values"])
    if task == "instance-segmentation":
        logits = torch.cat([level.flatten() for level in result.fpn_hidden_states])
    else:
        logits = result.logits if task != "backbone" else result.feature_maps[-1]
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
        pixel_values = check_inputs(model.config)
        save_file({"pixel_values": pixel_values}, f"{tmp}/inputs.safetensors")
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _REMOTE_CHECK,
                str(Path(folder).resolve()),
                task,
                f"{tmp}/inputs.safetensors",
                f"{tmp}/outputs.safetensors",
                str(torch.get_num_threads()),
            ],
            cwd=tmp,
            env=hidden_package_environment(tmp),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise PublishError(
                f"The repo does not load with trust_remote_code=True without paca_hf:\n{result.stderr[-4000:]}"
            )
        outputs = load_file(f"{tmp}/outputs.safetensors")
    with torch.no_grad():
        expected = main_output(model(pixel_values))
    assert_same(expected, outputs["logits"], "The repo loaded as remote code")
    image = torch.arange(48 * 40 * 3, dtype=torch.uint8).reshape(48, 40, 3).numpy()
    assert_same(
        image_processor(images=image, return_tensors="pt")["pixel_values"],
        outputs["processed"],
        "The image processor loaded as remote code",
    )
    _REMOTE_CODE_CHECKED.add(digest)
