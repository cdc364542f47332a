"""An already running OpenAI-compatible server: nothing is started or stopped; ``start``
checks that ``/v1/models`` answers (with the key from ``server.api_key_env``, if set).

``server.base_url`` may be a list: the replicas of one deployment. The load test spreads its
requests over them (``[load_test] routing``); the evaluation and the scrape of ``/metrics`` use
the first."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

from optbench.exceptions import ConfigError, ServerStartError
from optbench.servers.base import Engine, Key


class OpenAIEngine(Engine):
    name = "openai"
    label = "OpenAI-compatible server"
    keys = {
        "base_url": Key(
            (str, list),
            None,
            "the running server's URL, e.g. https://api.openai.com/v1, or a list of the URLs of several"
            " replicas of one deployment (the load test spreads requests over them by `[load_test] routing`;"
            " the evaluation uses the first)",
        ),
        "api_key_env": Key(str, None, "the environment variable holding the API key (never the key itself)"),
    }
    required = ("base_url",)

    def command(self, port: int) -> list[str]:
        return []

    @classmethod
    def check(cls, where: str, server: dict[str, Any]) -> None:
        super().check(where, server)
        from optbench.replicas import base_url_list

        value = server.get("base_url")
        if isinstance(value, list) and not value:
            raise ConfigError(f"{where}: key 'server.base_url' is an empty list (give at least one URL)")
        try:
            base_url_list(value if isinstance(value, list) else str(value))
        except ConfigError as e:
            raise ConfigError(f"{where}: key 'server.base_url': {e}") from None

    def base_urls(self, base_url: str) -> list[str]:
        """Every URL of ``server.base_url`` (one, or the replicas'; ``base_url`` is the first)."""
        return self._configured()

    def _configured(self) -> list[str]:
        value = self.cfg.server["base_url"]
        return [u.rstrip("/") for u in ([value] if isinstance(value, str) else value)]

    def base_url(self) -> str:
        return self._configured()[0]

    def start(self, port: int, log_path: Path) -> str:
        for base_url in self._configured():
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
        return self.base_url()
