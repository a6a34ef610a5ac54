"""The production engine: Llama-3.1-8B-Instruct on GPUs, run by an SGLang server.

The worker talks to SGLang over its native HTTP API (``protocol``: the wire types; ``params``: the
Workers AI → SGLang mapping table; ``client``: the HTTP calls). It either starts the server as a
supervised child process (``server``) or uses one already running beside it (a Kubernetes
sidecar). Nothing here imports ``sglang``: the server runs in its own process, from its own extra.
"""

from worker.engines.sglang.engine import SGLangEngine

__all__ = ["SGLangEngine"]
