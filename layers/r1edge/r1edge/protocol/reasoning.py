"""R1-style reasoning output: text between ``<think>`` and ``</think>`` goes to
``reasoning_content``, the rest to ``content`` (DeepSeek's API names; vLLM's and SGLang's
``deepseek_r1`` reasoning parsers split the same way).

Pure: no I/O. :class:`ThinkSplitter` works on a stream of text pieces, so a tag split across
tokens or chunks (``"<think>ab"``, ``"c</thi"``, ``"nk>Hi"``) is still found; a held-back piece
that could be the start of a tag is released as soon as it cannot be. The R1 distills' chat
templates open ``<think>`` inside the prompt, so their output holds only the closing tag: a
splitter that starts in reasoning handles both ``"abc</think>Hi"`` and ``"<think>abc</think>Hi"``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


class ThinkMode(enum.StrEnum):
    """How a model's output is split.

    ``START``: the output starts inside a think block (the chat template opened it), or opens one
    itself; ``TAGS``: the output is content unless it starts with ``<think>``; ``OFF``: no
    splitting, everything is content.
    """

    START = "start"
    TAGS = "tags"
    OFF = "off"


def think_mode(setting: str, template: str | None, render: Callable[[str], str] | None = None) -> ThinkMode:
    """Choose the :class:`ThinkMode` for a model.

    Args:
        setting: ``"auto"`` (decide from the chat template), ``"on"`` (:attr:`ThinkMode.START`)
            or ``"off"``.
        template: the model's Jinja chat template (GGUF ``tokenizer.chat_template``), if any.
        render: renders ``template`` for one user message with the generation prompt added;
            ``auto`` looks at whether that prompt ends inside an open ``<think>`` block.

    Raises:
        ValueError: ``setting`` is not ``auto``, ``on`` or ``off``.
    """
    setting = setting.strip().lower()
    if setting == "on":
        return ThinkMode.START
    if setting == "off":
        return ThinkMode.OFF
    if setting != "auto":
        raise ValueError(f"reasoning setting must be auto, on or off, got {setting!r}")
    if not template or OPEN_TAG not in template:
        return ThinkMode.OFF
    if render is not None:
        try:
            prompt = render(template)
        except Exception:  # noqa: BLE001 - a template that cannot render here still gets its tags split
            return ThinkMode.TAGS
        if prompt.rstrip().endswith(OPEN_TAG):
            return ThinkMode.START
    return ThinkMode.TAGS


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class _State(enum.Enum):
    CONTENT_START = 1  # nothing but whitespace yet; a <think> here opens reasoning
    REASONING_START = 2  # inside reasoning, nothing but whitespace yet (a leading <think> is dropped)
    REASONING = 3
    AFTER_CLOSE = 4  # just after </think>: whitespace is dropped
    CONTENT = 5  # content to the end; no tag is parsed any more


class ThinkSplitter:
    """Splits generated text into ``(reasoning, content)`` pieces as it arrives.

    Whitespace at the start of the reasoning and at the start of the content after
    ``</think>`` is dropped; once the content has started, every character (a later ``<think>``
    included) is content, as in DeepSeek's own parser.

    Args:
        mode: :attr:`ThinkMode.START` or :attr:`ThinkMode.TAGS` (:attr:`ThinkMode.OFF` passes
            everything through as content).
    """

    def __init__(self, mode: ThinkMode) -> None:
        self.mode = mode
        self._state = {
            ThinkMode.START: _State.REASONING_START,
            ThinkMode.TAGS: _State.CONTENT_START,
            ThinkMode.OFF: _State.CONTENT,
        }[mode]
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Take the next piece of generated text; return the ``(reasoning, content)`` now known.

        Either may be empty; text that could still be the start of a tag is held back until
        the next piece or :meth:`flush`.
        """
        buf = self._held + text
        reasoning: list[str] = []
        content: list[str] = []
        while buf:
            state = self._state
            if state is _State.CONTENT:
                content.append(buf)
                buf = ""
            elif state in (_State.CONTENT_START, _State.REASONING_START):
                stripped = buf.lstrip()
                if stripped.startswith(OPEN_TAG):
                    buf, self._state = stripped[len(OPEN_TAG) :], _State.REASONING_START
                elif not stripped or OPEN_TAG.startswith(stripped):
                    break  # only whitespace, or a tag still arriving: hold
                elif state is _State.CONTENT_START:
                    self._state = _State.CONTENT  # the original text, whitespace and all
                else:
                    buf, self._state = stripped, _State.REASONING
            elif state is _State.REASONING:
                end = buf.find(CLOSE_TAG)
                if end >= 0:
                    reasoning.append(buf[:end])
                    buf, self._state = buf[end + len(CLOSE_TAG) :], _State.AFTER_CLOSE
                else:
                    keep = _partial_suffix(buf, CLOSE_TAG)
                    reasoning.append(buf[: len(buf) - keep])
                    buf = buf[len(buf) - keep :]
                    break
            else:  # AFTER_CLOSE
                buf = buf.lstrip()
                if buf:
                    self._state = _State.CONTENT
        self._held = buf
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """End of generation: release whatever is held, as the section it was in."""
        held, self._held = self._held, ""
        if self._state is _State.CONTENT_START:
            return "", held
        if self._state in (_State.REASONING_START, _State.REASONING):
            return held.lstrip() if self._state is _State.REASONING_START else held, ""
        return "", held if self._state is _State.CONTENT else ""

    @property
    def in_reasoning(self) -> bool:
        """Whether the text so far is reasoning (no ``</think>`` seen yet)."""
        return self._state in (_State.REASONING_START, _State.REASONING)


def split_text(text: str, mode: ThinkMode) -> tuple[str, str]:
    """Split a whole answer into ``(reasoning, content)`` (same rules as :class:`ThinkSplitter`)."""
    splitter = ThinkSplitter(mode)
    reasoning, content = splitter.feed(text)
    tail_reasoning, tail_content = splitter.flush()
    return reasoning + tail_reasoning, content + tail_content
