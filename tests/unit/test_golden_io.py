"""Golden-set import: ragas reference_contexts resolved against the index's chunk texts (pure)."""

from __future__ import annotations

import pytest

from ragloop.tasks import golden_io

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


# -- import shapes (issue 17, kind 7) ---------------------------------------------------------------
import json  # noqa: E402


def _write(tmp_path, lines) -> "object":
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"question": "How many docks?", "reference_answer": "Ten.", "reference_chunk_ids": ["c1"], "qa_type": "single_hop",
          "status": "active", "review": "synthetic", "created_at": "2024-01-01T00:00:00"},
         {"question": "How many docks?", "reference_answer": "Ten.", "reference_chunk_ids": ["c1"], "qa_type": "single_hop"}),
        ({"user_input": "How many docks?", "reference": "Ten.", "reference_contexts": ["Station 1 has ten docks."],
          "persona_name": "rider", "query_style": "paraphrased", "synthesizer_name": "single_hop_specific", "response": "x"},
         {"question": "How many docks?", "reference_answer": "Ten.", "reference_contexts": ["Station 1 has ten docks."],
          "persona": "rider", "qa_type": "paraphrased"}),
        ({"question": "How many docks?", "contexts": ["Station 1 has ten docks."], "ground_truth": "Ten.",
          "evolution_type": "simple", "metadata": [{"source": "a.md"}], "episode_done": True},
         {"question": "How many docks?", "reference_answer": "Ten.", "reference_contexts": ["Station 1 has ten docks."],
          "qa_type": "single_hop"}),
        ({"question": "How many docks?", "contexts": ["what a chain retrieved"], "answer": "Ten.", "ground_truths": ["Ten.", "10"]},
         {"question": "How many docks?", "reference_answer": "Ten.\n10", "reference_contexts": []}),
    ],
    ids=["ragloop-export", "ragas-0.2", "ragas-0.1-testset", "ragas-0.1-eval-dataset"],
)
def test_each_supported_shape_is_recognised(tmp_path, line, expected):
    (item,) = golden_io.read_import_file(_write(tmp_path, [line]))
    for field, value in expected.items():
        assert getattr(item, field) == value, field


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([{"query": "How?", "answer": "x"}], r"line 1: no 'question' or 'user_input' field.*ragas 0.1 testsets"),
        ([{"question": "How?", "refs": ["c1"]}], r"line 1: field 'refs' is not a field of ragloop rows"),
        ([{"user_input": "How?", "ground_truth": "x"}], r"line 1: field 'ground_truth' is not a field of ragas 0.2\+ samples"),
        ([{"question": "How?", "contexts": "one string", "ground_truth": "x"}], r"line 1: field 'contexts': expected a list"),
        ([{"question": "A?"}, {"user_input": "B?"}], r"line 2: ragas 0.2\+ samples .*but line 1 is ragloop rows"),
        ([{"question": "A?"}, ["not", "an", "object"]], r"line 2: expected a JSON object"),
        ([{"question": ""}], r"line 1: question: String should have at least 1 character"),
    ],
    ids=["unknown-shape", "unknown-ragloop-field", "mixed-ragas-fields", "contexts-not-a-list", "mixed-shapes",
         "not-an-object", "empty-question"],
)
def test_anything_else_fails_naming_line_and_field(tmp_path, lines, match):
    with pytest.raises(golden_io.GoldenImportError, match=match):
        golden_io.read_import_file(_write(tmp_path, lines))


# -- a ragloop row's own qa_type (fresh-user follow-up) ---------------------------------------------
@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([{"question": "A?", "reference_chunk_ids": ["c1"]}, {"question": "B?", "reference_chunk_ids": ["c2"], "qa_type": "yes_no"}],
         r"line 2: qa_type 'yes_no' is not a registered question type \(registered: single_hop, .*unanswerable"),
        ([{"question": "Who owns the docks?", "qa_type": "single_hop"}],
         r"line 1: qa_type 'single_hop' needs reference_chunk_ids, reference_doc_ids or reference_contexts"),
    ],
    ids=["unknown-type", "answerable-type-without-references"],
)
def test_a_rows_qa_type_is_checked(tmp_path, lines, match):
    with pytest.raises(golden_io.GoldenImportError, match=match):
        golden_io.read_import_file(_write(tmp_path, lines))


def test_rows_without_a_type_or_must_refuse_rows_need_no_references(tmp_path):
    lines = [{"question": "A?"}, {"question": "B?", "qa_type": "unanswerable"}, {"question": "C?", "qa_type": "imported"}]
    items = golden_io.read_import_file(_write(tmp_path, lines))
    assert [i.qa_type for i in items] == ["imported", "unanswerable", "imported"]
