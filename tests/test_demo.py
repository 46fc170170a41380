from __future__ import annotations

import json

from rich.console import Console

from m3embed.demo import ENGLISH_QUERIES as QUERIES
from m3embed.demo import SAMPLE, run

EXPECTED_ARTICLE = {QUERIES[0]: "xq-12", QUERIES[1]: "xq-16", QUERIES[2]: "xq-41", QUERIES[3]: "xq-04"}


def test_demo_shows_every_mode_and_finds_the_right_articles(bert_ckpt, tmp_path):
    rows = [json.loads(line) for line in SAMPLE.open()]
    subset = tmp_path / "subset.jsonl"
    keep = [r for r in rows if r["id"].rsplit("-", 1)[0] in {"xq-04", "xq-12", "xq-16", "xq-41", "xq-00", "xq-33"}]
    subset.write_text("".join(json.dumps(r) + "\n" for r in keep))
    console = Console(record=True, width=160)
    results = run(str(bert_ckpt), tmp_path / "idx", k=2, console=console, corpus=subset, queries=QUERIES)
    assert set(results) == set(QUERIES)
    for query, by_mode in results.items():
        assert list(by_mode) == ["dense", "sparse", "colbert", "dense+sparse", "all"]
        assert len(by_mode["dense"]) == 2 and all(len(ids) <= 2 for ids in by_mode.values())
        # MiniLM's trained dense encoder puts the paragraph of the right article first
        assert by_mode["dense"][0].startswith(EXPECTED_ARTICLE[query] + "-"), (query, by_mode["dense"])
    text = console.export_text()
    assert f"{len(keep)} documents indexed ({len(keep)} added now)" in text
    # a second run reopens the index and adds nothing
    console = Console(record=True, width=160)
    run(str(bert_ckpt), tmp_path / "idx", k=1, console=console, corpus=subset, queries=QUERIES[:1])
    assert f"{len(keep)} documents indexed (0 added now)" in console.export_text()
