"""BEIR-layout test sets: read corpus, queries and qrels into a `Dataset`; the shapes runs and qrels take.

A dataset directory holds `corpus.jsonl` (`id`, `text`, optional `title`), `queries.jsonl` (`id`, `text`) and
one or more qrels files (`query-id<TAB>corpus-id<TAB>score`, header optional; TREC `qid 0 docid rel` too).
Errors name the file, the line and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3embed.corpus import iter_jsonl

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]
"""`{query_id: {doc_id: grade}}`."""
Run = dict[str, dict[str, float]]
"""`{query_id: {doc_id: score}}`, higher is better."""
Searcher = Callable[[Sequence[str]], list[dict[str, float]]]
"""Query texts -> one `{doc_id: score}` dict per query (higher is better)."""


@dataclass
class Dataset:
    """A retrieval test set in memory.

    Attributes:
        name: display name (the directory's last two parts, e.g. `classic/adi`).
        doc_ids / doc_texts: the corpus in file order; text = `title + " " + text` when a title exists.
        queries: judged queries only, `{query_id: text}` in file order.
        qrels: `{query_id: {doc_id: grade}}` for those queries.
        qrels_file: which qrels file was read.
    """

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: Qrels
    qrels_file: str

    def head(self, n: int) -> Dataset:
        """The same dataset restricted to its first `n` queries (for quick runs)."""
        keep = list(self.queries)[:n]
        return Dataset(self.name, self.doc_ids, self.doc_texts, {q: self.queries[q] for q in keep},
                       {q: self.qrels[q] for q in keep}, self.qrels_file)


def _field(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: missing field {key!r} (have {sorted(obj)})")
        return None
    if key == "id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # some BEIR exports write numeric ids
    if not isinstance(value, str):
        raise TypeError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def load_corpus(path: str | Path) -> dict[str, str]:
    """Read corpus.jsonl into `{doc_id: text}`; the text is `title + " " + text` when a title is present."""
    path = Path(path)
    corpus: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        doc_id = _field(obj, "id", where)
        text = _field(obj, "text", where)
        title = _field(obj, "title", where, required=False)
        if doc_id in corpus:
            raise ValueError(f"{where}: duplicate document id {doc_id!r}")
        corpus[doc_id] = f"{title} {text}".strip() if title else text
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    """Read queries.jsonl into `{query_id: text}`."""
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        query_id = _field(obj, "id", where)
        if query_id in queries:
            raise ValueError(f"{where}: duplicate query id {query_id!r}")
        queries[query_id] = _field(obj, "text", where)
    return queries


def load_qrels(path: str | Path) -> Qrels:
    """Read a BEIR qrels TSV (`query-id corpus-id score`, header optional) or TREC qrels (`qid 0 docid rel`)."""
    path = Path(path)
    if not path.is_file():
        hint = ", ".join(sorted(p.name for p in path.parent.glob("qrels*"))) or "none"
        raise FileNotFoundError(f"{path} not found; qrels files in {path.parent}: {hint}")
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 4:  # TREC layout: qid iteration docid rel
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ValueError(f"{path}:{lineno}: expected 3 tab-separated fields "
                                 f"(query-id, corpus-id, score), got {len(parts)}")
            query_id, doc_id, grade = parts
            try:
                score = int(grade)
            except ValueError:
                if lineno == 1 and not qrels:
                    continue  # header line
                raise ValueError(f"{path}:{lineno}: field 'score' must be an integer, got {grade!r}") from None
            qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise ValueError(f"{path}: no judgements found")
    return qrels


def load_dataset(path: str | Path, qrels: str = "qrels.tsv") -> Dataset:
    """Load a BEIR-layout directory, keeping only the queries that have at least one relevant document.

    Args:
        path: the dataset directory.
        qrels: the qrels file name inside it (e.g. `qrels.dev.tsv`), or a path to one.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory; pass a dataset dir holding corpus.jsonl")
    qrels_path = Path(qrels) if Path(qrels).is_absolute() else root / qrels
    corpus = load_corpus(root / "corpus.jsonl")
    if not corpus:  # was two NumPy warnings, then "max() arg is an empty sequence"
        raise ValueError(f"{root / 'corpus.jsonl'} holds no documents; an evaluation ranks a corpus, so give it "
                         "one document per line ({\"id\": ..., \"text\": ...})")
    all_queries = load_queries(root / "queries.jsonl")
    if not all_queries:
        raise ValueError(f"{root / 'queries.jsonl'} holds no queries; give it one query per line "
                         "({\"id\": ..., \"text\": ...})")
    judged = load_qrels(qrels_path)
    unknown = [q for q in judged if q not in all_queries]
    if unknown:
        raise ValueError(f"{qrels_path}: {len(unknown)} query id(s) not in queries.jsonl, e.g. {unknown[0]!r}")
    missing_docs = {d for rels in judged.values() for d in rels if d not in corpus}
    if missing_docs:  # still counted as relevant, just never retrievable (trec_eval semantics)
        logger.warning("%s: %d judged doc id(s) not in corpus.jsonl, e.g. %r",
                       qrels_path, len(missing_docs), next(iter(missing_docs)))
    queries = {q: t for q, t in all_queries.items() if any(g > 0 for g in judged.get(q, {}).values())}
    if not queries:
        raise ValueError(f"{qrels_path}: no query has a judgement with score > 0")
    name = "/".join(root.resolve().parts[-2:])
    return Dataset(name, list(corpus), list(corpus.values()), queries,
                   {q: judged[q] for q in queries}, qrels_path.name)
