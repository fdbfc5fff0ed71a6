"""Database DSNs as commands and logs show them: never with their password."""

from __future__ import annotations

import re

#: ``scheme://user:password@host``: the password runs to the last ``@`` before the path.
_USERINFO = re.compile(r"(://[^:/@?#\s]*:)[^\s]*@(?=[^@/?#\s]*(?:[/?#\s]|$))")
_PARAM = re.compile(r"((?:^|[?&\s])password=)[^&\s]*", re.IGNORECASE)


def redact(dsn: str) -> str:
    """``dsn`` (or any text holding DSNs) with every password replaced by ``***``."""
    return _PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", dsn))


def is_postgres(db: str) -> bool:
    return db.startswith(("postgres://", "postgresql://"))
