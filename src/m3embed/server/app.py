"""The FastAPI app: OpenAI-compatible embeddings, every M3 output, M3 scores, a cross-encoder reranker and the
index, over HTTP.

Every route is a few lines over one `Service` (`service.py`: model worker, limits, index, reranker). Every model
call goes through its `Batcher` worker thread, so concurrent requests share forward passes and the model is never
used by two threads at once. Large requests are split into chunks that take turns with other requests, and a
request whose client disconnects is cancelled (its remaining chunks are dropped). Index writes run on the same
worker, in arrival order, so shutdown (which drains the worker) never leaves one half done.

Shutdown is bounded by `ServerSettings.graceful_timeout`: run the app with `Server`, and from SIGTERM on new
requests get a 503 (code "shutting_down") while the requests in flight go on; when the timeout is up, the worker
fails what is left of them with the same 503.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import uvicorn
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from m3embed.diskspace import DiskFullError
from m3embed.documents import check_id
from m3embed.errors import ParamError
from m3embed.index.core import rerank_texts, reranked_hits
from m3embed.modes import MODES, check_weights
from m3embed.rerank import best_first
from m3embed.scoring import compute_score
from m3embed.server import schemas as s
from m3embed.server.errors import ApiError, ApiKeyMiddleware, BodyLimitMiddleware, error_body, install_handlers
from m3embed.server.metrics import MetricsMiddleware, ServerMetrics
from m3embed.server.service import ServerSettings, Service

if TYPE_CHECKING:
    from m3embed.model import M3Model
    from m3embed.rerank import Reranker


def _vector(v: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
    return v.tolist()


def _json(model: Any) -> Response:
    """Serialise a response model with pydantic-core directly (skips FastAPI's re-validation)."""
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


class CancelOnDisconnect:
    """Cancels a request's handler when its client disconnects, so the model work it queued is dropped.

    uvicorn lets a handler run on after its client has gone. Once the app has read the request body, this
    listens for `http.disconnect` and cancels the handler; the cancellation reaches the Batcher, which drops the
    request's chunks not yet encoded. The metrics record such a request with status 499 (client closed request);
    nothing is sent to the client, which is gone.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read, gone = asyncio.Event(), asyncio.Event()
        started = finished = False

        async def receive_body() -> Message:
            if body_read.is_set():  # asked again after the body: only a disconnect can come, and `watch` reads it
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def send_response(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        async def watch(handler: anyio.CancelScope) -> None:
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            if not finished:  # (after the response, uvicorn's receive also says "disconnect")
                handler.cancel()

        with anyio.CancelScope() as handler:
            watcher = asyncio.ensure_future(watch(handler))
            try:
                await self.app(scope, receive_body, send_response)
            finally:
                watcher.cancel()
        if handler.cancelled_caught and not started:  # for the metrics middleware; uvicorn drops it
            await send({"type": "http.response.start", "status": 499, "headers": []})
            await send({"type": "http.response.body", "body": b""})


_REPLY_MARGIN_S = 2.0  # after the graceful timeout, time for the 503s of the requests cut off to be sent


class Server(uvicorn.Server):
    """uvicorn's server for an app from `create_app`, with shutdown bounded by `settings.graceful_timeout`.

    When shutdown begins (SIGTERM, Ctrl-C) new requests get a 503 (the socket stays open until the requests in
    flight are done, or the timeout is up), and the requests in flight have `graceful_timeout` seconds; then the
    model worker fails what is left of them with a 503. uvicorn waits `_REPLY_MARGIN_S` longer for these answers
    to go out before it cancels handlers still running. The model call in progress at the deadline (one chunk of
    at most `max_batch_tokens`, or one index write) still finishes before the process exits.
    """

    def __init__(self, app: FastAPI, **config: Any) -> None:
        self.service: Service = app.state.service
        timeout = self.service.settings.graceful_timeout + _REPLY_MARGIN_S
        super().__init__(uvicorn.Config(app, timeout_graceful_shutdown=timeout, **config))

    async def shutdown(self, sockets: Any = None) -> None:
        graceful = self.service.settings.graceful_timeout
        self.service.batcher.begin_shutdown(graceful)
        # keep listening while the requests in flight drain, so a new one gets the 503 `shutting_down` the
        # README promises (uvicorn's own shutdown stops listening first: "connection refused")
        deadline = time.monotonic() + graceful
        while self._requests_in_flight() and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        self.config.timeout_graceful_shutdown = max(deadline - time.monotonic(), 0.0) + _REPLY_MARGIN_S
        await super().shutdown(sockets)

    def _requests_in_flight(self) -> bool:
        return any(not t.done() for t in self.server_state.tasks)


def create_app(model: M3Model, index: Any = None, settings: ServerSettings | None = None,
               reranker: Reranker | None = None) -> FastAPI:
    """Build the app around a loaded model and, optionally, an open index and a cross-encoder reranker.

    The model worker starts with the app (lifespan) and drains its queue on shutdown. The caller still owns
    the index and closes it after the server has stopped.
    """
    settings = settings or ServerSettings()
    holder: dict[str, Service] = {}
    metrics = ServerMetrics(queued=lambda: holder["svc"].batcher.queued if "svc" in holder else 0)
    svc = holder["svc"] = Service(model, index, settings, metrics, reranker)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        svc.batcher.start()
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish (or fail at the deadline); stop the worker
            await anyio.to_thread.run_sync(svc.batcher.close, settings.graceful_timeout)
            if index is not None:  # every accepted write has run; make them durable
                await anyio.to_thread.run_sync(index.flush)

    app = FastAPI(title="m3embed", version=_version(), lifespan=lifespan,
                  description="BGE-M3 over HTTP: dense (OpenAI-compatible), sparse and ColBERT outputs, M3 "
                              "scores and a searchable index. Errors: `{\"error\": {message, type, code, param}}`.",
                  responses={code: {"model": s.ErrorResponse} for code in (400, 401, 404, 413, 422, 503)})
    install_handlers(app)
    app.add_middleware(CancelOnDisconnect)  # innermost: listens only once BodyLimitMiddleware has read the body
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)  # before anything reads the body
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.service = svc

    api = APIRouter(prefix="/v1", dependencies=[Depends(svc.check_open)])
    _encode_routes(api, svc)
    _index_routes(api, svc)
    app.include_router(api)

    @app.get("/health", response_model=s.Health, tags=["ops"])
    async def health() -> Response:
        """200 while serving; 503 once shutdown has begun."""
        stopping = svc.batcher.shutting_down or svc.batcher.closed
        body = s.Health(status="stopping" if stopping else "ok", model=svc.name,
                        fingerprint=model.fingerprint, modes=list(svc.modes), index=index is not None,
                        reranker=svc.reranker_name, queued=svc.batcher.queued)
        response = _json(body)
        response.status_code = 503 if stopping else 200
        return response

    # with an API key, /metrics needs it too (it shows traffic; `ApiKeyMiddleware`); /health (probes), /docs and
    # /openapi.json stay open
    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus() -> Response:
        """Prometheus text exposition of request, batch and queue metrics."""
        return Response(metrics.exposition(), media_type=metrics.content_type)

    return app


def _encode_routes(api: APIRouter, svc: Service) -> None:
    @api.get("/models", response_model=s.ModelList, tags=["embeddings"])
    async def models() -> Response:
        """The served model, and the reranker when one is loaded (OpenAI's model list)."""
        names = [svc.name] + ([svc.reranker_name] if svc.reranker_name else [])
        return _json(s.ModelList(data=[s.ModelCard(id=name) for name in names]))

    @api.post("/embeddings", response_model=s.EmbeddingResponse, tags=["embeddings"])
    async def embeddings(req: s.EmbeddingRequest) -> Response:
        """OpenAI-compatible dense embeddings (L2-normalised)."""
        svc.check_model(req.model)
        if req.dimensions is not None and req.dimensions != svc.model.hidden_size:
            raise ApiError(422, f"dimensions={req.dimensions} is not supported; this model's embeddings have "
                                f"{svc.model.hidden_size} dimensions (omit the field)", code="dimensions",
                           param="dimensions")
        texts = svc.texts(req.input)
        out, usage = await svc.encode(texts, ("dense",), "/v1/embeddings", role=req.role,
                                      response=(req.encoding_format, False))
        data = [s.Embedding(index=i, embedding=_vector(v, req.encoding_format)) for i, v in enumerate(out.dense)]
        return _json(s.EmbeddingResponse(data=data, model=svc.name, usage=usage))

    @api.post("/encode", response_model=s.EncodeResponse, response_model_exclude_none=True, tags=["embeddings"])
    async def encode(req: s.EncodeRequest) -> Response:
        """Any subset of the dense, sparse (token id → weight) and ColBERT outputs from one pass."""
        svc.check_model(req.model)
        modes = svc.check_modes(req.modes)
        texts = svc.texts(req.input)
        out, usage = await svc.encode(texts, modes, "/v1/encode", truncate=req.truncate, role=req.role,
                                      response=(req.encoding_format, req.return_tokens))
        fmt, data = req.encoding_format, []
        for i in range(len(texts)):
            item = s.EncodedText(index=i, n_tokens=int(out.n_tokens[i]))
            if out.dense is not None:
                item.dense = _vector(out.dense[i], fmt)
            if out.sparse is not None:
                sv = out.sparse_vector(i)
                item.sparse = s.Sparse(indices=sv.ids.tolist(), values=sv.weights.tolist(),
                                       tokens=svc.tokens.strings(sv.ids) if req.return_tokens else None)
            if out.colbert is not None:
                item.colbert = _vector(out.colbert[i], fmt) if fmt == "base64" else out.colbert[i].tolist()
            data.append(item)
        return _json(s.EncodeResponse(model=svc.name, data=data, usage=usage))

    @api.post("/score", response_model=s.ScoreResponse, tags=["embeddings"])
    async def score(req: s.ScoreRequest) -> Response:
        """Dense, sparse, ColBERT and hybrid scores of (query, passage) pairs, as `compute_score` gives.

        Queries and passages are encoded as /v1/embeddings encodes (chunks that take turns with other requests,
        dropped when the client leaves); the scores are the pure `m3embed.scoring.compute_score`."""
        svc.check_model(req.model)
        svc.check_modes(MODES)
        svc.check_count(len(req.pairs), "pairs")
        svc.check_chars([t for pair in req.pairs for t in pair], "pairs")
        try:
            weights = check_weights(req.weights, normalized=True)
        except ParamError as e:
            raise ApiError(422, str(e), code=e.param, param=e.param) from None
        modes = svc.modes
        q, q_usage = await svc.encode([p[0] for p in req.pairs], modes, "/v1/score", param="pairs", role="query")
        p, p_usage = await svc.encode([p[1] for p in req.pairs], modes, "/v1/score", param="pairs", role="passage")
        scores = await anyio.to_thread.run_sync(compute_score, q, p, weights)
        scores = {k: [float(x) for x in v] for k, v in scores.items()}
        tokens = q_usage.total_tokens + p_usage.total_tokens
        return _json(s.ScoreResponse(model=svc.name, scores=scores,
                                     usage=s.Usage(prompt_tokens=tokens, total_tokens=tokens)))

    @api.post("/rerank", response_model=s.RerankResponse, tags=["rerank"])
    async def rerank(req: s.RerankRequest) -> Response:
        """Rank documents for a query with the cross-encoder, best first (the TEI / Infinity / Jina / Cohere
        rerank shape); 404 (code no_reranker) unless the server was started with --reranker. The pairs are
        scored in chunks that take turns with other requests, dropped when the client leaves."""
        svc.need_reranker(req.model)
        svc.check_count(len(req.documents), "documents")
        svc.check_chars([req.query], "query")
        svc.check_chars(req.documents, "documents")
        pairs = [(req.query, d) for d in req.documents]
        counts = await svc.pair_counts(pairs)
        scores = await svc.rerank_scores(pairs, counts, normalize=not req.raw_scores)
        results = [s.RerankResult(index=i, relevance_score=score,
                                  document=s.RerankDocument(text=req.documents[i]) if req.return_documents else None)
                   for i, score in best_first(scores, req.top_n)]
        return _json(s.RerankResponse(model=svc.reranker_name, results=results,
                                      usage=svc.usage(sum(counts), "/v1/rerank")))


def _index_routes(api: APIRouter, svc: Service) -> None:
    """/v1/search, /v1/documents, /v1/index: answered 404 (code no_index) when no index is attached.

    Texts are encoded through the batcher (merged with other requests); writes then run on the model worker,
    in arrival order, so shutdown finishes every accepted write. Searches take precomputed query outputs and
    run on a handler thread, never holding up the model.
    """

    @api.get("/index", response_model=s.IndexInfo, tags=["index"])
    async def index_info() -> Response:
        """What the attached index stores and how many documents it holds."""
        index = svc.need_index()
        count = await anyio.to_thread.run_sync(index.count)
        m = index.manifest
        return _json(s.IndexInfo(location=index.location, engine=m.engine, modes=list(m.modes), count=count,
                                 fingerprint=m.fingerprint))

    @api.post("/documents", response_model=s.UpsertResponse, tags=["index"])
    async def upsert(req: s.UpsertRequest) -> Response:
        """Encode documents and insert them, replacing documents with the same id; an id sent twice keeps its
        last copy, as everywhere in m3embed. Ids and metadata were checked with the request (`schemas.Document`)."""
        index = svc.need_index()
        svc.check_model(req.model)
        docs = req.documents
        svc.check_count(len(docs), "documents")
        ids, texts, metadata = [str(d.id) for d in docs], [d.text for d in docs], [d.metadata for d in docs]
        svc.check_chars(texts, "documents")
        modes = tuple(index.manifest.modes)
        out, usage = await svc.encode(texts, modes, "/v1/documents", param="documents", role="passage")
        try:
            count = await svc.batcher.call(lambda: (index.add_outputs(ids, out, texts, metadata), index.count())[1])
        except DiskFullError as e:
            raise ApiError(507, str(e), code="disk_full") from None
        written = list(dict.fromkeys(ids))
        return _json(s.UpsertResponse(upserted=len(written), ids=written, count=count, usage=usage))

    @api.delete("/documents/{doc_id:path}", response_model=s.DeleteResponse, tags=["index"])
    async def delete(doc_id: str) -> Response:
        """Remove one document; 404 if the index does not hold it. An id holding "/" is sent percent-encoded
        or as is: `DELETE /v1/documents/a%2Fb` and `/v1/documents/a/b` both remove "a/b"."""
        index = svc.need_index()
        try:
            check_id(doc_id)
        except ValueError as e:
            raise ApiError(422, str(e), code="invalid_id", param="doc_id") from None

        def remove() -> bool:
            if doc_id not in index:
                return False
            index.delete([doc_id])
            return True

        try:
            found = await svc.batcher.call(remove)
        except DiskFullError as e:
            raise ApiError(507, str(e), code="disk_full") from None
        if not found:
            raise ApiError(404, f"document {doc_id!r} is not in the index", code="document_not_found",
                           param="doc_id")
        return _json(s.DeleteResponse(id=doc_id))

    @api.post("/search", response_model=s.SearchResponse, tags=["index"])
    async def search(req: s.SearchRequest) -> Response:
        """Search the index with any M3 mode; hybrid modes rescore dense and sparse candidates. With `rerank`, the
        server's cross-encoder rescores the first stage's best hits on the model worker."""
        index = svc.need_index()
        svc.check_model(req.model)
        cross = None if req.rerank is None else svc.need_reranker()
        try:
            spec = index.prepare(k=req.k, mode=req.mode, weights=req.weights, candidates=req.candidates,
                                 filter=req.filter, with_text=req.with_text, explain=req.explain, reranker=cross,
                                 rerank_top=None if req.rerank is None else req.rerank.top)
        except ParamError as e:  # the library's parameter, as this request names it
            raise ApiError(422, str(e), code="invalid_search", param=_SEARCH_FIELDS.get(e.param, e.param)) from None
        queries = svc.texts(req.query, "query")
        out, usage = await index.encode_queries(spec, queries, encode=lambda texts, modes: svc.encode(
            texts, modes, "/v1/search", param="query", role="query"))
        found = await anyio.to_thread.run_sync(lambda: index.first_stage(spec, out))
        if cross is not None:  # in chunks on the model worker, as /v1/rerank
            try:
                lists = rerank_texts(found)
            except ValueError as e:
                raise ApiError(422, str(e), code="invalid_search", param="rerank") from None
            pairs = [(q, t) for q, texts in zip(queries, lists) for t in texts]
            scores = await svc.rerank_scores(pairs, await svc.pair_counts(pairs), normalize=False)
            ranked, start = [], 0
            for texts in lists:
                ranked.append(best_first(scores[start:start + len(texts)]))
                start += len(texts)
            found = reranked_hits(found, ranked, spec.k, spec.mode, spec.with_text)
        results = [[s.Hit(id=h.id, score=h.score, text=h.text, metadata=h.metadata, scores=h.scores)
                    for h in hits] for hits in found]
        return _json(s.SearchResponse(model=svc.name, results=results, usage=usage))


_SEARCH_FIELDS = {"rerank_top": "rerank", "reranker": "rerank"}  # Index.prepare's names of SearchRequest fields


def _version() -> str:
    from m3embed import __version__

    return __version__


__all__ = ["Server", "ServerSettings", "create_app", "error_body"]
