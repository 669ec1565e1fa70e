"""Builds the connector a source's config describes: a new channel is one entry here."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from connectors.base import Connector
from connectors.imap import ImapConnector, ImapIdleWatcher
from connectors.maildir import MaildirConnector
from connectors.mastodon import MastodonConnector
from connectors.oauth import OAuth2Token
from connectors.telegram import TelegramConnector
from connectors.x import OAuth1, XConnector
from triage.config import (
    Config,
    ImapSource,
    MaildirSource,
    MastodonSource,
    SocialSource,
    TelegramSource,
    XOAuth1,
    XSource,
    oauth1_secrets,
    oauth_secrets,
    resolve_secret,
    resolve_token,
)


def make_connector(config: Config, name: str) -> Connector:
    """The connector for the source called ``name``."""
    source = config.source(name)
    if isinstance(source, ImapSource):
        index = config.sources.index(source)
        return ImapConnector(
            source.name,
            host=source.host,
            port=source.port,
            username=source.username,
            password=partial(resolve_secret, source, f"sources[{index}]"),
            folder=source.folder,
            tls=source.tls,
            cafile=str(source.cafile) if source.cafile else None,
            timeout=source.timeout,
            batch_size=source.batch_size,
            max_message_bytes=source.max_message_bytes,
            post_action=source.post_action,
            oauth_token=_oauth_token(source, f"sources[{index}].oauth2"),
        )
    if isinstance(source, MaildirSource):
        return MaildirConnector(source.name, source.path, source.max_message_bytes)
    key = f"sources[{config.sources.index(source)}]"
    if isinstance(source, XSource) and source.oauth1 is not None:
        return _social(source, partial(_x_oauth1, source.oauth1, f"{key}.oauth1"))
    return _social(source, partial(resolve_token, source, key))


def _x_oauth1(oauth: XOAuth1, key: str) -> OAuth1:
    consumer_secret, token_secret = oauth1_secrets(oauth, key)
    return OAuth1(oauth.consumer_key, consumer_secret, oauth.access_token, token_secret)


def _social(source: SocialSource, token: Callable[[], Any]) -> Connector:
    """X, Telegram and Mastodon: the token is read when the connector first calls the API."""
    if isinstance(source, XSource):
        return XConnector(
            source.name,
            user_id=source.user_id,
            token=token,
            api_base_url=source.api_base_url,
            direct_messages=source.direct_messages,
            page_size=source.page_size,
            timeout=source.timeout,
        )
    if isinstance(source, TelegramSource):
        return TelegramConnector(
            source.name,
            token=token,
            api_base_url=source.api_base_url,
            bot_username=source.bot_username,
            long_poll_seconds=source.long_poll_seconds,
            limit=source.batch_size,
            timeout=source.timeout,
        )
    assert isinstance(source, MastodonSource)
    return MastodonConnector(
        source.name,
        token=token,
        api_base_url=source.api_base_url,
        mastodon_version=source.mastodon_version,
        page_size=source.page_size,
        timeout=source.timeout,
    )


def make_watcher(config: Config, name: str, on_news: Callable[[], None]) -> ImapIdleWatcher | None:
    """A push watcher for the source, where it has one (IMAP with ``idle = true``)."""
    source = config.source(name)
    if not isinstance(source, ImapSource) or not source.idle:
        return None
    connector = make_connector(config, name)
    assert isinstance(connector, ImapConnector)
    return ImapIdleWatcher(connector, on_news)


_tokens: dict[tuple[str, str], OAuth2Token] = {}


def _oauth_token(source: ImapSource, key: str) -> OAuth2Token | None:
    """One token cache per mailbox, shared by its polls and its IDLE watcher."""
    oauth = source.oauth2
    if oauth is None:
        return None
    cache_key = (source.name, oauth.token_url)
    if cache_key not in _tokens:
        _tokens[cache_key] = OAuth2Token(
            oauth.token_url,
            oauth.client_id,
            partial(oauth_secrets, oauth, key),
            scope=oauth.scope,
            timeout=source.timeout,
        )
    return _tokens[cache_key]
