"""Every code block of the README runs (offline, the shipped models), except the commands `SKIP` gives a reason for.

Python blocks run each in a fresh interpreter in an empty directory. A bash block runs command by command, in
order, in one directory that holds the input files its commands name (`FILES`), through the CLI in this process
(`m3embed ARGS` is the app invoked with ARGS). The "Coming from" section is run by test_readme_coming_from.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
_COMING = README.index("## Coming from")
_REST = README[:_COMING] + README[README.index("\n## ", _COMING + 3):]
BLOCKS = [(m.group(1), m.group(2), _REST[:m.start()].rsplit("\n## ", 1)[-1].split("\n", 1)[0])
          for m in re.finditer(r"```(python|bash)\n(.*?)```", _REST, flags=re.S)]

# a command that matches a pattern is not run, for the reason given; everything else is
SKIP = {
    r"^make ": "creates a virtual environment and installs from PyPI",
    r"^pip install": "installs from PyPI",
    r"BAAI/": "downloads a model from the Hugging Face hub",
    r"http://": "needs a Qdrant server",
    r"my-encoder": "stands for the user's own encoder directory",
    r"^torchrun": "needs several processes of a training run",
    r"^m3embed serve": "a server that runs until stopped (tests/server/test_serve_command.py starts it)",
}
SKIP_PYTHON = {r'devices=\["cuda': "needs two CUDA devices and BAAI/bge-m3 from the Hugging Face hub"}

_DOCS = [{"id": "ID1", "text": "BGE M3 is an embedding model with dense, sparse and ColBERT outputs.",
          "lang": "en", "year": 2024},
         {"id": "ID2", "text": "BM25 is a bag-of-words retrieval function.", "lang": "en", "year": 1994},
         {"id": "d3", "text": "Der Panda ist ein Bär.", "lang": "de", "year": 2010}]
FILES = {
    "texts.jsonl": _DOCS,
    "docs.jsonl": _DOCS,
    "more.jsonl": [{"id": "d4", "text": "Qdrant stores vectors.", "lang": "en", "year": 2021}],
    "pairs.jsonl": [{"query": "what is panda?", "passage": "The giant panda is a bear."},
                    {"query": "what is panda?", "passage": "BM25 ranks by term matches."}],
    "../shared/data/xquad/en/corpus.jsonl": [{"id": d["id"], "text": d["text"]} for d in _DOCS],
    "../shared/data/xquad/en/queries.jsonl": [{"id": "q1", "text": "what is bge m3"},
                                              {"id": "q2", "text": "what is bm25"}],
    "../shared/data/xquad/en/qrels.dev.tsv": "query-id\tcorpus-id\tscore\nq1\tID1\t1\nq2\tID2\t1\n",
}


def skip_reason(command: str, skip: dict[str, str] = SKIP) -> str | None:
    return next((why for pattern, why in skip.items() if re.search(pattern, command)), None)


def commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped, `a ; b` split."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        out += [" ".join(shlex.quote(w) for w in part) for part in _split(words, ";") if part]
    return out


def _split(words: list[str], sep: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for w in words:
        parts.append([]) if w == sep else parts[-1].append(w)
    return parts


def test_the_blocks_are_found_and_every_skip_is_used() -> None:
    assert [lang for lang, _, _ in BLOCKS].count("python") == 4 and len(BLOCKS) >= 12
    cmds = [c for lang, code, _ in BLOCKS if lang == "bash" for c in commands(code)]
    assert all(any(re.search(p, c) for c in cmds) for p in SKIP), "a SKIP pattern matches no command"
    assert all(any(re.search(p, c) for lang, c, _ in BLOCKS if lang == "python") for p in SKIP_PYTHON)
    assert "M3Output.load(dir)` reads" in README and "the list of ids" in README


def _write_files(cwd: Path) -> None:
    for name, rows in FILES.items():
        path = cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(("lang", "code"), [(lang, code) for lang, code, _ in BLOCKS],
                         ids=[f"{i}-{lang}-{section.split()[0]}" for i, (lang, _, section) in enumerate(BLOCKS)])
def test_block_runs(lang: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "repo"
    cwd.mkdir()
    if lang == "python":
        if why := skip_reason(code, SKIP_PYTHON):
            pytest.skip(why)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        run = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=300, check=False)
        assert run.returncode == 0, run.stderr[-3000:]
        return
    from typer.testing import CliRunner

    from m3embed.cli import app

    _write_files(cwd)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ran, skipped = [], []
    for command in commands(code):
        if why := skip_reason(command):
            skipped.append(f"{command}: {why}")
            continue
        args = shlex.split(command)
        assert args[0] == "m3embed", command
        result = CliRunner().invoke(app, args[1:])
        assert result.exit_code == 0, f"{command}\n{result.output[-3000:]}\n{result.exception!r}"
        ran.append(command)
    if not ran:
        pytest.skip("; ".join(skipped))
