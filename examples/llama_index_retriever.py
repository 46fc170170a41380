"""LlamaIndex over an m3embed index: M3 hybrid search as a retriever, and M3 dense vectors as its embed model.

    pip install 'm3embed[llamaindex]'
    python examples/llama_index_retriever.py [INDEX_DIR]

Runs offline with the shipped model minilm-m3; use "BAAI/bge-m3" for real work.
"""

from __future__ import annotations

import sys
import tempfile

from _corpus import build_index

from m3embed import M3Model
from m3embed.integrations.llama_index import M3Embedding, M3Retriever


def main(path: str) -> None:
    model = M3Model.from_pretrained("minilm-m3")
    with build_index(path, model) as index:
        retriever = M3Retriever(index, k=3)  # mode: "all"
        for hit in retriever.retrieve("which model gives sparse and dense vectors?"):
            print(f"{hit.score:.3f}  {hit.node.id_}: {hit.node.get_content()[:60]}")
        german = M3Retriever(index, k=2, mode="sparse", filter={"lang": "de"}).retrieve("Panda Bambus")
        print("filtered:", [h.node.id_ for h in german])
    embed = M3Embedding(model)
    print("dense query vector:", len(embed.get_query_embedding("hello")), "floats")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(f"{tmp}/index")
