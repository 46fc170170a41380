"""Haystack over an m3embed index: the M3 retriever in a pipeline, and the M3 embedders.

    pip install 'm3embed[haystack]'
    python examples/haystack_pipeline.py [INDEX_DIR]

Runs offline with the shipped model minilm-m3; use "BAAI/bge-m3" for real work.
"""

from __future__ import annotations

import sys
import tempfile

from _corpus import build_index
from haystack import Document, Pipeline

from m3embed import M3Model
from m3embed.integrations.haystack import M3DocumentEmbedder, M3Retriever, M3TextEmbedder


def main(path: str) -> None:
    model = M3Model.from_pretrained("minilm-m3")
    with build_index(path, model) as index:
        pipeline = Pipeline()
        pipeline.add_component("retriever", M3Retriever(index, top_k=3))  # mode: "all"
        result = pipeline.run({"retriever": {"query": "which model gives sparse and dense vectors?"}})
        for doc in result["retriever"]["documents"]:
            print(f"{doc.score:.3f}  {doc.id}: {doc.content[:60]}")
        german = {"field": "meta.lang", "operator": "==", "value": "de"}  # Haystack's filter syntax
        result = pipeline.run({"retriever": {"query": "animals", "filters": german, "top_k": 1}})
        print("filtered:", [d.id for d in result["retriever"]["documents"]])
    docs = M3DocumentEmbedder(model).run(documents=[Document(content="BGE-M3 in Haystack")])["documents"]
    query = M3TextEmbedder(model).run(text="hello")["embedding"]
    print("dense vectors:", len(docs[0].embedding), len(query), "floats")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(f"{tmp}/index")
