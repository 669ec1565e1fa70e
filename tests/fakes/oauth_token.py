"""A fake OAuth2 token endpoint: the refresh-token grant of RFC 6749 §6.

Answers ``POST`` form ``grant_type=refresh_token&refresh_token=...&client_id=...`` with
``{"access_token", "token_type": "Bearer", "expires_in"}`` (RFC 6749 §5.1) or, for an unknown
refresh token, 400 ``{"error": "invalid_grant", "error_description": ...}`` (§5.2), as the
Microsoft identity platform and Google's OAuth 2.0 endpoints do.
"""

from __future__ import annotations

from tests.fakes._server import FakeServer, Reply, Request


class FakeTokenEndpoint(FakeServer):
    """Issues ``access_token`` for ``refresh_token``; counts the refreshes it served."""

    def __init__(self, refresh_token: str, access_token: str, expires_in: int = 3600) -> None:
        super().__init__()
        self.refresh_token = refresh_token
        self.access_token = access_token
        self.expires_in = expires_in

    def handle(self, request: Request) -> Reply:
        if request.method != "POST" or request.arg("grant_type") != "refresh_token":
            return Reply(400, {"error": "unsupported_grant_type"})
        if request.arg("refresh_token") != self.refresh_token:
            return Reply(400, {"error": "invalid_grant", "error_description": "token revoked"})
        return Reply(
            200,
            {
                "access_token": self.access_token,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            },
        )
