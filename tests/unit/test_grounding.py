"""Text checks shared by synth and eval: words in any script, facts, evidence spans, garbage answers."""

from __future__ import annotations

import pytest

from ragloop.tasks import grounding

CONTEXT = ("Riverside Hub has 32 docks, 10 of them with chargers. Backups run nightly at 02:15 and are kept "
           "35 days. Start the server with uvicorn and pass response_model to FastAPI.")
ZH_CONTEXT = "这个数据集用于评估检索系统的质量。每个问题都有参考答案。"


@pytest.mark.parametrize(
    "answer, context, expected",
    [
        ("32 docks with chargers", CONTEXT, 1.0),
        ("purple elephants", CONTEXT, 0.0),
        ("数据集用于评估检索系统。", ZH_CONTEXT, 1.0),  # copied Chinese is supported (bigrams of Han characters)
        ("太阳从西边升起。", ZH_CONTEXT, 0.0),  # made-up Chinese is not
        ("Der Datensatz prüft Qualität.", "Der Datensatz prüft die Qualität der Suche.", 1.0),
        ("", CONTEXT, 0.0),
    ],
)
def test_support_counts_words_in_any_script(answer, context, expected):
    assert grounding.support(answer, context) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, unsupported",
    [
        ("It has 32 docks and backups are kept 35 days.", []),
        ("Riverside Hub has 14 docking stations, including 4 new ones.", ["14", "4"]),  # numbers made up
        ("Backups are kept 35 years.", ["35 year"]),  # the number is there, with another unit
        ("Backups run at 02:15 on Mondays in Lisbon.", ["Mondays", "Lisbon"]),  # names made up
        ("Use uvicorn with response_model in FastAPI.", []),  # identifiers and CamelCase from the context
        ("Pass response_schema to Starlette.", ["Starlette", "response_schema"]),
        ("1. Start the server.\n2. Check the docks.", []),  # list markers are not facts
        ("Use the server [2] at night.", []),  # passage marks are not facts
    ],
)
def test_unsupported_facts_names_made_up_numbers_units_and_names(text, unsupported):
    got = [f.text + (f" {f.unit}" if f.unit else "") for f in grounding.unsupported_facts(text, CONTEXT)]
    assert sorted(got) == sorted(unsupported)


def test_evidence_spans_cover_the_answer_facts_inside_the_text():
    spans = grounding.evidence_spans("Riverside Hub has 32 docks; backups run at 02:15.", CONTEXT)
    assert [CONTEXT[s:e] for s, e in spans] == [
        "Riverside Hub has 32 docks, 10 of them with chargers.", "Backups run nightly at 02:15 and are kept 35 days."]
    assert all(0 <= s < e <= len(CONTEXT) for s, e in spans)
    assert grounding.evidence_spans("Purple elephants dance.", CONTEXT) == []


@pytest.mark.parametrize(
    "answer, question, finish_reason, reason",
    [
        ("Riverside Hub has 32 docks, 10 of them with chargers.", "How many docks does Riverside Hub have?", "stop", None),
        ("Check the bike's frame. " * 15, "How do I check a bike?", "stop", "loop"),
        ("[1] # Evaluate a simple RAG system\n" * 12, "How do I evaluate a RAG system?", "length", "loop"),
        ("See [1], [2] and [3] for the docks.", "How many docks?", "stop", "passage_spam"),
        ("The hub has [number] docks.", "How many docks does the hub have?", "stop", "placeholder"),
        ("Riverside Hub has 32 docks, 10 of them with", "How many docks?", "stop", "truncated"),
        ("Backups run nightly at 02:15 and are kept 35 da", "When do backups run?", "stop", "truncated"),
        ("Backups run nightly at 02:15.", "When do backups run?", "length", "truncated"),
        ("How many docks does Riverside Hub have?", "How many docks does Riverside Hub have?", "stop", "echo"),
        ("32 docks.", "How many docks does Riverside Hub have?", "stop", None),
        ("这个数据集用于评估检索系统的质量。", "这个数据集有什么用？", "stop", None),
    ],
)
def test_degenerate_reason_table(answer, question, finish_reason, reason):
    assert grounding.degenerate_reason(answer, question, CONTEXT + ZH_CONTEXT, finish_reason) == reason


@pytest.mark.parametrize(
    "text, context, expected",
    [
        ("What is the purpose of the [test_dataset]?", "", ["[test_dataset]"]),
        ("Explain {topic} to me.", "", ["{topic}"]),
        ("How does <topic> work?", "", ["<topic>"]),
        ("What does GET /items/{item_id} return?", "@app.get('/items/{item_id}')", []),  # a real path parameter
        ("See [the docs](https://example.org) first.", "", []),  # a Markdown link
        ("Is a < b and c > d?", "", []),  # comparisons are not slots
    ],
)
def test_placeholders_are_slots_the_context_does_not_have(text, context, expected):
    assert grounding.placeholders(text, context) == expected


def test_headings_code_and_template_lines_are_never_evidence():
    text = ("### Gold Sponsors\n\n{% if sponsors.gold %}\n<div class=\"logo\">Gold</div>\n\n"
            "```python\nsponsors = gold_sponsors()\n```\n\nGold sponsors are listed first on the page.")
    spans = grounding.evidence_spans("Gold sponsors are listed first.", text)
    assert [text[s:e] for s, e in spans] == ["Gold sponsors are listed first on the page."]
    assert grounding.evidence_spans("Gold Sponsors", "### Gold Sponsors\n\n{% if sponsors.gold %}") == []


def test_an_answer_redacted_on_import_is_not_a_placeholder_answer():
    """Found by a new user: 'We will call [PHONE] or mail [EMAIL]' (ragloop's own redaction of a logged
    answer) was counted degenerate ('placeholder') in the monitor's production checks."""
    from ragloop.tasks import production

    assert grounding.placeholders("We will call [PHONE] or mail [EMAIL]; see [REDACTED].") == []
    assert grounding.placeholders("Dear [customer name], call [PHONE].") == ["[customer name]"]
    assert set(production.REDACTED.values()) == set(grounding.REDACTION_MARKERS.values())
