"""Unit tests open no network sockets.

Every test collected under tests/unit runs with pytest-socket's ``disable_socket``: creating an
``AF_INET``/``AF_INET6`` socket or resolving a name (``getaddrinfo``) raises
``pytest_socket.SocketBlockedError``. Unix sockets stay allowed, because asyncio's event loop
makes its self-pipe with ``socket.socketpair()``. A test that needs a real server on a port
belongs in tests/integration (marked ``integration``). This is pytest-socket's documented
conftest hook; pytest-socket restores the real socket after each test, and its
``enable_socket`` marker (applied after this hook) still wins.
"""

from __future__ import annotations

import pytest
from pytest_socket import disable_socket


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Block network sockets before the fixtures of a unit test are set up."""
    disable_socket(allow_unix_socket=True)
