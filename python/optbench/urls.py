"""Server URLs as optbench records them: without the ``user:password@`` part.

A base URL may carry credentials (``http://user:secret@host:8000``); requests still use them,
but every label, stored config, CSV row, Parquet metadata, meta.json and file or folder name
gets the URL without them.
"""

from __future__ import annotations

import re

#: ``scheme://`` then the userinfo (everything up to the last ``@`` before the path).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


def without_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` part; anything else unchanged."""
    return _USERINFO.sub(r"\g<scheme>", url, count=1) if "@" in url else url


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it removed (for messages and files)."""
    return _USERINFO.sub(r"\g<scheme>", text) if "@" in text else text


__all__ = ["redact_urls", "without_credentials"]
