"""Package structure: what importing m3embed costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import m3embed

SRC = Path(m3embed.__file__).resolve().parent  # src/m3embed
HEAVY = ("torch", "transformers")


def _loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_m3embed_does_not_load_torch() -> None:
    assert _loaded_after("import m3embed\nimport m3embed.types") == []


def test_lazy_exports_resolve() -> None:
    from m3embed.types import MODES

    assert m3embed.MODES is MODES
    for name in m3embed.__all__:
        assert getattr(m3embed, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m3embed.nope  # noqa: B018


@pytest.mark.parametrize("args", [["--help"], ["index", "--help"], ["train", "--help"]], ids=" ".join)
def test_cli_help_does_not_load_torch(args: list[str]) -> None:
    """What the `m3embed` console script runs, in a fresh interpreter: help needs no model libraries."""
    code = (
        f"import sys\nsys.argv = ['m3embed', *{args!r}]\nfrom m3embed.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
    )
    assert _loaded_after(code) == []
