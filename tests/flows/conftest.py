"""Flow tests write golden questions with the scripted PassageLLM (tests/synth_fakes.py) over corpora of
short fact sentences no question form fits, so synth's question writer is the model here; the default
(`rules`) is tested in tests/unit/test_qa_generation.py, tests/flows/test_synth_rules.py and with the
packaged model in tests/integration/test_synth_real.py."""

import pytest


@pytest.fixture(autouse=True)
def model_writes_questions(monkeypatch):
    monkeypatch.setenv("RAGLOOP_SYNTH__QUESTION_WRITER", "model")
