"""The bearer-token check of every protocol: one constant-time comparison of the raw credential bytes."""
from __future__ import annotations

import hmac

from serving.wire import RequestError


class BearerAuth:
    """``Authorization: Bearer <token>`` (HTTP header or gRPC metadata); no token configured: every call passes.

    The comparison is ``hmac.compare_digest`` on bytes, so its time does not reveal how much of a guess was
    right, and non-ASCII credentials are a wrong token, not an error."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def allows(self, credentials: str | bytes | None) -> bool:
        if self._expected is None:
            return True
        given = credentials.encode("utf-8", "surrogateescape") if isinstance(credentials, str) else credentials
        return hmac.compare_digest(given or b"", self._expected)

    def check(self, credentials: str | bytes | None, how: str) -> None:
        """RequestError 401 unless ``credentials`` carry the token; ``how`` tells the client how to send it."""
        if not self.allows(credentials):
            raise RequestError(401, f"missing or wrong bearer token (send {how})", {"WWW-Authenticate": "Bearer"})
