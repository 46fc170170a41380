"""LangChain over an m3embed index: M3 hybrid search (dense + sparse + ColBERT), a metadata filter, a rerank.

    pip install 'm3embed[langchain]'
    python examples/langchain_retriever.py [INDEX_DIR]

Runs offline with the shipped models minilm-m3 and minilm-reranker; use "BAAI/bge-m3" and
"BAAI/bge-reranker-v2-m3" for real work.
"""

from __future__ import annotations

import sys
import tempfile

from _corpus import build_index

from m3embed import M3Model
from m3embed.integrations.langchain import M3Embeddings, M3Retriever
from m3embed.rerank import Reranker


def main(path: str) -> None:
    model = M3Model.from_pretrained("minilm-m3")
    with build_index(path, model) as index:
        retriever = M3Retriever(index=index, k=3)  # mode: "all" (the index stores all three representations)
        for doc in retriever.invoke("which model gives sparse and dense vectors?"):
            print(f"{doc.metadata['score']:.3f}  {doc.id}: {doc.page_content[:60]}")
        animals = retriever.invoke("bears that eat bamboo", filter={"topic": "animals"}, k=1)
        print("filtered:", [d.id for d in animals])
        reranker = Reranker.from_pretrained("minilm-reranker")
        reranked = M3Retriever(index=index, k=2, mode="dense+sparse", reranker=reranker)
        docs = reranked.invoke("how does ColBERT score a passage?")
        print("reranked:", [(d.id, round(d.metadata["score"], 3)) for d in docs])  # score: the reranker's logit
    vector = M3Embeddings(model).embed_query("hello")
    print("dense query vector:", len(vector), "floats")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(f"{tmp}/index")
