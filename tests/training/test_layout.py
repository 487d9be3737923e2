"""`paca_hf.training` is laid out by task: one subpackage per task, the pieces the tasks share beside them, and
imports that only point down (a task uses the shared pieces, never another task; the shared pieces use no task)."""

import ast
import pkgutil
from pathlib import Path

import paca_hf.training


TRAINING = Path(paca_hf.training.__file__).parent
SHARED = {
    "arguments",
    "checkpoint",
    "distributed",
    "errors",
    "init_report",
    "optim",
    "runner",
    "sampling",
    "scheduler",
    "throughput",
    "transforms",
}
TASKS = {"segmentation", "classification", "detection"}


def training_imports(path: Path) -> set[str]:
    """The `paca_hf.training` modules that the file at `path` imports (relative imports resolved; lazy imports inside
    functions included), as dotted names."""
    relative = path.relative_to(TRAINING.parent.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    package = list(parts) if relative.name == "__init__" else list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import finetune`
    return {name for name in found if name.startswith("paca_hf.training")}


def test_training_holds_one_subpackage_per_task_and_the_shared_modules():
    members = {module.name: module.ispkg for module in pkgutil.iter_modules([str(TRAINING)])}
    assert {name for name, is_package in members.items() if not is_package} == SHARED
    assert TASKS <= {name for name, is_package in members.items() if is_package}
    for task in TASKS:
        assert (TRAINING / task / "__init__.py").is_file(), task


def test_the_resolver_sees_relative_and_lazy_imports():
    # The checks below are only as good as the import resolution: a module in a task imports a sibling, a shared
    # module two levels up and, lazily, the package root.
    finetune = TRAINING / "segmentation" / "finetune.py"
    imports = training_imports(finetune)
    assert {"paca_hf.training.segmentation.augmentation", "paca_hf.training.checkpoint"} <= imports
    assert "paca_hf.training.segmentation.finetune" in training_imports(TRAINING / "segmentation" / "demo.py")


def test_imports_point_down_shared_modules_use_no_task_and_tasks_use_no_other_task():
    for path in sorted(TRAINING.rglob("*.py")):
        imports = training_imports(path)
        inside = path.relative_to(TRAINING).parts
        own_task = inside[0] if len(inside) > 1 else None
        for task in TASKS - {own_task}:
            used = sorted(name for name in imports if name.startswith(f"paca_hf.training.{task}"))
            assert not used, f"{path.relative_to(TRAINING)} imports {used}"
