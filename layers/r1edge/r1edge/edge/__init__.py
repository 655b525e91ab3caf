"""The edge model server: the distilled model behind an OpenAI-compatible API.

- :mod:`~r1edge.edge.app` — the Starlette app (``/v1/chat/completions``, ``/v1/models``).
- :mod:`~r1edge.edge.runtime` — :class:`LlamaRuntime`: llama.cpp through llama-cpp-python.
- :mod:`~r1edge.edge.model` — finding and checking the GGUF file (``python -m r1edge.edge.model``).

Entry point: :func:`~r1edge.edge.app.create_app`. The edge never imports routing config or policy
(an import-linter contract): it answers what it is sent.
"""
