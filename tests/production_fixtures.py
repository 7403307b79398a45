"""Synthetic production logs for tests and the bench: a RAG app's questions whose topic shifts halfway
(deterministic from a seed), as JSONL records or an OTLP JSON export with OpenInference attributes."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

# Topic A: what a bike-sharing handbook (the golden set) covers. Topic B: billing refunds, which it does not.
TOPIC_A = [
    "How many docks does station {n} have?", "When does station {n} open in the morning?",
    "Where is docking station {n} located?", "Is station {n} open on holidays?",
    "How do I report a broken dock at station {n}?",
]
TOPIC_B = [
    "How do I get a refund for a double charge on my credit card?", "Why was my card charged twice for refund {n}?",
    "Can I get my money back after a failed payment {n}?", "Where is the refund for my cancelled payment {n}?",
    "How long does a credit card refund take, order {n}?",
]
GOLDEN_A = ["How many docks does station 3 have?", "When does station 7 open in the morning?",
            "Where is docking station 2 located?", "Is station 5 open on holidays?",
            "How do I report a broken dock at station 1?"]


def records(n: int = 1000, seed: int = 0, start: dt.datetime | None = None, days: int = 10,
            negative_every: int = 7) -> list[dict]:
    """n log records over `days` days, oldest first: topic A in the first half, topic B in the second.
    Every `negative_every`-th record has a thumbs down; some carry an e-mail address or phone number."""
    rng = random.Random(seed)
    start = start or dt.datetime(2026, 11, 1, 0, 0, tzinfo=dt.timezone.utc)
    out = []
    for i in range(n):
        topic = TOPIC_A if i < n // 2 else TOPIC_B
        question = rng.choice(topic).format(n=rng.randint(1, 40))
        if i % 50 == 3:
            question += " Contact me at rider{}@example.org or +44 20 7946 {:04d}.".format(i, i)
        at = start + dt.timedelta(seconds=int(i * days * 86400 / n))
        context = (f"Station {rng.randint(1, 40)} has {rng.randint(8, 30)} docks and opens at {rng.randint(5, 8)} in the morning."
                   if topic is TOPIC_A else "Payments are handled by the city's card processor.")
        answer = context if i % 11 else "The documents do not say."
        rec = {"question": question, "answer": answer, "contexts": [context, "Riders buy passes in the app."],
               "timestamp": at.isoformat().replace("+00:00", "Z"), "latency_ms": rng.randint(300, 2500),
               "prompt_tokens": rng.randint(200, 600), "completion_tokens": rng.randint(10, 80),
               "conversation_id": f"c{i // 3}"}
        if i % negative_every == 0:
            rec["feedback"] = {"thumbs": "down", "comment": "wrong"}
        elif i % 5 == 0:
            rec["feedback"] = "up"
        out.append(rec)
    return out


def write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def _attr(key: str, value) -> dict:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": str(value)}}


def otlp_export(recs: list[dict], first: int = 0) -> dict:
    """The records as one OTLP JSON trace export: per record a CHAIN root span, a RETRIEVER child with
    retrieval.documents.N.document.content and an LLM child with llm.token_count.*."""
    spans = []
    for i, r in enumerate(recs, start=first):
        at = dt.datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
        start = int(at.timestamp() * 1e9)
        end = start + int(r["latency_ms"] * 1e6)
        trace_id, root = f"{i:032x}", f"{i:016x}"
        root_attrs = [_attr("openinference.span.kind", "CHAIN"), _attr("input.value", r["question"]),
                      _attr("output.value", r["answer"]), _attr("session.id", r["conversation_id"])]
        feedback = r.get("feedback")
        if feedback:
            root_attrs.append(_attr("feedback.thumbs", feedback["thumbs"] if isinstance(feedback, dict) else feedback))
        spans.append({"traceId": trace_id, "spanId": root, "name": "query", "startTimeUnixNano": str(start),
                      "endTimeUnixNano": str(end), "attributes": root_attrs})
        spans.append({"traceId": trace_id, "spanId": f"{i:015x}a", "parentSpanId": root, "name": "retrieve",
                      "startTimeUnixNano": str(start + 1000), "endTimeUnixNano": str(start + 2000),
                      "attributes": [_attr("openinference.span.kind", "RETRIEVER"), _attr("input.value", r["question"])]
                      + [_attr(f"retrieval.documents.{k}.document.content", c) for k, c in enumerate(r["contexts"])]})
        spans.append({"traceId": trace_id, "spanId": f"{i:015x}b", "parentSpanId": root, "name": "llm",
                      "startTimeUnixNano": str(start + 3000), "endTimeUnixNano": str(end - 1000),
                      "attributes": [_attr("openinference.span.kind", "LLM"),
                                     _attr("llm.token_count.prompt", r["prompt_tokens"]),
                                     _attr("llm.token_count.completion", r["completion_tokens"])]})
    return {"resourceSpans": [{"resource": {"attributes": [_attr("service.name", "rag-app")]},
                               "scopeSpans": [{"scope": {"name": "openinference.instrumentation"}, "spans": spans}]}]}
