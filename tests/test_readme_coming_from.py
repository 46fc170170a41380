"""Every Python snippet of the README's "Coming from ..." section runs (offline, shipped models), each in a fresh
interpreter in an empty directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Coming from"):]
SECTION = SECTION[: SECTION.index("\n## ", 3)]
SNIPPETS = re.findall(r"\n### (.+?)\n.*?```python\n(.*?)```", SECTION, flags=re.S)


def test_the_section_has_a_snippet_per_target() -> None:
    assert [title for title, _ in SNIPPETS] == ["FlagEmbedding", "LangChain", "LlamaIndex", "Haystack",
                                                "MTEB", "Sparse vectors in your database's form"]


@pytest.mark.parametrize("code", [c for _, c in SNIPPETS], ids=[t.split()[0] for t, _ in SNIPPETS])
def test_snippet_runs(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip()
