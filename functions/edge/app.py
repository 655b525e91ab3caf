"""Edge function: the distilled model as an OpenAI-compatible server (ASGI app ``app``).

Served by uvicorn locally and by the Lambda Web Adapter in AWS (a container image, since
llama-cpp-python is compiled). All logic is in :mod:`r1edge.edge.app`; the model comes from
``MODEL_PATH`` or the packaged default.
"""

from r1edge.edge.app import create_app

app = create_app()
