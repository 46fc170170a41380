"""The request-independent state of the HTTP routes: settings, model worker, limits, index and reranker.

Every model call goes through one `Batcher` worker thread (`batching.py`). A text is encoded by the model's
method for its role: `encode_queries` for "query", `encode_corpus` for "passage", `encode` for none, so the
server's prompts and truncation are the library's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from m3embed.modes import MODES
from m3embed.server import schemas as s
from m3embed.server.batching import Batcher, BatcherClosedError, split_chunks
from m3embed.server.errors import ApiError
from m3embed.server.metrics import ServerMetrics
from m3embed.tokenize import resolve_max_length
from m3embed.types import M3Output

if TYPE_CHECKING:
    from m3embed.model import M3Model
    from m3embed.rerank import Reranker


@dataclass
class ServerSettings:
    """What `m3embed serve` configures; the defaults suit one CPU or GPU replica."""

    model_name: str | None = None  # the name clients pass as `model`; None: the name the model was loaded by
    reranker_name: str | None = None  # the `model` of /v1/rerank; None: the name the reranker was loaded by
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_items: int = 2048  # texts (or pairs, or documents) per request, as OpenAI allows
    max_chars: int = 100_000  # characters per text, checked before tokenising
    max_body_bytes: int = 32 * 2**20
    # estimated JSON bytes of one response (`Service.check_response`): ColBERT rows as JSON are ~21 bytes a
    # float, so 256 texts of ~450 tokens made 907 MB with a 4.7 GB peak; 256 MiB is ~2,048 dense 1024-d
    # embeddings 6x over, or ~26 such texts' ColBERT rows (~100 in base64)
    max_response_bytes: int = 256 * 2**20
    max_length: int | None = None  # tokens per text (truncation length); None: the model's own for the text's role
    batching: bool = True  # False: one request per model call (the baseline)
    # padded tokens per model call: larger requests split, queued ones merged; None: 1024 on CPU (a chunk of
    # ~0.1-0.3 s, which kept small clients' p99 within ~2-3x beside a 2,048-text request in benchmarks/serve.py
    # --case mixed, where 16384 gave 4-22x) and 16384 on GPU
    max_batch_tokens: int | None = None
    max_wait_ms: float = 0.0  # extra wait for more requests; 0: merge what queued while the model was busy
    max_queue: int = 4096  # requests waiting for the model beyond which the server answers 503
    batch_tokens: int | None = None  # padded tokens per forward pass inside encode; None: encode's default
    graceful_timeout: float = 30.0  # on shutdown: seconds queued and in-flight requests get before a 503

    def __post_init__(self) -> None:
        self.api_key = self.api_key or None  # an empty key (an unset environment variable) is no key
        # each limit with the `m3embed serve` flag that sets it: a 0 or negative one used to start a server
        for name, least in (("max_items", 1), ("max_chars", 1), ("max_queue", 1), ("max_length", 1),
                            ("max_batch_tokens", 1), ("batch_tokens", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be an integer >= {least}, got {value!r}")
        for name, flag, scale, positive in (("max_body_bytes", "--max-body-mb", 2**20, True),
                                            ("max_response_bytes", "--max-response-mb", 2**20, True),
                                            ("graceful_timeout", "--graceful-timeout", 1, False),
                                            ("max_wait_ms", "--max-wait-ms", 1, False)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise ValueError(f"{flag} must be {'> 0' if positive else '>= 0'}, got {value / scale:g}")


_INLINE_CHARS = 20_000  # requests up to this size are tokenised on the event loop, larger ones on a thread


class _Tokens:
    """Token counting and id → string for request handlers, on a private tokenizer copy.

    The worker's tokenizer changes its truncation state on every call, which races with other threads; this
    copy is only ever read, so handler threads share it safely.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = copy.deepcopy(tokenizer)
        self.backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if self.backend is not None:
            self.backend.no_truncation()
            self.backend.no_padding()

    def count(self, texts: list[str]) -> list[int]:
        """Tokens per text, special tokens included, before truncation."""
        if not texts:
            return []
        if self.backend is not None:
            return [len(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=True)]
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return [len(x) for x in ids]

    def strings(self, ids: np.ndarray) -> list[str]:
        """Each id as the model's `convert_id_to_token` writes it (one decoded token)."""
        return [self.tokenizer.decode([int(i)]) for i in ids]


class Service:
    """The request-independent state of the routes: model, reranker, worker, limits, index."""

    def __init__(self, model: M3Model, index: Any, settings: ServerSettings, metrics: ServerMetrics,
                 reranker: Reranker | None = None) -> None:
        self.model, self.index, self.settings, self.metrics = model, index, settings, metrics
        self.name = settings.model_name or getattr(model, "name", "") or "m3embed"
        self.reranker = reranker
        self.reranker_name = None if reranker is None else settings.reranker_name or reranker.name or "reranker"
        self.rerank_tokens = None if reranker is None else _Tokens(reranker.tokenizer)
        # tokens per text by role: --max-length, else the model's own length for the role
        self.max_lengths = {role: resolve_max_length(settings.max_length, model.max_length, default)
                            for role, default in ((None, None), ("query", model.query_max_length),
                                                  ("passage", model.passage_max_length))}
        self.modes = tuple(model.available_modes())
        self.tokens = _Tokens(model.tokenizer)
        budget = settings.max_batch_tokens or (16_384 if model.device.type == "cuda" else 1_024)
        self.batcher = Batcher(self._encode, max_batch_tokens=budget,
                               max_wait_s=settings.max_wait_ms / 1000, enabled=settings.batching,
                               max_queue=settings.max_queue, on_batch=metrics.on_batch)

    def _encode(self, texts: list[str], modes: tuple[str, ...], role: str | None) -> M3Output:  # worker thread only
        encode = {None: self.model.encode, "query": self.model.encode_queries,
                  "passage": self.model.encode_corpus}[role]
        return encode(texts, modes=modes, max_length=self.settings.max_length,
                      batch_tokens=self.settings.batch_tokens, progress=False)

    # ---- request checks ----

    def check_open(self) -> None:
        """New requests get a 503 once shutdown has begun (those already in flight go on until the deadline)."""
        if self.batcher.shutting_down or self.batcher.closed:
            raise BatcherClosedError("the server is shutting down; retry on another replica or later")

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.name:
            raise ApiError(404, f"model {name!r} is not served here; this server serves {self.name!r}",
                           code="model_not_found", param="model")

    def check_modes(self, modes: Sequence[str]) -> tuple[str, ...]:
        missing = [m for m in modes if m not in self.modes]
        if missing:
            raise ApiError(422, f"this model has no {' or '.join(missing)} head; available modes: "
                                f"{', '.join(self.modes)}", code="mode_unavailable", param="modes")
        return tuple(m for m in MODES if m in modes)

    def texts(self, value: Any, param: str = "input") -> list[str]:
        """The input as a list of texts, within the item and character limits."""
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, list) and all(isinstance(t, str) for t in value):
            texts = value
        else:
            # OpenAI clients that pre-tokenise (tiktoken) send ids of another vocabulary: they cannot be read here
            raise ApiError(422, f"{param} holds token ids; this server takes text (ids from an OpenAI client are "
                                "tiktoken ids, not this model's): send a string or a list of strings, e.g. "
                                "LangChain's OpenAIEmbeddings(check_embedding_ctx_length=False)",
                           code="token_input_unsupported", param=param)
        self.check_count(len(texts), param)
        self.check_chars(texts, param)
        return texts

    def check_count(self, n: int, param: str) -> None:
        if n == 0:
            raise ApiError(422, f"{param} is empty; send at least one item", code="empty_input", param=param)
        if n > self.settings.max_items:
            raise ApiError(413, f"{param} has {n} items; the limit is {self.settings.max_items} per request "
                                "(--max-items); split the request", code="max_items", param=param)

    def check_chars(self, texts: Sequence[str], param: str) -> None:
        limit = self.settings.max_chars
        for i, t in enumerate(texts):
            if len(t) > limit:
                raise ApiError(413, f"{param}[{i}] has {len(t)} characters; the limit is {limit} per text "
                                    "(--max-chars); split the text", code="max_chars", param=f"{param}[{i}]")
            if not t.isascii():
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError as e:  # a lone surrogate ("\ud800") parses as JSON but is no text
                    raise ApiError(422, f"{param}[{i}] is not valid Unicode ({e.reason} at character {e.start}); "
                                        "send UTF-8 text", code="invalid_text", param=f"{param}[{i}]") from None

    def check_response(self, counts: Sequence[int], modes: Sequence[str], fmt: str = "float",
                       tokens: bool = False, param: str = "input") -> None:
        """A 413 before any encoding when the response would exceed `max_response_bytes`: JSON floats take
        ~21 bytes (measured, pydantic's float32 → float repr), base64 ~5.4; a sparse entry ~30 (+12 with
        tokens); ColBERT has n_tokens - 1 rows of hidden_size per text."""
        per_float = 16 / 3 if fmt == "base64" else 21
        h, total = self.model.hidden_size, 0
        for n in counts:
            total += 80  # index, n_tokens, brackets
            total += h * per_float if "dense" in modes else 0
            total += n * (42 if tokens else 30) if "sparse" in modes else 0
            total += (max(n - 1, 0) * h) * per_float if "colbert" in modes else 0
        limit = self.settings.max_response_bytes
        if total > limit:
            ways = "send fewer texts" + ("" if fmt == "base64" else ", send encoding_format=base64 (about 4x "
                                         "smaller)") + ", or encode a corpus with `m3embed encode --ray` (Parquet)"
            raise ApiError(413, f"the response would be about {total / 2**20:,.0f} MiB, over this server's limit of "
                                f"{limit / 2**20:,.0f} MiB (--max-response-mb); {ways}", code="max_response",
                           param=param)

    async def count(self, texts: list[str], *, truncate: bool = True, param: str = "input",
                    role: str | None = None) -> list[int]:
        """Token counts of the texts as encoded for `role` (its prompt included), after truncation; with
        truncate=False an over-long text is a 422."""
        texts = self.model.input_texts(texts, role)
        if sum(len(t) for t in texts) <= _INLINE_CHARS:  # well under a millisecond: skip the thread hop
            counts = self.tokens.count(texts)
        else:
            counts = await anyio.to_thread.run_sync(self.tokens.count, texts)
        limit = self.max_lengths[role]
        if not truncate:
            for i, n in enumerate(counts):
                if n > limit:
                    raise ApiError(422, f"{param}[{i}] has {n} tokens; this server's max length is "
                                        f"{limit} (--max-length); shorten it or send truncate=true",
                                   code="max_length", param=f"{param}[{i}]")
        return [min(n, limit) for n in counts]

    async def encode(self, texts: list[str], modes: tuple[str, ...], route: str, *, truncate: bool = True,
                     param: str = "input", role: str | None = None,
                     response: tuple[str, bool] | None = None) -> tuple[M3Output, s.Usage]:
        """Encode through the batcher with the model's method for `role` (None, "query" or "passage").

        `response` (encoding format, tokens returned): the outputs go back to the client, whose response size
        is checked first (`check_response`)."""
        counts = await self.count(texts, truncate=truncate, param=param, role=role)
        if response is not None:
            self.check_response(counts, modes, *response, param=param)
        out = await self.batcher.encode(texts, modes, tokens=counts, role=role)
        return out, self.usage(int(out.n_tokens.sum()), route)

    def usage(self, tokens: int, route: str) -> s.Usage:
        self.metrics.tokens.labels(route).inc(tokens)
        return s.Usage(prompt_tokens=tokens, total_tokens=tokens)

    def need_reranker(self, name: str | None = None) -> Reranker:
        """The served cross-encoder (a 404 when none is loaded, or when `name` is not its name)."""
        if self.reranker is None:
            raise ApiError(404, "no reranker is loaded on this server; start it with --reranker NAME",
                           code="no_reranker")
        if name is not None and name != self.reranker_name:
            raise ApiError(404, f"reranker {name!r} is not served here; this server serves {self.reranker_name!r}",
                           code="model_not_found", param="model")
        return self.reranker

    async def pair_counts(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens of each (query, document) pair the reranker scores, special tokens included, after its cuts."""
        queries = list(dict.fromkeys(q for q, _ in pairs))
        texts = queries + [d for _, d in pairs]
        if sum(len(t) for t in texts) <= _INLINE_CHARS:
            counts = self.rerank_tokens.count(texts)
        else:
            counts = await anyio.to_thread.run_sync(self.rerank_tokens.count, texts)
        cross = self.reranker
        single = cross.tokenizer.num_special_tokens_to_add(pair=False)
        max_length, query_max_length = cross.lengths()
        q = {t: min(n - single, query_max_length) for t, n in zip(queries, counts)}
        return [min(q[query] + n - single + cross.pair_specials, max_length)
                for (query, _), n in zip(pairs, counts[len(queries):])]

    async def rerank_scores(self, pairs: list[tuple[str, str]], counts: Sequence[int],
                            normalize: bool) -> list[float]:
        """The reranker's scores of `pairs` (tokens per pair: `counts`), on the model worker in chunks of at
        most `max_batch_tokens` padded tokens, one call each: other requests take their turn between two chunks,
        and a cancelled request (its client gone, or the shutdown deadline) queues no more of them."""
        cross, scores = self.reranker, []
        for chunk in split_chunks([max(n, 1) for n in counts], self.batcher.max_batch_tokens):
            part = pairs[chunk.start:chunk.end]
            scores += await self.batcher.call(lambda part=part: cross.compute_score(
                part, normalize=normalize, batch_tokens=self.settings.batch_tokens, progress=False))
        return scores

    def need_index(self) -> Any:
        if self.index is None:
            raise ApiError(404, "no index is attached to this server; start it with --index DIR",
                           code="no_index")
        return self.index
