"""optbench's exceptions, all under :class:`OptbenchError`.

Per-request failures during a load test are *not* exceptions: they are rows of the result
(``error_kind`` / ``error_message``). Exceptions are for bad configuration and for work that
cannot start at all.

A server that cannot be reached raises :class:`ServerConnectionError` (also a built-in
``ConnectionError``), one that does not answer in time :class:`ServerTimeoutError` (also a
``TimeoutError``); a file or system resource that cannot be used raises the built-in ``OSError``
subclass of its errno (``FileNotFoundError``, ``PermissionError``...). Ctrl-C during a long
native call raises ``KeyboardInterrupt``.
"""

from optbench._core import (
    ConfigError,
    OptbenchError,
    ServerConnectionError,
    ServerError,
    ServerTimeoutError,
    TokenizerError,
)


class ServerStartError(ServerError):
    """A server process exited or never became ready; the message ends with its log's tail."""


class DatasetError(ConfigError):
    """A prompts or dataset file is missing or malformed; the message names the file and row."""


__all__ = [
    "OptbenchError",
    "ConfigError",
    "TokenizerError",
    "ServerError",
    "ServerConnectionError",
    "ServerTimeoutError",
    "ServerStartError",
    "DatasetError",
]
