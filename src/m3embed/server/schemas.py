"""Request and response bodies of the HTTP API (pydantic models; they also make the OpenAPI document).

`/v1/embeddings` follows OpenAI's embeddings API so its clients work unchanged; `/v1/rerank` the shape the
rerank APIs of TEI, Infinity, Jina and Cohere share; the other routes expose what OpenAI's API cannot carry:
the sparse and ColBERT outputs, M3 scores and the index.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from m3embed.documents import check_id, check_metadata
from m3embed.modes import DEFAULT_RERANK_TOP, DEFAULT_ROLE, MODES, SCORE_WEIGHTS, SEARCH_MODES, SEARCH_WEIGHTS

Mode = Literal[MODES]
EncodingFormat = Literal["float", "base64"]
InputType = Literal["query", "passage"]
INPUT_TYPE_HELP = ("the text's role, query or passage: prepend the model's prompt for it (e5 models: 'query: ' / "
                   "'passage: '; no effect on models without prompts); omitted: the text as sent")
# request checks answered with their own error code (the rest are "invalid_request")
FIELD_CODES = ("invalid_id", "invalid_metadata")
# OpenAI also accepts token ids (a list of ints, or a list of such lists); we name that case in a clear 422
TextInput = str | list[str] | list[int] | list[list[int]]


class Usage(BaseModel):
    """Token counts, special tokens included, after truncation (OpenAI's usage object)."""

    prompt_tokens: int
    total_tokens: int


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="error class, e.g. invalid_request_error, authentication_error")
    code: str | None = Field(None, description="machine-readable cause, e.g. max_items, model_not_found")
    param: str | None = Field(None, description="the request field at fault, if any")


class ErrorResponse(BaseModel):
    """Every error has this shape (OpenAI's), so OpenAI clients surface `message`."""

    error: ErrorDetail


# ---- /v1/embeddings (OpenAI) ----


class EmbeddingRequest(BaseModel):
    input: TextInput = Field(description="a text or a list of texts")
    model: str = Field(description="the served model name (see GET /v1/models)")
    encoding_format: EncodingFormat = Field("float", description="base64: little-endian float32 bytes")
    dimensions: int | None = Field(None, description="must equal the model's hidden size if given")
    role: InputType | None = Field(DEFAULT_ROLE, alias="input_type", description=INPUT_TYPE_HELP)
    user: str | None = Field(None, description="accepted for compatibility; unused")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "m3embed"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- /v1/encode ----


class EncodeRequest(BaseModel):
    input: TextInput = Field(description="a text or a list of texts")
    model: str | None = Field(None, description="optional; if given it must be the served model name")
    modes: list[Mode] = Field(["dense"], min_length=1, description="any of dense, sparse, colbert")
    encoding_format: EncodingFormat = Field(
        "float", description="for dense and colbert; base64 = little-endian float32 bytes (colbert row-major)"
    )
    return_tokens: bool = Field(False, description="add the token string of each sparse index")
    truncate: bool = Field(True, description="false: reject texts longer than the server's max length")
    role: InputType | None = Field(DEFAULT_ROLE, alias="input_type", description=INPUT_TYPE_HELP)


class Sparse(BaseModel):
    """Lexical weights over token ids: indices sorted ascending, values > 0."""

    indices: list[int]
    values: list[float]
    tokens: list[str] | None = None


class EncodedText(BaseModel):
    index: int
    n_tokens: int
    dense: list[float] | str | None = None
    sparse: Sparse | None = None
    colbert: list[list[float]] | str | None = Field(
        None, description="(n_tokens - 1) vectors of the model's hidden size"
    )


class EncodeResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[EncodedText]
    usage: Usage


# ---- /v1/score ----


class ScoreRequest(BaseModel):
    pairs: list[tuple[str, str]] = Field(min_length=1, description="(query, passage) pairs")
    weights: tuple[float, float, float] = Field(
        SCORE_WEIGHTS, description="mode weights (dense, sparse, colbert) for the hybrid scores, each divided by "
                                   "its weight sum (as FlagEmbedding's compute_score)"
    )
    model: str | None = None


class ScoreResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    scores: dict[str, list[float]] = Field(
        description="one list per key, in pair order: dense, sparse, colbert, sparse+dense, colbert+sparse+dense"
    )
    usage: Usage


# ---- /v1/rerank (the TEI / Infinity / Jina / Cohere shape) ----


class RerankRequest(BaseModel):
    query: str
    documents: list[str] = Field(min_length=1, description="passages to rank for the query")
    top_n: int | None = Field(None, ge=1, description="return only the best n (default: every document)")
    return_documents: bool = Field(False, description="echo each document's text in its result")
    raw_scores: bool = Field(False, description="relevance_score = the cross-encoder's logit instead of its sigmoid")
    model: str | None = Field(None, description="the served reranker's name (see GET /v1/models)")


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="the document's position in the request")
    relevance_score: float = Field(description="sigmoid of the cross-encoder's logit, in (0, 1) (raw_scores: the "
                                               "logit), as FlagReranker.compute_score(normalize=True)")
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    results: list[RerankResult] = Field(description="best first")
    usage: Usage


# ---- index: /v1/search, /v1/documents ----

SearchMode = Literal[SEARCH_MODES]


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | int = Field(description="your id: a non-empty string or an integer (kept as a string, so 7 and "
                                      "\"7\" are one document); upserting an existing id replaces it, and an id "
                                      "sent twice keeps its last copy")
    text: str
    metadata: dict[str, Any] | None = Field(
        None, description="stored with the document; search can filter on it. JSON values only: finite numbers, "
                          "integers within signed 64 bits")

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> Any:
        try:
            check_id(value)  # before pydantic's coercion, which would turn true into 1
        except ValueError as e:
            raise PydanticCustomError("invalid_id", str(e)) from None
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any]:
        doc_id = info.data.get("id")  # absent when the id failed its own check
        try:
            return check_metadata(value, None if doc_id is None else str(doc_id))
        except ValueError as e:
            raise PydanticCustomError("invalid_metadata", str(e)) from None


class UpsertRequest(BaseModel):
    documents: list[Document] = Field(description="documents to insert or replace")
    model: str | None = None


class UpsertResponse(BaseModel):
    upserted: int
    ids: list[str]
    count: int = Field(description="documents in the index afterwards")
    usage: Usage


class DeleteResponse(BaseModel):
    id: str
    deleted: Literal[True] = True


class SearchRerank(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top: int = Field(DEFAULT_RERANK_TOP, ge=1, le=1000, description="first-stage hits the reranker rescores "
                                                                   "(at least k)")


class SearchRequest(BaseModel):
    query: str | list[str] = Field(description="one query, or several (one ranked list each, in order)")
    k: int = Field(10, ge=1, le=1000, description="hits per query")
    mode: SearchMode | None = Field(
        None, description="default: the fullest mode the index stores (all = M3 hybrid: dense and sparse "
                          "candidates, rescored with w_d·dense + w_s·sparse + w_c·colbert)")
    weights: tuple[float, float, float] | None = Field(
        None, description=f"(dense, sparse, colbert) for hybrid modes; default the index's search_weights (its "
                          f"model's, else {SEARCH_WEIGHTS})")
    candidates: int | None = Field(None, ge=1, le=10_000, description="candidates per route for hybrid modes")
    filter: dict[str, Any] | None = Field(
        None, description='metadata conditions, all must hold: {"lang": "en", "tag": ["a", "b"], '
                          '"year": {"gte": 2000}}')
    with_text: bool = True
    explain: bool = Field(False, description="add each mode's score to every hit")
    rerank: SearchRerank | None = Field(
        None, description="rescore the first stage's best `top` hits with the server's cross-encoder (started "
                          "with --reranker): score = its logit, scores['rerank'] too")
    model: str | None = None


class Hit(BaseModel):
    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None
    scores: dict[str, float] | None = None


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    results: list[list[Hit]] = Field(description="one ranked list per query, best first")
    usage: Usage


class IndexInfo(BaseModel):
    location: str
    engine: str
    modes: list[Mode]
    count: int
    fingerprint: str


class Health(BaseModel):
    status: Literal["ok", "stopping"]
    model: str
    fingerprint: str
    modes: list[Mode]
    index: bool
    reranker: str | None = Field(None, description="the served reranker's name, if one is loaded")
    queued: int
