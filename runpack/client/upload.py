"""What an input file upload sends: the bytes given, or a file opened to be streamed."""

from __future__ import annotations

import io
import os
from typing import IO


def upload_body(source: bytes | str | os.PathLike[str]) -> IO[bytes]:
    """The body to send (close it after the request)."""
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
