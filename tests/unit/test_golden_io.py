"""Golden-set import: ragas reference_contexts resolved against the index's chunk texts (pure)."""

from __future__ import annotations

import pytest

from tasks import golden_io

CATALOG = [
    {"chunk_id": "c2", "doc_id": "b.md", "text": "The outbound filter scores mail.\n"},
    {"chunk_id": "c1", "doc_id": "a.md", "text": "The outbound filter scores mail."},
    {"chunk_id": "c3", "doc_id": "c.md", "text": "Something else."},
]


def _resolve(*lines: dict) -> list[dict]:
    items = [golden_io.ImportedItem.model_validate(line) for line in lines]
    chunk_docs = {r["chunk_id"]: r["doc_id"] for r in CATALOG}
    return golden_io.resolve_items(items, chunk_docs, golden_io.chunks_by_text(CATALOG), "test.jsonl")


def test_reference_text_found_in_several_documents_maps_to_every_chunk_holding_it():
    [row] = _resolve({"user_input": "Which filter scores mail?", "reference": "The outbound one.",
                      "reference_contexts": ["The outbound filter scores mail."]})
    assert row["reference_chunk_ids"] == ["c1", "c2"] and row["reference_doc_ids"] == ["a.md", "b.md"]
    # The catalog's order (the table's row order) does not matter.
    again = golden_io.chunks_by_text(list(reversed(CATALOG)))
    assert again == golden_io.chunks_by_text(CATALOG)


def test_reference_text_in_no_chunk_still_fails_the_import():
    with pytest.raises(golden_io.GoldenImportError, match="item 1: a reference_contexts entry matches no chunk"):
        _resolve({"user_input": "Q?", "reference": "A.", "reference_contexts": ["nowhere"]})
