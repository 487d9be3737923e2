"""The README's usage example runs as written."""

import re
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_usage_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "README has no python example"
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(1, 1000)" in result.stdout
    assert "[(1, 100, 56, 56), (1, 100, 28, 28), (1, 100, 14, 14), None]" in result.stdout
