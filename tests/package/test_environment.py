"""The environment the suite runs in is the one `constraints.txt` pins (what CI tested, what the README measured)."""

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"constraints.txt pins exact versions, not {line!r}"
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_installed_packages_are_the_pinned_versions():
    pins = pinned_versions()
    for name in ("torch", "torchvision", "transformers", "accelerate", "datasets", "timm", "onnxruntime"):
        assert name in pins, f"constraints.txt does not pin {name}"
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drifted = {
        name: (version, installed.get(name)) for name, version in pins.items() if installed.get(name) != version
    }
    assert not drifted, f"installed versions differ from constraints.txt (pinned, installed): {drifted}"


def test_every_declared_dependency_is_pinned():
    """A dependency that `make` installs (the package and its `test` extra), added to setup.cfg without
    `make constraints`, would install whatever version is newest."""
    from setuptools.config.setupcfg import read_configuration

    options = read_configuration(CONSTRAINTS.parent / "setup.cfg")["options"]
    declared = list(options["install_requires"]) + list(options["extras_require"]["test"])
    pins = pinned_versions()
    missing = sorted({canonicalize_name(Requirement(d).name) for d in declared} - set(pins))
    assert not missing, f"declared in setup.cfg but not pinned in constraints.txt: {missing} (run make constraints)"


def test_the_detection_extra_is_tested_and_pinned():
    """`pip install paca-hf[detection]` installs what the suite tests COCO evaluation with."""
    from setuptools.config.setupcfg import read_configuration

    extras = read_configuration(CONSTRAINTS.parent / "setup.cfg")["options"]["extras_require"]
    detection = {canonicalize_name(Requirement(d).name) for d in extras.get("detection", [])}
    assert "pycocotools" in detection
    assert detection <= {canonicalize_name(Requirement(d).name) for d in extras["test"]}
    assert detection <= set(pinned_versions())
