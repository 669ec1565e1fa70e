"""OAuth2 access tokens for XOAUTH2 mail logins, refreshed before they expire (RFC 6749 §6).

Gmail and Microsoft 365 no longer take passwords over IMAP: a mailbox gets a refresh token once
(from the provider's consent flow) and every login needs a fresh access token. A refresh that
fails is a permanent error, so the admin is told at once instead of the source failing quietly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import requests

from connectors.base import ConnectorAuthError, ConnectorUnavailable

log = logging.getLogger(__name__)

MARGIN = 300.0
"""Refresh this many seconds before expiry, so a token never runs out in the middle of a poll."""


class OAuth2Token:
    """A cached access token, refreshed from the token endpoint when it is about to expire.

    Args:
        token_url: the provider's token endpoint.
        client_id: the registered application.
        secrets: returns (refresh token, client secret or None); called at each refresh, so
            rotated secrets are picked up without a restart.
        scope: requested scope, where the provider wants one.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        secrets: Callable[[], tuple[str, str | None]],
        scope: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        self.timeout = timeout
        self._secrets = secrets
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires = 0.0
        self._refresh_override: str | None = None

    def __call__(self) -> str:
        """A valid access token (refreshing first when it expires within the margin)."""
        with self._lock:
            if self._access is None or time.monotonic() > self._expires - MARGIN:
                self._refresh()
            assert self._access is not None
            return self._access

    def _refresh(self) -> None:
        refresh_token, client_secret = self._secrets()
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_override or refresh_token,
            "client_id": self.client_id,
        }
        if client_secret:
            form["client_secret"] = client_secret
        if self.scope:
            form["scope"] = self.scope
        try:
            response = requests.post(self.token_url, data=form, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ConnectorUnavailable(
                f"the OAuth2 token endpoint {self.token_url} is unreachable: {type(exc).__name__}"
            ) from None
        body = _json(response)
        if response.status_code >= 500:
            raise ConnectorUnavailable(
                f"the OAuth2 token endpoint {self.token_url} answered {response.status_code}"
            )
        if response.status_code != 200 or "access_token" not in body:
            reason = body.get("error_description") or body.get("error") or response.status_code
            raise ConnectorAuthError(
                f"refreshing the OAuth2 token at {self.token_url} failed ({reason}); "
                "the mailbox needs a new refresh token"
            )
        self._access = str(body["access_token"])
        self._expires = time.monotonic() + float(str(body.get("expires_in", 3600)))
        # Some providers rotate the refresh token; keep the newest for the next refresh.
        rotated = body.get("refresh_token")
        self._refresh_override = str(rotated) if rotated else self._refresh_override
        log.info("OAuth2 access token refreshed, valid for %s s", body.get("expires_in", 3600))


def _json(response: requests.Response) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
