"""Splitting R1-style ``<think>`` output into reasoning_content and content."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from r1edge.protocol.reasoning import ThinkMode, ThinkSplitter, split_text, think_mode


def feed_all(pieces, mode=ThinkMode.START):
    splitter = ThinkSplitter(mode)
    reasoning, content = "", ""
    for piece in pieces:
        r, c = splitter.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.flush()
    return reasoning + r, content + c


@pytest.mark.parametrize("mode", [ThinkMode.START, ThinkMode.TAGS])
def test_tags_split_across_chunks(mode):
    assert feed_all(["<think>ab", "c</thi", "nk>Hi"], mode) == ("abc", "Hi")


def test_closing_tag_only_as_the_r1_distills_write_it():
    assert feed_all(["abc</think>Hi"]) == ("abc", "Hi")
    assert feed_all(["a", "b", "c", "<", "/", "think", ">", "H", "i"]) == ("abc", "Hi")
    assert feed_all(["\nabc\n</think>\n\nHi there"]) == ("abc\n", "Hi there")


def test_nothing_is_held_longer_than_a_tag_could_need():
    splitter = ThinkSplitter(ThinkMode.START)
    assert splitter.feed("abc</th") == ("abc", "")  # "</th" may be the tag: held
    assert splitter.feed("ey") == ("</they", "")  # it was not: released at once
    assert splitter.feed("</think>  ") == ("", "")
    assert splitter.feed(" Hi") == ("", "Hi")


def test_tags_mode_leaves_a_model_that_does_not_think_alone():
    assert feed_all(["  Hello", " <think> is a tag"], ThinkMode.TAGS) == ("", "  Hello <think> is a tag")
    assert feed_all(["<thi", "s is content"], ThinkMode.TAGS) == ("", "<this is content")
    assert feed_all(["abc</think>Hi"], ThinkMode.TAGS) == ("", "abc</think>Hi")
    assert feed_all(["x</think>y"], ThinkMode.OFF) == ("", "x</think>y")


def test_unfinished_reasoning_stays_reasoning():
    # max_tokens hit inside the think block: R1 answers with reasoning only.
    assert feed_all(["<think>still thinking</thi"]) == ("still thinking</thi", "")
    assert feed_all(["<thi"], ThinkMode.TAGS) == ("", "<thi")


def test_content_after_the_close_is_never_parsed_again():
    assert feed_all(["a</think>b</think><think>c"]) == ("a", "b</think><think>c")


@given(st.text(alphabet="ab<>/thinkT \n", max_size=40), st.data())
def test_any_chunking_gives_the_same_split_as_the_whole_text(text, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    for mode in ThinkMode:
        assert feed_all(pieces, mode) == split_text(text, mode)


R1_DISTILL_LIKE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)
THINKS_ON_ITS_OWN = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    "{# reasoning models answer <think>...</think> first #}"
)
PLAIN = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def render(template):
    formatter = Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>")
    return formatter(messages=[{"role": "user", "content": "hi"}]).prompt


def test_auto_mode_follows_the_chat_template():
    assert think_mode("auto", R1_DISTILL_LIKE, render) is ThinkMode.START
    assert think_mode("auto", THINKS_ON_ITS_OWN, render) is ThinkMode.TAGS
    assert think_mode("auto", PLAIN, render) is ThinkMode.OFF
    assert think_mode("auto", None, render) is ThinkMode.OFF
    assert think_mode("ON", PLAIN, render) is ThinkMode.START
    assert think_mode("off", R1_DISTILL_LIKE, render) is ThinkMode.OFF
    with pytest.raises(ValueError, match="auto, on or off"):
        think_mode("sometimes", PLAIN, render)


def chunk(delta, finish_reason=None):
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def test_stream_chunks_are_split_into_reasoning_and_content_deltas():
    from r1edge.edge.app import split_chunk, split_message

    splitter = ThinkSplitter(ThinkMode.START)
    upstream = [
        chunk({"role": "assistant"}),
        chunk({"content": "<think>ab"}),
        chunk({"content": "c</thi"}),
        chunk({"content": "nk>Hi"}),
        chunk({"content": " there</th"}),
        chunk({}, "stop"),
    ]
    out = [c for u in upstream for c in split_chunk(u, splitter)]
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in out] == [
        ({"role": "assistant"}, None),
        ({"reasoning_content": "ab"}, None),
        ({"reasoning_content": "c"}, None),
        ({"content": "Hi"}, None),
        ({"content": " there</th"}, None),  # content is never parsed for tags again
        ({}, "stop"),
    ]
    splitter = ThinkSplitter(ThinkMode.START)
    cut = [c for u in [chunk({"content": "abc</th"}), chunk({}, "length")] for c in split_chunk(u, splitter)]
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in cut] == [
        ({"reasoning_content": "abc"}, None),
        ({"reasoning_content": "</th"}, None),  # held in case it was the tag; released before the finish
        ({}, "length"),
    ]
    assert all(c["id"] == "c1" for c in out)
    completion = {"choices": [{"message": {"role": "assistant", "content": "abc</think>\n\nHi"}}]}
    assert split_message(completion, ThinkMode.START)["choices"][0]["message"] == {
        "role": "assistant",
        "reasoning_content": "abc",
        "content": "Hi",
    }
