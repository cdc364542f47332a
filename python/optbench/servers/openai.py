"""An already running OpenAI-compatible server: nothing is started or stopped; ``start``
checks that ``/v1/models`` answers (with the key from ``server.api_key_env``, if set)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from optbench.exceptions import ServerStartError
from optbench.servers.base import Engine, Key


class OpenAIEngine(Engine):
    name = "openai"
    label = "OpenAI-compatible server"
    keys = {
        "base_url": Key(str, None, "the running server's URL, e.g. https://api.openai.com/v1"),
        "api_key_env": Key(str, None, "the environment variable holding the API key (never the key itself)"),
    }
    required = ("base_url",)

    def command(self, port: int) -> list[str]:
        return []

    def base_url(self) -> str:
        return self.cfg.server["base_url"].rstrip("/")

    def start(self, port: int, log_path: Path) -> str:
        base_url = self.base_url()
        root = base_url.removesuffix("/v1")
        try:
            req = urllib.request.Request(f"{root}/v1/models")
            key_env = self.cfg.server.get("api_key_env")
            if key_env and os.environ.get(key_env):
                req.add_header("Authorization", f"Bearer {os.environ[key_env]}")
            urllib.request.urlopen(req, timeout=10).close()
        except OSError as e:
            raise ServerStartError(
                f"{self.cfg.name}: {root}/v1/models did not answer ({e}); is the server running?"
            ) from e
        return base_url
