"""The package as users install it: `python -m build` gives an sdist and a wheel that pass `twine check`, and the wheel
alone (no source tree) runs the README's usage example, the converter, a pipeline and the shipped metrics."""

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from reference import case_checkpoint, case_config, require_reference
from safetensors.torch import load_file


ROOT = Path(__file__).resolve().parents[2]

FRESH_CHECKS = r"""
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, pipeline

import paca_hf
from paca_hf.metrics import load_metric

site = Path(sys.argv[1])
assert Path(paca_hf.__file__).is_relative_to(site), paca_hf.__file__  # the wheel's copy, not the source tree
converted, expected = sys.argv[2], load_file(sys.argv[3])
model = AutoModelForImageClassification.from_pretrained(converted).eval()
with torch.no_grad():
    logits = model(pixel_values=expected["input_0"]).logits
assert torch.allclose(logits, expected["output_0_logits"], atol=1e-4), (logits - expected["output_0_logits"]).abs().max()
classify = pipeline("image-classification", model=converted)
print("pipeline", len(classify(Image.new("RGB", (64, 48), (90, 30, 200)), top_k=3)))
miou = load_metric("mean_iou").compute(predictions=[np.array([[0, 1], [1, 1]])],
                                       references=[np.array([[0, 1], [0, 1]])], num_labels=2, ignore_index=255)
print("mean_iou", round(float(miou["mean_iou"]), 4))
print("version", paca_hf.__version__)
"""


def run(command, **kwargs):
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def source_tree_copy(destination: Path) -> Path:
    """What a clone holds (tracked and new files, not ignored ones), so that building does not write into the tree."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def test_wheel_installs_and_runs_without_the_source_tree(tmp_path):
    require_reference()
    source = source_tree_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    # The wheel is built from the sdist (build's default), so the sdist must be complete too.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source])
    wheels, sdists = sorted(dist.glob("paca_hf-*.whl")), sorted(dist.glob("paca_hf-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(dist.iterdir())
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "src/paca_hf/__init__.py").read_text()).group(1)
    assert wheels[0].name == f"paca_hf-{version}-py3-none-any.whl"
    assert "PASSED" in run([sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists])
    import tarfile

    with tarfile.open(sdists[0]) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    # What make test reads beside the package (the app's test reads the Space folder).
    assert {"Makefile", "constraints.txt", ".ci/run", "spaces/pacavit/README.md", "tests/conftest.py"} <= members

    # A fresh virtual environment whose only paca_hf is the wheel's; the dependencies come from this environment's
    # site-packages through a .pth file (its editable install of the source tree is a .pth there, which Python does
    # not follow from a path added this way).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    fresh_python = venv / "bin" / "python"
    fresh_site = Path(run([fresh_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (fresh_site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", fresh_site, wheels[0]])
    work = tmp_path / "work"
    work.mkdir()
    environment = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}

    run([fresh_python, "-c", "import paca_hf.hub"], cwd=work, env=environment)
    config = tmp_path / "config"
    case_config("cls_conv_stagewise").save_pretrained(config)
    converted = work / "converted"
    output = run(
        [
            fresh_python,
            fresh_site / "bin" / "paca-hf-convert",
            "--checkpoint",
            case_checkpoint("cls_conv_stagewise"),
            "--config",
            config / "config.json",
            "--output-dir",
            converted,
            "--task",
            "image-classification",
        ],
        cwd=work,
        env=environment,
    )
    assert f"wrote {converted}" in output
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        path.name for path in converted.iterdir()
    }
    # The model card comes from the template shipped as package data.
    assert "pip install paca-hf" in (converted / "README.md").read_text()

    reference_io = require_reference() / "cls_conv_stagewise.io.safetensors"
    assert "input_0" in load_file(reference_io)
    output = run([fresh_python, "-c", FRESH_CHECKS, fresh_site, converted, reference_io], cwd=work, env=environment)
    assert "pipeline 3" in output
    # IoU by hand: class 0 = 1 / 2 (one pixel predicted and true, one true pixel missed), class 1 = 2 / 3.
    assert f"mean_iou {round((1 / 2 + 2 / 3) / 2, 4)}" in output
    assert f"version {version}" in output

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    output = run([fresh_python, "-c", blocks[0]], cwd=work, env=environment)
    assert "(1, 1000)" in output
