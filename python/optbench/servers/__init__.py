"""Starting and stopping inference servers (issue 4 adds vLLM, SGLang and configurations)."""

from optbench.servers.llama_cpp import LlamaServer, embedded_server, find_llama_server
from optbench.servers.process import ManagedProcess, free_port

__all__ = ["LlamaServer", "embedded_server", "find_llama_server", "ManagedProcess", "free_port"]
