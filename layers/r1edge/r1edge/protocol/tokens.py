"""Token estimates from text, without a tokenizer.

The router needs a prompt's size (in tokens) before any engine has seen it: the classifier routes
long prompts to the cluster, and the API-key limits charge a chat's estimate up front and settle it
against the answer's ``usage`` afterwards. Neither can load DeepSeek-R1's tokenizer in a Lambda, so
both use this one estimate.
"""

from __future__ import annotations

import math
from typing import Any

from r1edge.protocol.validation import message_text

#: Per-message token overhead of chat templates (role markers), as OpenAI's cookbook counts it.
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_prompt_tokens(messages: list[dict[str, Any]], chars_per_token: float) -> int:
    """Estimate prompt tokens without a tokenizer: ``ceil(chars / chars_per_token)`` per message
    plus :data:`MESSAGE_OVERHEAD_TOKENS` each. About 4 characters per token holds for English
    with BPE vocabularies; it errs high on CJK-free text, which routes borderline prompts to the
    cluster rather than overflowing the edge's context.

    Args:
        messages: chat messages; a message's characters are those of its text
            (:func:`r1edge.protocol.validation.message_text`: string content, or its text parts
            joined by newlines; other parts count nothing).
        chars_per_token: characters per token, > 0 (the routing config's
            ``classifier.chars_per_token``).

    Returns:
        The estimate, in tokens (0 for no messages).
    """
    total = 0
    for message in messages:
        total += math.ceil(len(message_text(message)) / chars_per_token) + MESSAGE_OVERHEAD_TOKENS
    return total
