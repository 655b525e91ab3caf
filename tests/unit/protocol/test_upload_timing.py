"""Hostile uploads as hypothesis draws them: a valid chat body dribbled in pieces of any size
(down to one byte per ASGI message), with the client leaving after any piece or never. Whatever
the split and the moment, the router answers 200 to a whole body, 499 (client closed) to a body
cut short — never a 500, and a cut body never reaches an upstream. Driven through the router app
with hand-written ASGI messages (no socket, no clock)."""

from __future__ import annotations

import asyncio

from fakes import FakeUpstream, completion, config, endpoint, json_reply
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_client_closed import BODY, serve

from r1edge.apps.router import create_app
from r1edge.protocol import web


@st.composite
def uploads(draw: st.DrawFn) -> tuple[list[bytes], int | None]:
    """(the body's pieces, how many of them are sent before the client leaves; None: all, no leave)."""
    cuts = sorted(draw(st.sets(st.integers(1, len(BODY) - 1), max_size=40)))
    pieces = [BODY[a:b] for a, b in zip([0, *cuts], [*cuts, len(BODY)], strict=True)]
    leave_after = draw(st.none() | st.integers(0, len(pieces) - 1))
    return pieces, leave_after


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(uploads())
def test_a_dribbled_or_abandoned_upload_is_answered_200_or_499_never_500(upload):
    pieces, leave_after = upload
    fake = FakeUpstream({"edge-a": [json_reply(completion("ok"))], "r1-a": [json_reply(completion("ok"))]})
    app = create_app(config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster")), fake.upstream())
    sent_pieces = pieces if leave_after is None else pieces[:leave_after]
    messages = [
        {"type": "http.request", "body": piece, "more_body": leave_after is not None or i < len(pieces) - 1}
        for i, piece in enumerate(sent_pieces)
    ]
    if leave_after is not None:
        messages.append({"type": "http.disconnect"})

    sent = asyncio.run(serve(app, messages))

    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    if leave_after is None:
        assert statuses == [200]
        assert len(fake.calls) == 1
    else:
        assert statuses == [web.CLIENT_CLOSED_REQUEST]
        assert fake.calls == []
