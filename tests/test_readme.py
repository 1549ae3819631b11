"""Every ```python block of README.md runs as written (the examples cannot rot)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_opens_with_the_two_commands():
    head = README.read_text().splitlines()[:8]
    assert any("pip install -e . && python -m scratch_transformers tour" in line for line in head)
    assert any('pip install -e ".[test]" && python -m pytest' in line for line in head)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_block_runs(code):
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
