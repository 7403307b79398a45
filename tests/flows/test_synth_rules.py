"""The default question writer (`synth.question_writer: rules`): extractive items are asked only about
sentences a question form fits, and their questions are written by rule, never by the model."""

from __future__ import annotations

from ragloop.flows import index as index_flow
from ragloop.flows import synth as synth_flow
from ragloop.tasks.storage import Lake
from tests.conftest import use_fakes, write_files
from tests.synth_fakes import PassageLLM

DOCS = {
    "guide/queues.md": "# Queues\n\n## Workers\n\nA worker is a process that takes jobs from the queue one at a time. "
                       "Workers poll the queue every five seconds for new jobs.\n",
    "guide/retries.md": "# Retries\n\n## Failed jobs\n\nTo retry a failed job, call `job.retry()` with the same arguments. "
                        "Retried jobs keep their original id in the log.\n",
    "ops/cookies.md": "# Sessions\n\n## Cookies\n\nThe session cookies are signed with the secret key of the service. "
                      "Browsers send them back on every request to the service.\n",
    "ops/scaling.md": "# Scaling\n\n## Processes\n\nYou can run several workers with the `--concurrency` option of the CLI. "
                      "Each worker keeps its own connection pool.\n",
}


def test_rules_write_every_extractive_question_without_the_model(prefect_backend, fake_embedder, tmp_path, lake_dir,
                                                                  monkeypatch):
    monkeypatch.setenv("RAGLOOP_SYNTH__QUESTION_WRITER", "rules")
    monkeypatch.setenv("RAGLOOP_SYNTH__MIN_CONTEXT_TOKENS", "5")
    seen: list[str] = []

    class Recording(PassageLLM):
        def structured_many(self, conversations, output_model, **params):
            seen.extend(c[-1]["content"] for c in conversations)
            return super().structured_many(conversations, output_model, **params)

    llm = Recording()
    use_fakes(embedder=lambda config: fake_embedder, llm=lambda config: llm)
    index_flow.index_corpus(sources=[str(write_files(tmp_path / "src", DOCS))], lake=str(lake_dir))
    summary = synth_flow.synth_golden_set(lake=str(lake_dir), size=4, config_path=None)
    rows = Lake(str(lake_dir)).read_golden(summary["golden_set_id"]).to_pylist()
    assert not any(m.startswith("Topic:") or m.startswith("Sentence A") for m in seen), "the model wrote no extractive question"
    single = [r for r in rows if r["qa_type"] == "single_hop"]
    assert single, summary
    for row in single:
        assert row["generator"].startswith("template:"), row
        assert row["reference_answer"] in {"A worker is a process that takes jobs from the queue one at a time.",
                                           "To retry a failed job, call `job.retry()` with the same arguments.",
                                           "The session cookies are signed with the secret key of the service.",
                                           "You can run several workers with the `--concurrency` option of the CLI."}
        assert row["question"] in {"What is a worker?", "How do you retry a failed job?",
                                   "What are the session cookies signed with?", "How can you run several workers?"}
    assert not any("Workers poll" in r["reference_answer"] for r in rows), "no form fits that sentence: never asked"
