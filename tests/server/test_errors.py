"""Limits, auth and client mistakes: the right status, a JSON error naming the cause, never a 500."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from .conftest import MODEL_NAME


def _error(r: httpx.Response, status: int, code: str | None = None, field: str | None = ...) -> dict:  # type: ignore[assignment]
    """The error body, checked: its status, its code, and the request field it names (the part of `param` before
    any "." or "[": "input" for "input[1]" or for "input.list[str][1]"), none when `field` is None; `field` left
    out: not checked."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if code is not None:
        assert err["code"] == code, err
    if field is ...:
        return err
    if field is not None:
        assert err["param"] is not None and re.split(r"[.\[]", err["param"])[0] == field, err
    else:  # an error of the request as a whole names no field
        assert err.get("param") is None, err
    return err


@pytest.fixture(scope="module")
def strict(m3_model):
    """A server with small limits and an API key."""
    from m3embed.server import ServerSettings, create_app

    from .conftest import LiveServer

    settings = ServerSettings(model_name=MODEL_NAME, api_key="s3cret", max_items=4, max_chars=200,
                              max_body_bytes=4096, max_length=32)
    server = LiveServer(create_app(m3_model, None, settings)).start()
    yield httpx.Client(base_url=server.url, headers={"Authorization": "Bearer s3cret"}, timeout=30)
    server.stop()


def test_limits_name_the_limit(strict):
    err = _error(strict.post("/v1/embeddings", json={"input": ["a"] * 5, "model": MODEL_NAME}), 413, "max_items")
    assert "4" in err["message"] and err["param"] == "input"
    err = _error(strict.post("/v1/encode", json={"input": ["ok", "x" * 201]}), 413, "max_chars")
    assert err["param"] == "input[1]" and "200" in err["message"]
    err = _error(strict.post("/v1/encode", content=b'{"input": "' + b"y" * 5000 + b'"}',
                             headers={"content-type": "application/json"}), 413, "max_body_bytes")
    assert "4096" in err["message"]
    long_text = " ".join(["word"] * 60)[:199]  # > 32 tokens, under the 200 characters of max_chars
    err = _error(strict.post("/v1/encode", json={"input": [long_text], "truncate": False}), 422, "max_length")
    assert "32" in err["message"] and err["param"] == "input[0]"
    ok = strict.post("/v1/encode", json={"input": [long_text]})  # truncated by default
    assert ok.status_code == 200 and ok.json()["data"][0]["n_tokens"] == 32
    _error(strict.post("/v1/score", json={"pairs": [["q", "p"]] * 5}), 413, "max_items")


def test_streamed_body_over_the_limit_is_413(strict):
    def chunks():
        for _ in range(10):
            yield b" " * 1000  # no content-length: the server counts the bytes

    _error(strict.post("/v1/encode", content=chunks(), headers={"content-type": "application/json"}), 413,
           "max_body_bytes")


def test_api_key(strict):
    url = str(strict.base_url)
    _error(httpx.post(f"{url}/v1/embeddings", json={"input": "x", "model": MODEL_NAME}), 401, "invalid_api_key")
    _error(httpx.post(f"{url}/v1/embeddings", json={"input": "x", "model": MODEL_NAME},
                      headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    assert httpx.get(f"{url}/health").status_code == 200  # probes need no key
    assert httpx.get(f"{url}/openapi.json").status_code == 200  # the API's description is public
    _error(httpx.get(f"{url}/metrics"), 401, "invalid_api_key")  # traffic figures are not
    assert strict.get("/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model=MODEL_NAME, input="x")
    res = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0).embeddings.create(
        model=MODEL_NAME, input="x")
    assert len(res.data) == 1


def test_api_key_from_environment(monkeypatch, xlmr_ckpt):
    """`m3embed serve` reads M3EMBED_API_KEY (typer envvar) into the settings."""
    import typer.main

    from m3embed.cli import app

    monkeypatch.setenv("M3EMBED_API_KEY", "from-env")
    command = typer.main.get_command(app).commands["serve"]
    ctx = command.make_context("serve", ["--model", str(xlmr_ckpt)])
    assert ctx.params["api_key"] == "from-env"
    assert ctx.params["host"] == "127.0.0.1"


@pytest.mark.parametrize("body, status, code, field", [
    (b"{not json", 400, "invalid_json", None),
    (b'{"input": "x", "model": "tiny-m3"', 400, "invalid_json", None),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", None),  # deep: was FastAPI's generic text, no code
    (b"", 422, "invalid_request", "body"),
    (b"[1, 2]", 422, "invalid_request", "body"),
    (b'"just a string"', 422, "invalid_request", "body"),
    (b'{"model": "tiny-m3"}', 422, "invalid_request", "input"),
    (b'{"input": "x"}', 422, "invalid_request", "model"),
    (b'{"input": null, "model": "tiny-m3"}', 422, "invalid_request", "input"),
    (b'{"input": [], "model": "tiny-m3"}', 422, "empty_input", "input"),
    (b'{"input": [1, 2, 3], "model": "tiny-m3"}', 422, "token_input_unsupported", "input"),
    (b'{"input": [[1, 2]], "model": "tiny-m3"}', 422, "token_input_unsupported", "input"),
    (b'{"input": ["a", 3], "model": "tiny-m3"}', 422, "invalid_request", "input"),
    (b'{"input": "x", "model": "tiny-m3", "encoding_format": "int8"}', 422, "invalid_request", "encoding_format"),
    (b'{"input": "x", "model": "tiny-m3", "input_type": "doc"}', 422, "invalid_request", "input_type"),
    (b'{"input": "x", "model": "tiny-m3", "dimensions": 7}', 422, "dimensions", "dimensions"),
    (b'{"input": "x", "model": "other"}', 404, "model_not_found", "model"),
    (b'{"input": [1e999], "model": "tiny-m3"}', 422, "invalid_request", "input"),
    (b'{"input": ["ok", "a\\ud800"], "model": "tiny-m3"}', 422, "invalid_text", "input"),  # valid JSON, not text
])
def test_bad_embeddings_bodies(shared_server, body, status, code, field):
    r = httpx.post(f"{shared_server.url}/v1/embeddings", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    _error(r, status, code, field)


def test_a_deep_body_is_invalid_json_naming_the_depth(shared_server):
    r = httpx.post(f"{shared_server.url}/v1/encode", content=b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                   headers={"content-type": "application/json"}, timeout=30)
    assert "nested too deeply" in _error(r, 400, "invalid_json")["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_415(shared_server, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    r = httpx.post(f"{shared_server.url}/v1/embeddings", content=b'{"input": "x", "model": "tiny-m3"}',
                   headers=headers, timeout=30)
    assert "application/json" in _error(r, 415, "unsupported_media_type")["message"]


def test_token_ids_are_refused_with_the_way_out(shared_server):
    r = httpx.post(f"{shared_server.url}/v1/embeddings", json={"input": [[101, 2023]], "model": "tiny-m3"}, timeout=30)
    assert "tiktoken" in _error(r, 422, "token_input_unsupported")["message"]


@pytest.mark.parametrize("path, body, status, code, field", [
    ("/v1/encode", {"input": "x", "modes": []}, 422, "invalid_request", "modes"),
    ("/v1/encode", {"input": "x", "modes": ["lexical"]}, 422, "invalid_request", "modes"),
    ("/v1/encode", {"input": "x", "model": "nope"}, 404, "model_not_found", "model"),
    ("/v1/encode", {"input": "x", "truncate": "maybe"}, 422, "invalid_request", "truncate"),
    ("/v1/score", {"pairs": []}, 422, "invalid_request", "pairs"),
    ("/v1/score", {"pairs": [["only one"]]}, 422, "invalid_request", "pairs"),
    ("/v1/score", {"pairs": [["q", "p"]], "weights": [1, 1]}, 422, "invalid_request", "weights"),
    ("/v1/score", {"pairs": [["q", "p"]], "weights": [0, 0, 1]}, 422, "weights", "weights"),
    ("/v1/score", {"pairs": [["q", "p"]], "weights": [-1, 1, 1]}, 422, "weights", "weights"),

    ("/v1/search", {"query": "x"}, 404, "no_index", None),
    ("/v1/documents", {"documents": [{"id": "a", "text": "x"}]}, 404, "no_index", None),
    ("/v1/nothing", {}, 404, None, None),
])
def test_bad_requests_other_routes(shared_server, path, body, status, code, field):
    _error(httpx.post(f"{shared_server.url}{path}", json=body, timeout=30), status, code, field)


@pytest.mark.parametrize("weights", [b"[NaN, 1, 1]", b"[1e999, 1, 1]", b"[1, Infinity, 1]"])
def test_non_finite_score_weights_are_422(shared_server, weights):
    body = b'{"pairs": [["q", "p"]], "weights": ' + weights + b"}"
    r = httpx.post(f"{shared_server.url}/v1/score", content=body, headers={"content-type": "application/json"},
                   timeout=30)
    assert "finite" in _error(r, 422, "weights")["message"]


def test_wrong_method_and_unknown_document(shared_server):
    _error(httpx.get(f"{shared_server.url}/v1/embeddings", timeout=30), 405)
    _error(httpx.delete(f"{shared_server.url}/v1/documents/abc", timeout=30), 404, "no_index")


def test_unavailable_head_is_422(tmp_path):
    from m3embed.model import M3Model
    from m3embed.server import ServerSettings, create_app
    from m3testkit.checkpoints import TINY_XLMR_SHAPE, write_random_checkpoint

    from .conftest import LiveServer

    ckpt = write_random_checkpoint(tmp_path / "dense_only", arch="xlmr", heads=(), **TINY_XLMR_SHAPE)
    model = M3Model.from_pretrained(ckpt, device="cpu", modes=("dense",))
    server = LiveServer(create_app(model, None, ServerSettings())).start()
    try:
        err = _error(httpx.post(f"{server.url}/v1/encode", json={"input": "x", "modes": ["dense", "colbert"]}),
                     422, "mode_unavailable")
        assert "colbert" in err["message"] and "dense" in err["message"]
        _error(httpx.post(f"{server.url}/v1/score", json={"pairs": [["q", "p"]]}), 422, "mode_unavailable")
        assert httpx.post(f"{server.url}/v1/encode", json={"input": "x"}).status_code == 200
    finally:
        server.stop()


def test_the_api_key_is_checked_before_the_body(strict):
    """Without the key, a body is not read or parsed: malformed, deep or over-limit JSON is 401, not 400/413."""
    url = str(strict.base_url)
    deep = b"[" * 1000 + b"]" * 1000
    for body in (b"{not json", deep, b'{"input": "x"}'):
        r = httpx.post(f"{url}/v1/embeddings", content=body, headers={"content-type": "application/json"})
        _error(r, 401, "invalid_api_key")
    r = httpx.post(f"{url}/v1/embeddings", content=b"x" * 65536, headers={"content-type": "application/json"})
    _error(r, 401, "invalid_api_key")
    _error(strict.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}), 400,
           "invalid_json")  # with the key: the body is read as before


def test_encode_responses_are_bounded_before_encoding(live_server, texts):
    """/v1/encode had no bound on its output: ColBERT rows of 256 texts were 907 MB of JSON (4.7 GB peak)."""
    server = live_server(max_response_bytes=200_000)
    body = {"input": texts[:8], "model": MODEL_NAME, "modes": ["colbert"]}
    r = httpx.post(f"{server.url}/v1/encode", json=body, timeout=60)
    error = _error(r, 413, "max_response")
    assert "over this server's limit of 0 MiB (--max-response-mb)" in error["message"]
    assert "encoding_format=base64" in error["message"] and "m3embed encode --ray" in error["message"]
    assert "m3embed_batches_total 0.0" in httpx.get(f"{server.url}/metrics").text  # refused before encoding
    svc = server.app.state.service
    for fmt in ("float", "base64"):  # the estimate is close to what is sent
        one = {"input": texts[:1], "model": MODEL_NAME, "modes": ["dense", "sparse", "colbert"],
               "encoding_format": fmt}
        r = httpx.post(f"{server.url}/v1/encode", json=one, timeout=60)
        assert r.status_code == 200, r.text
        sent = len(r.content)
        svc.settings.max_response_bytes = int(sent * 0.6)
        assert httpx.post(f"{server.url}/v1/encode", json=one, timeout=60).status_code == 413, fmt
        svc.settings.max_response_bytes = int(sent * 1.5)
        assert httpx.post(f"{server.url}/v1/encode", json=one, timeout=60).status_code == 200, fmt
        svc.settings.max_response_bytes = 200_000
