"""Builds the connector a source's config describes: a new channel is one entry here."""

from __future__ import annotations

from functools import partial

from connectors.base import Connector
from connectors.imap import ImapConnector
from connectors.maildir import MaildirConnector
from triage.config import Config, ImapSource, MaildirSource, resolve_secret


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
        )
    assert isinstance(source, MaildirSource)
    return MaildirConnector(source.name, source.path, source.max_message_bytes)
