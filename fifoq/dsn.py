"""Where the connection string comes from, and how to show it without its password."""

from __future__ import annotations

import os
import re

__all__ = ["DSN_ENV", "describe", "redact", "resolve_dsn", "scrub"]

DSN_ENV = "FIFOQ_DSN"

# postgresql://user:secret@host/db -> postgresql://user:***@host/db
_URI_PASSWORD = re.compile(r"(?P<head>postgres(?:ql)?://[^:/?#@\s]*:)(?P<secret>[^@/?#\s]*)(?=@)")
# ...?password=secret&... in a URI query string
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<secret>[^&#\s]*)", re.IGNORECASE)
# password=secret or password = 'sec ret' in a key=value conninfo
_KV_PASSWORD = re.compile(
    r"(?P<head>(?:^|\s)password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s']\S*)", re.IGNORECASE
)


def resolve_dsn(cli_value: str | None = None) -> str:
    """The conninfo to use: the given value, else ``$FIFOQ_DSN``, else ``""``.

    An empty string makes libpq use its ``PG*`` environment variables
    (``PGHOST``, ``PGUSER``, ...), as SPEC §6 orders.
    """
    if cli_value:
        return cli_value
    return os.environ.get(DSN_ENV, "")


def redact(dsn: str) -> str:
    """The conninfo (URI or key=value form) with any password replaced by ``***``."""
    dsn = _URI_PASSWORD.sub(r"\g<head>***", dsn)
    dsn = _QUERY_PASSWORD.sub(r"\g<head>***", dsn)
    return _KV_PASSWORD.sub(r"\g<head>***", dsn)


def describe(dsn: str) -> str:
    """A printable description of where a conninfo points, password removed."""
    return redact(dsn) if dsn else "libpq defaults (PG* environment variables)"


def scrub(text: str, dsn: str) -> str:
    """Remove the password of ``dsn`` from a message that might quote it."""
    secrets = [
        m.group("secret")
        for pattern in (_URI_PASSWORD, _QUERY_PASSWORD, _KV_PASSWORD)
        for m in pattern.finditer(dsn)
    ]
    for secret in secrets:
        bare = secret.strip("'")
        if len(bare) >= 3:  # replacing one or two characters would mangle the message
            text = text.replace(bare, "***")
    return redact(text)
