"""transformers' own test mixins (`ModelTesterMixin`, `ConfigTester`, `BackboneTesterMixin`, `PipelineTesterMixin`,
`ImageProcessingTestMixin`, ...), taken from the source distribution of the installed transformers version.

    from transformers_tests import load_transformers_tests
    load_transformers_tests()  # then: from tests.test_modeling_common import ModelTesterMixin

The sdist is fetched once with `pip download --no-deps --no-binary :all: transformers==<installed version>` from the
package index and extracted to `$PACA_HF_CACHE` (default `~/.cache/paca-hf`)`/transformers-<version>-tests`; later
runs reuse it. Nothing of it is committed. A failed download raises (the tests fail, they are not skipped).

The sdist ships `tests/test_*_common.py` and `tests/test_pipeline_mixin.py` but not the modules those import from
the rest of transformers' repository; this helper writes these stand-ins beside them:
- `tests/exporters/test_export.py`: an empty `ExportTesterMixin` (PaCa-ViT's export is tested in tests/test_export.py);
- `tests/generation/test_utils.py`: an empty `GenerationTesterMixin` (only used in an `issubclass` check; PaCa-ViT
  does not generate);
- `tests/utils/test_configuration_utils.py`: `config_common_kwargs`, the common `PreTrainedConfig` arguments that
  `ConfigTester` sets and reads back;
- `tests/utils/tiny_model_summary.json`: an empty summary: there are no tiny PaCa-ViT models on the Hub
  (hf-internal-testing) and tests run offline, so `PipelineTesterMixin` skips as for any model missing from it;
  tests/test_pipelines.py runs the real pipelines;
- `src/transformers`: a link to the installed transformers package, which `test_pipeline_mixin` imports by path;
- `utils/fetch_hub_objects_for_ci.py`: `url_to_local_path`, which maps a URL to a file of the same name in
  `$PACA_HF_TEST_FIXTURES` when there is one (and otherwise returns the URL unchanged).
"""

import fcntl
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

from paca_hf.file_utils import write_dir_atomically


STAND_INS = {
    "tests/__init__.py": "",
    "tests/exporters/__init__.py": "",
    "tests/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "tests/generation/__init__.py": "",
    "tests/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "tests/utils/__init__.py": "",
    "tests/utils/test_configuration_utils.py": "config_common_kwargs = "
    + repr(
        {
            "return_dict": False,
            "output_hidden_states": True,
            "output_attentions": True,
            "dtype": "float16",
            "chunk_size_feed_forward": 5,
            "architectures": ["BertModel"],
            "id2label": {0: "label"},
            "label2id": {"label": "0"},
            "problem_type": "regression",
        }
    )
    + "\n",
    "tests/utils/tiny_model_summary.json": json.dumps({}),
    "utils/fetch_hub_objects_for_ci.py": (
        "import os\n\n\n"
        "def url_to_local_path(url, return_url_if_not_found=True):\n"
        "    folder = os.environ.get('PACA_HF_TEST_FIXTURES')\n"
        "    if folder:\n"
        "        path = os.path.join(folder, url.rsplit('/', 1)[-1])\n"
        "        if os.path.exists(path):\n"
        "            return path\n"
        "    return url\n"
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("PACA_HF_CACHE", Path.home() / ".cache" / "paca-hf"))


def transformers_tests_root(version: str | None = None) -> Path:
    """Folder holding transformers' `tests/` package (and `utils/`) for `version` (default: the installed one),
    downloaded and extracted on first use. Raises `RuntimeError` if the sdist cannot be downloaded."""
    version = version or importlib.metadata.version("transformers")
    root = cache_dir() / f"transformers-{version}-tests"
    root.parent.mkdir(parents=True, exist_ok=True)
    # One download at a time (pytest-xdist workers share the cache): the others wait, then find it complete.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((root / "tests" / "test_modeling_common.py").is_file() and (root / "src" / "transformers").exists()):
            download_and_extract(version, root)
    return root


def download_and_extract(version: str, root: Path) -> None:
    with tempfile.TemporaryDirectory() as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"transformers=={version}", "-d", download_dir]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(download_dir).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or len(archives) != 1:
            raise RuntimeError(
                f"Could not download the transformers {version} source distribution (needed for transformers' test "
                f"mixins): `{' '.join(command)}` exited with {result.returncode}:\n{result.stderr[-2000:]}"
            )

        def extract(folder: Path) -> None:
            with tarfile.open(archives[0]) as archive:
                prefix = f"transformers-{version}/"
                members = [m for m in archive.getmembers() if m.name.startswith(prefix + "tests/") and m.isfile()]
                for member in members:
                    member.name = member.name[len(prefix):]
                archive.extractall(folder, members=members, filter="data")
            # `test_pipeline_mixin` imports transformers from `<root>/src/transformers`: the installed package.
            (folder / "src").mkdir()
            (folder / "src" / "transformers").symlink_to(Path(transformers.__file__).parent, target_is_directory=True)
            for relative, text in STAND_INS.items():
                path = folder / relative
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)

        write_dir_atomically(root, extract)


def load_transformers_tests(version: str | None = None) -> Path:
    """Make transformers' `tests` package (and its `utils/` helpers) importable; returns its root folder."""
    root = transformers_tests_root(version)
    loaded = sys.modules.get("tests")
    if loaded is not None and Path(loaded.__file__ or "").resolve().parent != (root / "tests").resolve():
        raise RuntimeError(f"Another `tests` package is already imported ({loaded.__file__}); cannot load {root}.")
    for folder in (root, root / "utils"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return root
