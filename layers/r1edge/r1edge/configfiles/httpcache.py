"""HTTP caching rules for served files: entity tags, conditional requests and Cache-Control.

Pure: no I/O, no clock (times are passed in). The rules are RFC 9110's and RFC 9111's:

- a strong ``ETag`` from the SHA-256 of the bytes, so every container gives the same tag for the
  same content (RFC 9110 §8.8.3);
- ``If-None-Match`` is a list of entity tags or ``*``, compared with the *weak* comparison
  function, and wins over ``If-Modified-Since``, which is read only when ``If-None-Match`` is
  absent (RFC 9110 §13.1.2, §13.1.3, §13.2.2); both apply to GET and HEAD only;
- ``Cache-Control`` response directives ``public``, ``max-age``, ``s-maxage`` (RFC 9111 §5.2.2)
  and ``stale-while-revalidate``, ``stale-if-error`` (RFC 5861).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from pydantic import BaseModel, ConfigDict, Field

from r1edge.headers import IF_MODIFIED_SINCE, IF_NONE_MATCH

#: One entity-tag in a list: optional ``W/``, then a quoted opaque tag (RFC 9110 §8.8.3).
_ENTITY_TAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')


def strong_etag(body: bytes) -> str:
    """The strong entity tag of ``body``: ``"<sha256 hex>"`` (quotes included)."""
    return f'"{hashlib.sha256(body).hexdigest()}"'


def parse_entity_tags(value: str) -> list[str] | None:
    """The opaque tags (quoted, ``W/`` removed) listed in an ``If-None-Match`` or ``If-Match``
    value; ``None`` for ``*``. Malformed members are skipped (RFC 9110 §13.1.2 gives them no
    meaning), so a header of nothing but garbage lists no tag and matches nothing."""
    if value.strip() == "*":
        return None
    tags = []
    position = 0
    while position < len(value):
        match = _ENTITY_TAG.match(value, position)
        if match is None:
            comma = value.find(",", position)
            if comma < 0:
                break
            position = comma + 1
            continue
        tags.append(match.group(2))
        position = match.end()
    return tags


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` matches the current ``etag`` by weak comparison (RFC 9110
    §8.8.3.2: the opaque tags are equal, ``W/`` ignored); ``*`` matches any current
    representation. For GET and HEAD a match means 304 Not Modified (RFC 9110 §13.1.2)."""
    tags = parse_entity_tags(if_none_match)
    if tags is None:
        return True
    opaque = etag.removeprefix("W/")
    return opaque in tags


def http_date(moment: datetime) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def parse_http_date(value: str) -> datetime | None:
    """An HTTP-date as an aware datetime, or ``None`` when it is not one (then ignored, as
    RFC 9110 §13.1.3 requires for an invalid ``If-Modified-Since``)."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def not_modified(headers: Mapping[str, str], etag: str, last_modified: datetime | None) -> bool:
    """Whether a GET or HEAD with these request headers (names in lower case) gets 304:
    ``If-None-Match`` when present, otherwise ``If-Modified-Since`` against ``last_modified``
    (whole seconds, as HTTP dates carry)."""
    if_none_match = headers.get(IF_NONE_MATCH)
    if if_none_match is not None:
        return none_match(if_none_match, etag)
    since = headers.get(IF_MODIFIED_SINCE)
    if since is None or last_modified is None:
        return False
    moment = parse_http_date(since)
    return moment is not None and last_modified.replace(microsecond=0) <= moment


class CachePolicy(BaseModel):
    """``Cache-Control`` for one prefix of served names; every duration in seconds.

    The defaults give ``public, max-age=60, s-maxage=300, stale-while-revalidate=60,
    stale-if-error=86400``: browsers revalidate after a minute, CloudFront after five, and both
    may serve a stale copy for a day while the origin fails.
    """

    model_config = ConfigDict(extra="forbid")

    public: bool = True
    max_age: int = Field(60, ge=0)
    s_maxage: int | None = Field(300, ge=0)
    stale_while_revalidate: int | None = Field(60, ge=0)
    stale_if_error: int | None = Field(86_400, ge=0)

    def header(self) -> str:
        """The ``Cache-Control`` response header value."""
        parts = ["public" if self.public else "private", f"max-age={self.max_age}"]
        if self.s_maxage is not None:
            parts.append(f"s-maxage={self.s_maxage}")
        if self.stale_while_revalidate is not None:
            parts.append(f"stale-while-revalidate={self.stale_while_revalidate}")
        if self.stale_if_error is not None:
            parts.append(f"stale-if-error={self.stale_if_error}")
        return ", ".join(parts)


def policy_for(name: str, policies: Mapping[str, CachePolicy], default: CachePolicy) -> CachePolicy:
    """The policy of the longest prefix in ``policies`` that ``name`` starts with, else ``default``."""
    matches = [prefix for prefix in policies if name.startswith(prefix)]
    return policies[max(matches, key=len)] if matches else default
