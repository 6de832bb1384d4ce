"""Keep the token out of the server's logs: uvicorn writes every request's path with its query
string (the WebSocket takes the token as ``?token=``) to its access and error loggers."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

#: the loggers uvicorn writes request lines to (HTTP access lines; WebSocket handshakes)
REQUEST_LOGGERS = ("uvicorn.access", "uvicorn.error")
_TOKEN_IN_QUERY = re.compile(r"(?i)([?&]token=)[^&\s\"']*")


def redact(text: str) -> str:
    """``text`` with the value of every ``token=`` query parameter replaced by ``***``."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


class RedactToken(logging.Filter):
    """Rewrites a record's message arguments (and message) so no token value is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


@contextmanager
def redacted_request_logs() -> Iterator[None]:
    """While open, the request loggers redact tokens."""
    loggers = [logging.getLogger(name) for name in REQUEST_LOGGERS]
    flt = RedactToken()
    for logger in loggers:
        logger.addFilter(flt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(flt)
