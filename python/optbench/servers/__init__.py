"""Starting and stopping inference servers: one module per engine (``llama_cpp``, ``vllm``,
``sglang``, ``openai``), each a subclass of :class:`optbench.servers.base.Engine` that owns its
``[server]`` keys, its argument list, how it is launched, how its version is read, readiness and
teardown. ``optbench.serve(config)`` (in ``engines``) runs any of them."""

from optbench.servers.base import Engine, Key, all_engines, engine_class
from optbench.servers.llama_cpp import LlamaServer, embedded_server, find_llama_server
from optbench.servers.process import ManagedProcess, free_port

__all__ = [
    "Engine",
    "Key",
    "all_engines",
    "engine_class",
    "LlamaServer",
    "embedded_server",
    "find_llama_server",
    "ManagedProcess",
    "free_port",
]
