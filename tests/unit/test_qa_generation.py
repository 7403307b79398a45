"""Golden-set logic: budget split, staleness, filters, near-duplicates, ids (no LLM, no model)."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
import pytest

from ragloop.tasks import qa_generation as qa
from ragloop.tasks.embedding import HashEmbedder
from ragloop.tasks.prompts import load_prompts
from ragloop.tasks.settings import SynthConfig
from tests.conftest import REPO

CONTEXT = "Riverside Hub has 32 docks, 10 of them with chargers. Backups run nightly at 02:15 and are kept 35 days."


@pytest.mark.parametrize(
    "total, weights, expected",
    [
        (10, {"single_hop": 0.4, "multi_hop": 0.2, "abstract": 0.15, "unanswerable": 0.1, "paraphrased": 0.15},
         {"single_hop": 4, "multi_hop": 2, "abstract": 2, "unanswerable": 1, "paraphrased": 1}),
        (3, {"single_hop": 1.0, "multi_hop": 0.0}, {"single_hop": 3}),
        (1, {"single_hop": 1, "abstract": 1}, {"single_hop": 1, "abstract": 0}),
        (0, {"single_hop": 1}, {"single_hop": 0}),
    ],
)
def test_allocate_splits_the_budget_exactly(total, weights, expected):
    counts = qa.allocate(total, weights)
    assert counts == expected and sum(counts.values()) == total


def _item(qa_id, chunks, docs, status="active"):
    return {"qa_id": qa_id, "source_chunk_ids": chunks, "source_doc_ids": docs, "status": status}


def test_classify_previous_keeps_untouched_marks_changed_stale_and_vanished_retired():
    items = [
        _item("k", ["c1", "c2"], ["d1"]),
        _item("s", ["c3"], ["d2"]),
        _item("r", ["c4"], ["d3"]),
        _item("m", ["c1", "c5"], ["d1", "d3"]),
        _item("old", ["c9"], ["d9"], status="retired"),
    ]
    verdicts = qa.classify_previous(items, chunk_ids={"c1", "c2", "c3x"}, doc_ids={"d1", "d2"})
    assert verdicts == {"k": "kept", "s": "stale", "r": "retired", "m": "retired"}


def _cand(question, answer, qa_type="single_hop", error=None, context=CONTEXT, finish_reason="stop"):
    prompts = load_prompts(REPO / "prompts")
    contexts = [context] if isinstance(context, str) else context
    chunks = [qa.ChunkRef(f"c{i + 1}", f"d{i + 1}", "sha", text, 0) for i, text in enumerate(contexts)]
    return qa.Candidate(qa.GenTask(qa_type, "a rider", chunks), question, answer, prompts["qa_single_hop"], error,
                        finish_reason)


@pytest.mark.parametrize(
    "question, answer, qa_type, error, reason",
    [
        ("How many docks does Riverside Hub have?", "32 docks, 10 with chargers.", "single_hop", None, None),
        ("", "", "single_hop", "invalid JSON", "unparseable"),
        ("Docks?", "32", "single_hop", None, "too_short"),
        ("How many docks? " * 30, "32 docks", "single_hop", None, "too_long"),
        ("How many docks does Riverside Hub have?", "", "single_hop", None, "too_short"),
        ("Riverside Hub has 32 docks, 10 of them with chargers?", "32 docks", "single_hop", None, "copies_context"),
        ("How many docks does Riverside Hub have?", "Forty bicycles painted blue downtown.", "single_hop", None, "unsupported_answer"),
        ("Which company manufactured the Riverside chargers?", "", "unanswerable", None, None),
        ("What is the difference between", "", "unanswerable", None, "malformed"),
        ("How many docks?\nRiverside Hub has 32.", "32 docks", "single_hop", None, "malformed"),
        ("how many docks at riverside hub", "32 docks", "paraphrased", None, None),
        ("What is the passage about?", "32 docks", "single_hop", None, "refers_to_context"),
        ("What does this text cover?", "32 docks", "abstract", None, "refers_to_context"),
        ("Which of the following is not a Riverside charger?", "32 docks", "single_hop", None, "refers_to_context"),
    ],
)
def test_reject_reason_table(question, answer, qa_type, error, reason):
    assert qa.reject_reason(_cand(question, answer, qa_type, error), SynthConfig()) == reason


HOURS = "The museum station opens at 07:00 and closes at midnight. Night buses stop there every 20 minutes."


@pytest.mark.parametrize(
    "question, answer, qa_type, context, finish_reason, reason",
    [
        # made-up facts: a number, a number with another unit, a name, a number in the question
        ("How many docks does Riverside Hub have?", "Riverside Hub has 14 docking stations, including 4 new ones.",
         "single_hop", CONTEXT, "stop", "made_up_fact"),
        ("How long are backups kept?", "Backups are kept for 35 years.", "single_hop", CONTEXT, "stop", "made_up_fact"),
        ("When do backups run?", "Backups run nightly at 02:15 in the Lisbon office.", "single_hop", CONTEXT, "stop",
         "made_up_fact"),
        ("How many docks did Riverside Hub have in 1998?", "32 docks.", "single_hop", CONTEXT, "stop", "made_up_fact"),
        ("How many docks does Riverside Hub have?", "32 docks, 10 of them with chargers.", "single_hop", CONTEXT, "stop", None),
        # template placeholders, in the question or the answer
        ("What is the purpose of the [test_dataset]?", "Backups run nightly.", "single_hop", CONTEXT, "stop", "placeholder"),
        ("How does <topic> work at Riverside Hub?", "32 docks.", "single_hop", CONTEXT, "stop", "placeholder"),
        ("How many docks does Riverside Hub have?", "It has {docks} docks.", "single_hop", CONTEXT, "stop", "placeholder"),
        ("What should I ask about {station}?", "", "unanswerable", CONTEXT, "stop", "placeholder"),
        # degenerate repetition and passage-number spam
        ("How do I check a bike at Riverside Hub?", "Check the bike's frame. " * 15, "single_hop",
         CONTEXT + " Check the bike's frame.", "stop", "repetition"),
        ("When do backups run?", "[1] Backups [2] run [3] nightly.", "single_hop", CONTEXT, "stop", "repetition"),
        # truncation: mid-word, on a dangling word, at max_tokens
        ("When do backups run?", "Backups run nightly at 02:15 and are kept 35 da", "single_hop", CONTEXT, "stop", "truncated"),
        ("How many docks does Riverside Hub have?", "Riverside Hub has 32 docks, 10 of them with", "single_hop",
         CONTEXT, "stop", "truncated"),
        ("When do backups run?", "Backups run nightly at 02:15.", "single_hop", CONTEXT, "length", "truncated"),
        # circular or self-referential
        ("What is the difference between a Prompts and a Prompts?", "Backups run nightly.", "single_hop", CONTEXT, "stop",
         "circular"),
        ("Which is better, docks vs docks?", "32 docks.", "single_hop", CONTEXT, "stop", "circular"),
        ("What is the difference between a Riverside Hub and Riverside Hub?", "", "unanswerable", CONTEXT, "stop",
         "circular"),
        ("What is the difference between a Riverside Hub and Riverside Hub? And why?", "", "unanswerable", CONTEXT, "stop",
         "malformed"),  # two questions
        # a question that loops
        ("How can I enable backups at Riverside Hub? How can I enable backups at Riverside Hub?", "Backups run nightly.",
         "single_hop", CONTEXT, "stop", "malformed"),
        ("How many docks does the hub have for riders of the hub for riders of the hub?", "32 docks.", "single_hop",
         CONTEXT, "stop", "repetition"),
        ("What is the answer to this question?", "32 docks.", "single_hop", CONTEXT, "stop", "circular"),
        ("How many docks does Riverside Hub have?", "How many docks does Riverside Hub have?", "single_hop", CONTEXT,
         "stop", "circular"),
        ("What is the difference between docks and chargers?", "32 docks, 10 of them with chargers.", "single_hop",
         CONTEXT, "stop", None),
        # multi-hop needs evidence in both chunks
        ("When do backups run and when does the museum station close?", "Backups run at 02:15; it closes at midnight.",
         "multi_hop", [CONTEXT, HOURS], "stop", None),
        ("How many docks does Riverside Hub have and when are backups run?", "32 docks; backups run nightly at 02:15.",
         "multi_hop", [CONTEXT, HOURS], "stop", "missing_evidence"),
    ],
)
def test_reject_reason_for_each_failure_kind(question, answer, qa_type, context, finish_reason, reason):
    cand = _cand(question, answer, qa_type, context=context, finish_reason=finish_reason)
    assert qa.reject_reason(cand, SynthConfig()) == reason
    if reason is None and qa_type != "unanswerable":
        assert set(cand.evidence) == {c.chunk_id for c in cand.task.chunks}, "evidence in every chunk"


def test_accepted_items_carry_evidence_spans_inside_their_chunks():
    cand = _cand("When do backups run and when does the museum station close?",
                 "Backups run at 02:15; it closes at midnight.", "multi_hop", context=[CONTEXT, HOURS])
    assert qa.reject_reason(cand, SynthConfig()) is None
    item = qa.to_item(cand, "g")
    texts = {c.chunk_id: c.text for c in cand.task.chunks}
    spans = [(e["chunk_id"], texts[e["chunk_id"]][e["start"]:e["end"]]) for e in item["evidence"]]
    assert spans == [("c1", "Backups run nightly at 02:15 and are kept 35 days."),
                     ("c2", "The museum station opens at 07:00 and closes at midnight.")]
    assert item["source_doc_ids"] == ["d1", "d2"]
    assert item["source_doc_sha256s"] == ["sha", "sha"], "one sha256 per source doc, even when two docs are equal"
    abstract = _cand("What should I know about Riverside Hub?", "Riverside Hub has 32 docks and backups run nightly.",
                     "abstract", context=[CONTEXT, HOURS])
    assert qa.reject_reason(abstract, SynthConfig()) is None
    assert qa.to_item(abstract, "g")["reference_chunk_ids"] == ["c1"], "an abstract item refers to what it summarizes"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("# Guide\n\n- [Install](install.md)\n- [Tutorial](tutorial/index.md)\n- [Deploy](deploy.md)\n- [FAQ](faq.md)",
         "link_list"),
        ("## Contents\n\n1. Introduction\n2. First steps\n3. Path parameters\n4. Query parameters\n5. Request body",
         "table_of_contents"),
        ("```python\nfrom fastapi import FastAPI\napp = FastAPI()\n```", "code_only"),
        ("# Tutorial\n\n## User guide\n\n### First steps", "heading_only"),
        ("# Tips\n\nSee below.", "no_prose"),
        ("## Facts\n\nStation 3 has 13 docks and 3 chargers near the harbour.", None),
        ("Run it:\n\n```bash\nuvicorn main:app --reload\n```\n\nThe --reload flag restarts the server after code changes.",
         None),
        ("station_id: S7\nname: Harbour Gate\ndocks: 14\nopened: 2019-04-02\ndistrict: Old Port", None),  # a table row
    ],
)
def test_ineligible_reason_table(text, reason):
    assert qa.ineligible_reason(text) == reason


@pytest.mark.parametrize(
    "question, texts, expected",
    [
        ("Which company manufactured the Riverside chargers?", [CONTEXT], False),
        ("How many docks does Riverside Hub have?", [HOURS, CONTEXT], True),  # the index answers it
        # every topic word is in one chunk: too close to call, so not kept as unanswerable ("purpose" is a template word)
        ("What is the purpose of the nightly backups?", [CONTEXT], True),
        ("When were the nightly backups kept in 1998?", [CONTEXT], False),  # a fact the index lacks
        ("When does the museum station close?", [HOURS], True),
    ],
)
def test_answered_by_finds_unanswerable_questions_the_index_answers(question, texts, expected):
    assert qa.answered_by(question, texts, coverage=0.8) is expected


class _TreeStore:
    """A ChunkStore stand-in over rows in memory (scan only): one eligible chunk per document."""

    def __init__(self, doc_ids):
        self.rows = [{"chunk_id": f"c-{d}", "doc_id": d, "doc_sha256": "s", "position": 0, "n_tokens": 50,
                      "text": f"The station {i} dock of document {d} is operated by crew {i + 3} on weekdays.", "vector": [0.0],
                      "headings": ["Stations"]}
                     for i, d in enumerate(doc_ids)]

    def scan(self, columns, where=None):
        rows = [r for r in self.rows if where is None or f"'{r['chunk_id']}'" in where]
        return pa.Table.from_pylist([{c: r[c] for c in columns} for r in rows])


def test_first_run_samples_span_the_folder_tree_not_the_first_paths():
    folders = {"api": 55, "guide": 25, "deploy": 10, "faq": 6}
    docs = [f"{f}/sub{i % 3}/page{i:03d}.md" for f, n in folders.items() for i in range(n)] + [f"top{i}.md" for i in range(4)]
    assert len(docs) == 100
    store = _TreeStore(docs)
    config = SynthConfig(size=10, types={"single_hop": 1.0})
    ineligible = Counter()
    tasks = qa.plan_tasks(store, {"single_hop": 10}, config, random.Random(0), priority_docs=sorted(docs), ineligible=ineligible)
    picked = [t.chunks[0].doc_id for t in tasks]
    assert {qa.top_folder(d) for d in picked} == {"api", "guide", "deploy", "faq", "."}, "every top-level folder"
    assert picked != sorted(docs)[:10] and len(set(picked)) == 10
    again = qa.plan_tasks(store, {"single_hop": 10}, config, random.Random(0), priority_docs=sorted(docs))
    assert [t.chunks[0].doc_id for t in again] == picked, "seeded: the same plan again"
    other = qa.plan_tasks(store, {"single_hop": 10}, config, random.Random(1), priority_docs=sorted(docs))
    assert [t.chunks[0].doc_id for t in other] != picked
    assert ineligible == Counter()


@pytest.mark.parametrize(
    "doc_id, folders, top",
    [("async.md", (), "."), ("tutorial/query-params.md", ("tutorial",), "tutorial"),
     ("a/b/c.md", ("a", "b"), "a"), ("tables/stations.csv#S1", ("tables", "stations.csv"), "tables")],
)
def test_folder_path_and_top_folder(doc_id, folders, top):
    assert qa.folder_path(doc_id) == folders and qa.top_folder(doc_id) == top


def test_answer_support_and_verbatim_ratio():
    assert qa.answer_support("32 docks with chargers", CONTEXT) == 1.0
    assert qa.answer_support("purple elephants", CONTEXT) == 0.0
    assert qa.verbatim_ratio("backups run nightly at 02:15", CONTEXT) == 1.0
    assert qa.verbatim_ratio("when are backups taken?", CONTEXT) < 0.5


def test_drop_near_duplicates_against_existing_and_within_batch():
    emb = HashEmbedder(dim=64)
    items = [{"question": q} for q in ["how many docks at riverside", "How many docks at Riverside", "when do backups run"]]
    kept, dropped = qa.drop_near_duplicates(items, [{"question": "when do backups run"}], emb.encode, 0.95)
    assert [i["question"] for i in kept] == ["how many docks at riverside"] and dropped == 2


def test_near_duplicates_from_one_chunk_are_dropped_at_a_lower_similarity():
    emb = HashEmbedder(dim=64)
    first = {"question": "how many docks does riverside hub have", "source_chunk_ids": ["c1"]}
    similar = "how many docks does the riverside hub have today"
    cos = float(emb.encode([first["question"]])[0] @ emb.encode([similar])[0])
    assert 0.8 <= cos < 0.95
    same_chunk = [first, {"question": similar, "source_chunk_ids": ["c1"]}]
    other_chunk = [first, {"question": similar, "source_chunk_ids": ["c2"]}]
    assert qa.drop_near_duplicates(same_chunk, [], emb.encode, 0.95, 0.8)[1] == 1
    assert qa.drop_near_duplicates(other_chunk, [], emb.encode, 0.95, 0.8)[1] == 0


def test_to_item_unanswerable_has_no_retrieval_references_but_keeps_sources():
    item = qa.to_item(_cand("Which firm built the chargers?", "", "unanswerable"), "fake-llm")
    assert item["reference_chunk_ids"] == [] and item["reference_doc_ids"] == []
    assert item["source_chunk_ids"] == ["c1"] and item["source_doc_ids"] == ["d1"]
    assert item["reference_answer"] == qa.REFUSAL_ANSWER and item["status"] == "active"
    assert item["prompt_hash"] and item["prompt_id"].startswith("qa_single_hop@")


def test_ids_are_content_derived():
    a = qa.to_item(_cand("How many docks does Riverside Hub have?", "32 docks."), "g")
    b = qa.to_item(_cand("How many docks does Riverside Hub have?", "32 docks."), "g")
    assert a["qa_id"] == b["qa_id"]
    assert qa.golden_set_id_of([a]) == qa.golden_set_id_of([b])
    assert qa.golden_set_id_of([a]) != qa.golden_set_id_of([dict(a, status="stale")])


# -- extractive items: the answer is a sentence of the chunk ---------------------------------------------
@pytest.mark.parametrize(
    "sentence, usable",
    [
        ("Snapshots are kept for 30 days and then deleted automatically.", True),
        ("- The worker polls the queue every 5 seconds by default.", True),  # a list item states a fact too
        ("It is kept for 30 days and then deleted automatically.", False),  # leans on the sentence before
        ("Or you might have any other way to reach the queue worker.", False),
        ("Here's an example of a worker with some of the options above.", False),  # points elsewhere
        ("You will learn how to configure workers in [Settings](advanced/settings.md).", False),  # another page
        ("Later, when reading about queues, you will learn how to retry jobs.", False),
        ("* Add GitHub action to auto-label approved pull requests.", False),  # a changelog line
        ("| `timeout` | `int` | Seconds before the worker gives up on a job.", False),  # a table row
        ("to a different domain, and would route the traffic to the right worker.", False),  # a wrapped line's tail
        ("If you want to run jobs in your tests apart from the queue (e.g.", False),  # cut at an abbreviation
        ("Workers retry.", False),  # too short to state a checkable fact
        ("Does the worker retry jobs that failed three times in a row?", False),  # a question, not a statement
        ("Swagger UI will handle it for you, but it needs this redirect helper.", False),  # "this" points back
    ],
)
def test_fact_sentences_keep_only_sentences_that_stand_on_their_own(sentence, usable):
    text = f"# Workers\n\n{sentence}\n"
    spans = qa.fact_sentences(text)
    assert bool(spans) is usable
    if usable:
        (start, end), = spans
        assert text[start:end] == sentence


def _extractive(question, sentence, qa_type="single_hop", other="Workers are started with the run command.",
                topic=("Queues", "Workers")):
    prompts = load_prompts(REPO / "prompts")
    text = f"{sentence} {other}"
    chunk = qa.ChunkRef("c1", "d1", "sha", text, 0, topic)
    return qa.Candidate(qa.GenTask(qa_type, "a user", [chunk], [(0, len(sentence))]), question, sentence,
                        prompts["qa_from_sentence"], None, "stop")


SENTENCE = "A failed job is retried three times before it is marked dead."


@pytest.mark.parametrize(
    "question, reason",
    [
        ("How many times is a failed job retried before it is marked dead?", None),
        ("How many times is a failed job retried in the acme-cli scheduler?", "unsupported_question"),  # a few-shot's name
        ("How do I create a context for jobs in a web browser?", "unsupported_question"),  # words of its own
        ("Is a failed job retried three times before it is marked dead?", "circular"),  # the answer adds nothing
        ("How many times is a failed job retried? How many times is a failed job retried?", "malformed"),
    ],
)
def test_extractive_reject_reasons_fall_on_the_question(question, reason):
    cand = _extractive(question, SENTENCE)
    assert qa.reject_reason(cand, SynthConfig()) == reason
    if reason is None:
        assert cand.evidence == {"c1": [(0, len(SENTENCE))]}, "the evidence is the answer sentence itself"


def test_a_paraphrase_is_held_to_the_question_it_rewrote():
    cand = _extractive("how many retries b4 a job is dead", SENTENCE, qa_type="paraphrased")
    cand.original_question = "How many times is a failed job retried before it is marked dead?"
    assert qa.reject_reason(cand, SynthConfig()) is None
    cand.original_question = "How many times is a job retried in the acme-cli scheduler?"
    assert qa.reject_reason(cand, SynthConfig()) == "unsupported_question"


def test_roundtrip_fails_a_question_whose_nearest_sentence_is_not_its_answer(fake_embedder):
    other = "Workers poll the queue every five seconds for new jobs."
    right = _extractive("How many times is a failed job retried before it is marked dead?", SENTENCE, other=other)
    wrong = _extractive("How often do workers poll the queue for new jobs?", SENTENCE, other=other)
    generated = _cand("How often do workers poll the queue?", "Every five seconds.", context=f"{SENTENCE} {other}")
    assert qa.roundtrip_failures([right, wrong, generated], fake_embedder.encode, margin=0.05) == {1}


def test_extractive_tasks_carry_a_fact_sentence_and_render_only_the_question_prompt():
    store = _TreeStore([f"guide/page{i}.md" for i in range(6)])
    config = SynthConfig(size=6, types={"single_hop": 1.0})
    tasks = qa.plan_tasks(store, {"single_hop": 6}, config, random.Random(0))
    assert len(tasks) == 6
    prompts = load_prompts(REPO / "prompts")
    for task in tasks:
        (start, end), = task.answer_spans
        sentence = task.chunks[0].text[start:end]
        assert sentence.endswith(".") and sentence in task.chunks[0].text
        prompt, messages = qa.task_messages(task, prompts)
        assert prompt.name == "qa_from_sentence" and messages[-1]["content"].endswith(f"Sentence: {sentence}\n")
        assert messages[-1]["content"].startswith("Topic: Stations")
        assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * 3, "the few-shot examples come first"
        assert qa.extractive_answer(task) == sentence


def test_report_folders_split_a_folder_holding_most_documents():
    docs = [f"docs/tutorial/p{i}.md" for i in range(5)] + [f"docs/advanced/p{i}.md" for i in range(3)] + \
           ["docs/index.md", "README.md", "blog/post.md"]
    folders = qa.report_folders(docs)
    assert folders["docs/tutorial/p0.md"] == "docs/tutorial" and folders["docs/advanced/p1.md"] == "docs/advanced"
    assert folders["docs/index.md"] == "docs" and folders["README.md"] == "." and folders["blog/post.md"] == "blog"
    even = ["a/x.md", "a/y.md", "b/x.md", "b/y.md"]
    assert qa.report_folders(even) == {"a/x.md": "a", "a/y.md": "a", "b/x.md": "b", "b/y.md": "b"}, "no folder dominates"


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("An **environment variable** (also known as an **env var**) is a value that lives outside your code.",
         ("What is an environment variable?", "definition")),
        ("Workers (mainly queue workers) are a simple way to run jobs in the background.",
         ("What are workers?", "definition")),  # sentence case: the sentence writes "workers" too
        ("The worker is the process that runs queued jobs.", ("What is the worker?", "definition")),
        ("To retry a failed job, call `job.retry()` with the same arguments.", ("How do you retry a failed job?", "purpose")),
        ("If you want to run jobs in your tests, use the `eager` setting.", ("How can you run jobs in your tests?", "goal")),
        ("You can run several workers with the `--concurrency` option.", ("How can you run several workers?", "means")),
        ("The **session cookies** are signed with the secret key.", ("What are the session cookies signed with?", "passive")),
        ("The `Queue` class returns a job handle for every job.", ("What does the `Queue` class return?", "object")),
        ("Snapshots are kept for 30 days and then deleted.", ("How long are Snapshots kept?", "passive")),
        ("Snapshots are deleted after a month.", None),  # no form fits
        ("It is the process that runs queued jobs.", None),  # a pronoun is no subject
        ("Acme handles the validation for you.", None),  # "What does Acme handle?" has a hundred answers
    ],
)
def test_template_questions_by_form(sentence, expected):
    assert qa.template_question(sentence) == expected


def test_template_questions_skip_the_llm_and_say_so_in_the_generator():
    prompts = load_prompts(REPO / "prompts")
    text = "The worker is the process that runs queued jobs. Workers poll the queue every five seconds."
    chunk = qa.ChunkRef("c1", "d1", "sha", text, 0, ("Queues",))
    task = qa.GenTask("single_hop", "a user", [chunk], [(0, text.index(".") + 1)])

    class NoCalls:
        def structured_many(self, conversations, output_model, **params):
            assert not conversations, "a definition needs no LLM call"
            return []

    done = []
    (cand,) = qa.generate_candidates([task], prompts, NoCalls(), on_done=lambda: done.append(1))
    assert (cand.question, cand.answer, done) == ("What is the worker?", "The worker is the process that runs queued jobs.", [1])
    assert qa.reject_reason(cand, SynthConfig()) is None
    assert qa.to_item(cand, "model@1")["generator"] == "template:definition"


@pytest.mark.parametrize(
    "question, sentence, reason",
    [
        ("How do I add a global dependency to an application?",
         "Some applications need a global dependency for the whole application at once.", "question_form"),
        ("How do I add a global dependency to an application?",
         "Pass `dependencies` to the application to add a global dependency.", None),
        ("What is the difference between the queue and the queue, and how do you decide which one to use?",
         "The queue holds jobs until a worker takes them.", "circular"),
    ],
)
def test_question_form_and_circular_comparisons(question, sentence, reason):
    assert qa.reject_reason(_extractive(question, sentence), SynthConfig()) == reason


def test_a_pair_of_template_sentences_makes_one_multi_hop_question():
    a = qa.ChunkRef("c1", "d1", "sha", "The `Queue` class returns a job handle for every job.", 0, ("Queues",))
    b = qa.ChunkRef("c2", "d2", "sha", "To retry a failed job, call `job.retry()` with the same arguments.", 0, ("Retries",))
    task = qa.GenTask("multi_hop", "a user", [a, b], [(0, len(a.text)), (0, len(b.text))])
    assert qa.templated(task) == ("What does the `Queue` class return, and how do you retry a failed job?", "pair")
    c = qa.ChunkRef("c3", "d3", "sha", "Workers poll the queue every five seconds for new jobs.", 0, ())
    assert qa.templated(qa.GenTask("multi_hop", "a user", [a, c], [(0, len(a.text)), (0, len(c.text))])) is None


@pytest.mark.parametrize(
    "sentence",
    [
        "Because worker pools are just lists of processes, they restart quickly.",  # a conjunction is no subject
        "For queues they are just names.",  # a preposition, a pronoun
        "To configure them, pass the `pool_size` argument to the queue.",  # "them" points outside
        "You can override any of them by setting a different value in `pool_size`.",
        "You can combine queue workers with cron jobs on the same host.",  # "with cron jobs" is no means
        "You can get the job directly in the handler and deal with retries using `Depends`.",  # cut at "and deal"
        "The whole scheduler is designed to satisfy the needs of a queue.",  # "designed to <verb>"
    ],
)
def test_template_questions_refuse_sentences_that_would_make_broken_questions(sentence):
    assert qa.template_question(sentence) is None


def test_a_sentence_ending_on_a_pronoun_is_no_answer():
    assert qa.fact_sentences("# Queues\n\nThe whole scheduler is designed to satisfy that.\n") == []


def test_later_rounds_ask_about_other_chunks_while_any_are_left():
    store = _TreeStore([f"guide/page{i}.md" for i in range(4)])
    config = SynthConfig(size=2, types={"single_hop": 1.0})
    first = qa.plan_tasks(store, {"single_hop": 2}, config, random.Random(0))
    asked = frozenset(c.chunk_id for t in first for c in t.chunks)
    second = qa.plan_tasks(store, {"single_hop": 2}, config, random.Random(0), avoid=asked)
    assert not asked & {c.chunk_id for t in second for c in t.chunks}
    everything = frozenset(r["chunk_id"] for r in store.rows)
    again = qa.plan_tasks(store, {"single_hop": 2}, config, random.Random(0), avoid=everything)
    assert len(again) == 2, "a small corpus is asked again rather than not at all"


def test_casual_rewrite_when_the_model_returns_the_question_unchanged():
    assert qa.casual_rewrite("How do you retry a failed job?") == "how to retry a failed job"
    assert qa.casual_rewrite("What does the `Queue` class return?") == "the `Queue` class return"
    assert qa.casual_rewrite("What are the session cookies signed with?") == "session cookies signed with"


def test_a_rewrite_that_brings_its_own_words_is_unsupported_and_one_answer_sentence_makes_one_item(fake_embedder):
    cand = _extractive("run multiple workers failed job retried how", SENTENCE, qa_type="paraphrased")
    cand.original_question = "How many times is a failed job retried before it is marked dead?"
    assert qa.reject_reason(cand, SynthConfig()) == "unsupported_question", "a few-shot example's words leaked in"
    same = {"evidence": [{"chunk_id": "c1", "start": 0, "end": 40}], "source_chunk_ids": ["c1"]}
    items = [dict(same, question="How many times is a failed job retried?"),
             dict(same, question="job retry count b4 dead"),
             {"evidence": [{"chunk_id": "c1", "start": 41, "end": 90}], "source_chunk_ids": ["c1"],
              "question": "Which table holds the dead jobs of the queue?"}]
    kept, dropped = qa.drop_near_duplicates(items, [], fake_embedder.encode, 0.95, 0.99)
    assert [i["question"] for i in kept] == [items[0]["question"], items[2]["question"]] and dropped == 1


@pytest.mark.parametrize(
    "sentence",
    [
        "A path parameter is always required as it has to be part of the path.",  # "as" = because
        "* Check if there is an optional query parameter named `q` for `GET` requests.",  # a clause, no term
        "The most secure is the code flow, but it needs more steps.",  # a superlative names nothing
    ],
)
def test_template_questions_refuse_clauses_and_vague_terms(sentence):
    assert qa.template_question(sentence) is None


def test_under_rules_an_extractive_item_a_model_wrote_is_outdated():
    def item(qa_id, qa_type, generator):
        return {"qa_id": qa_id, "status": "active", "source_chunk_ids": ["c1"], "source_doc_ids": ["d1"],
                "qa_type": qa_type, "generator": generator, "prompt_id": "qa_from_sentence@x", "prompt_hash": "h"}

    items = [item("model", "single_hop", "SmolLM2@1"), item("rule", "single_hop", "template:definition"),
             item("refuse", "unanswerable", "SmolLM2@1")]
    hashes = {"qa_from_sentence": "h"}
    assert qa.classify_previous(items, {"c1"}, {"d1"}, hashes, "rules") == {"model": "outdated", "rule": "kept",
                                                                              "refuse": "kept"}
    assert qa.classify_previous(items, {"c1"}, {"d1"}, hashes, "rules_then_model")["model"] == "kept"


def test_synth_personas_may_not_be_empty():
    with pytest.raises(ValueError, match="personas"):
        SynthConfig(personas=[])


def test_items_made_under_older_filters_are_judged_by_todays():
    text = "Scopes are declared with `Security(scopes=[...])` on each dependency. The worker is the process that runs jobs."
    good = {"qa_id": "good", "qa_type": "single_hop", "question": "What is the worker?",
            "reference_answer": "The worker is the process that runs jobs.", "source_chunk_ids": ["c1"],
            "evidence": [{"chunk_id": "c1", "start": text.index("The worker"), "end": len(text)}]}
    invented = {"qa_id": "invented", "qa_type": "abstract", "question": "How are scopes declared at different levels?",
                "reference_answer": "Scopes are declared using a custom decorator that allows declaring scopes directly.",
                "source_chunk_ids": ["c1"], "evidence": [{"chunk_id": "c1", "start": 0, "end": 60}]}
    doubled = dict(good, qa_id="doubled", question="What is the worker? What is the worker?")
    gone = dict(good, qa_id="gone", source_chunk_ids=["c9"])
    failing = qa.failing_filters([good, invented, doubled, gone], {"c1": text}, SynthConfig())
    assert failing == {"invented": "unsupported_answer", "doubled": "malformed"}


def test_an_unanswerable_question_two_of_whose_three_topic_words_a_chunk_holds_is_answered():
    # "How can I use FastAPI with a production server?" was kept as unanswerable over docs that answer it
    chunk = "## Deploy your own server\n\nFastAPI runs on an ASGI server such as Uvicorn."
    assert qa.answered_by("How can I use FastAPI with a production server?", [chunk], SynthConfig().answerable_coverage)
    assert not qa.answered_by("Who painted the kiosk murals in 1970?", [chunk], SynthConfig().answerable_coverage)


@pytest.mark.parametrize("types, message", [({"single_hop": -1.0}, "weights must be >= 0"),
                                            ({}, "at least one question type needs a weight > 0"),
                                            ({"single_hop": 0.0}, "at least one question type")])
def test_bad_type_weights_name_synth_types_and_quote_only_the_weights(types, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        SynthConfig(types=types)
    (error,) = err.value.errors()
    assert error["loc"] == ("types",) and message in error["msg"] and "personas" not in error["msg"]
