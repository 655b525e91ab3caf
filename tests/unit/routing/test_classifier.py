"""The classifier: a table of prompts → tier and reason, and thresholds read from config."""

from __future__ import annotations

import pytest

from r1edge.protocol.validation import validate_chat_request
from r1edge.routing.classifier import classify, estimate_prompt_tokens
from r1edge.routing.config import Classifier

DEFAULTS = Classifier()


def decide(content: str | None = None, settings: Classifier = DEFAULTS, **body):
    body.setdefault("messages", [{"role": "user", "content": content}])
    return classify(validate_chat_request(body), settings)


TABLE = [
    # (prompt, tier, reason prefix)
    ("Say hello to my friend Anna.", "edge", "simple"),
    ("Write a haiku about autumn leaves.", "edge", "simple"),
    ("What are some business etiquette norms when doing business in Japan?", "edge", "simple"),
    ("Describe a vivid and unique character, using strong imagery.", "edge", "simple"),
    ("Prove that there are infinitely many primes.", "cluster", "math:Prove"),
    ("What is the integral of x^2 from 0 to 3?", "cluster", "math:integral"),
    ("x+y = 4z, x*y = 4z^2, express x-y in z", "cluster", "math:y = 4"),
    ("Given that f(x) = 4x^3 - 9x - 14, find the value of f(2).", "cluster", "math:x^3"),
    ("When rolling two dice, what is the probability that you roll at least 3?", "cluster", "math:probability"),
    ("Write a Python program that counts words in a file.", "cluster", "code:Python"),
    ("Write a C++ program to find the nth Fibonacci number.", "cluster", "code:C++"),
    ("Fix this:\n```\nprint(1\n```", "cluster", "code:```"),
    ("Implement a function to merge two sorted lists.", "cluster", "code:Implement"),
    ("Explain step by step how you would plan a wedding.", "cluster", "reasoning:step by step"),
    (
        "David has three sisters. Each has one brother. How many brothers does David have?",
        "cluster",
        "reasoning:How many",
    ),
    ("Solve this riddle for me.", "cluster", "reasoning:riddle"),
]


@pytest.mark.parametrize(("prompt", "tier", "reason"), TABLE, ids=[t[0][:30] for t in TABLE])
def test_prompt_table(prompt, tier, reason):
    decision = decide(prompt)
    assert decision.tier == tier
    assert decision.reason.startswith(reason)


@pytest.mark.parametrize("text", ["a  = 1 ,\n\t find the value of y", "é = 2", "x = 1" + " " * 30 + "z"])
def test_reason_is_a_valid_header_value(text):
    reason = decide(text).reason
    assert reason == reason.strip()
    assert all(0x20 <= ord(c) < 0x7F for c in reason)
    assert "  " not in reason


def test_tools_go_to_the_cluster():
    decision = decide("hi", tools=[{"type": "function", "function": {"name": "get_weather"}}])
    assert (decision.tier, decision.reason) == ("cluster", "tools")
    assert decide("hi", tool_choice="required").reason == "tools"
    assert decide("hi", tool_choice="none").tier == "edge"


def test_json_schema_output_goes_to_the_cluster_but_json_object_does_not():
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert decide("hi", response_format=schema).reason == "json_schema_output"
    assert decide("hi", response_format={"type": "json_object"}).tier == "edge"


def test_large_max_tokens_goes_to_the_cluster():
    assert decide("hi", max_tokens=1024).tier == "edge"
    decision = decide("hi", max_tokens=1500)
    assert decision.tier == "cluster"
    assert decision.reason == "max_tokens:1500>1024"


def test_prompt_too_long_for_the_edge_context():
    long_text = "word " * 1700  # 8500 chars ~ 2125 tokens > 2048
    decision = decide(long_text)
    assert decision.tier == "cluster"
    assert decision.reason.startswith("exceeds_edge_context:")


def test_prompt_over_max_prompt_tokens():
    text = "word " * 1000  # ~1254 tokens, fits 2048 with a 256 budget, but > 1024
    decision = decide(text, max_tokens=16)
    assert decision.reason == f"prompt_tokens:{decision.prompt_tokens}>1024"


def test_deep_conversation_goes_to_the_cluster():
    messages = []
    for i in range(7):
        messages += [{"role": "user", "content": f"tell me more {i}"}, {"role": "assistant", "content": "ok"}]
    decision = decide(messages=messages)
    assert (decision.tier, decision.reason) == ("cluster", "turns:7>6")
    assert decide(messages=messages[:12]).tier == "edge"


def test_reasoning_effort_goes_to_the_cluster():
    assert decide("hi", reasoning_effort="low").reason == "reasoning_effort"


def test_only_the_last_user_message_is_scanned_for_patterns():
    messages = [{"role": "system", "content": "You review Python code."}, {"role": "user", "content": "Say hi."}]
    assert decide(messages=messages).tier == "edge"


def test_thresholds_and_word_lists_come_from_config():
    strict = Classifier(max_prompt_tokens=5, patterns={"legal": [r"\bcontract\b"]})
    assert decide("Say hello to my friend Anna and her brother.", strict).reason.startswith("prompt_tokens:")
    custom = Classifier(patterns={"legal": [r"\bcontract\b"]})
    assert decide("Review this contract", custom).reason == "legal:contract"
    assert decide("Prove it", custom).tier == "edge"


def test_token_estimate_counts_text_parts_and_overhead():
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]},
        {"role": "assistant", "content": None},
    ]
    assert estimate_prompt_tokens(messages, 4.0) == 2 + 4 + 0 + 4
