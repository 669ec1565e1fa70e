"""The history store's tables (SQLAlchemy 2 declarative, the same on SQLite and PostgreSQL).

Uniqueness carries the worker's guarantees: a message is unique per (source, content key), so a
replayed batch or a re-read folder is absorbed, and a customer's request (an intake row) is
unique per content key across sources, so one mail sent to two support addresses is one request
even when two pollers store it at the same instant; a forward is unique per (message,
department) and carries a Message-ID fixed at enqueue time, so a re-send can be collapsed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, tz-aware, as every timestamp in the store."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back tz-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use tz-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }

    @classmethod
    def table(cls) -> Table:
        """The mapped Table, for Core bulk statements (``__table__`` is typed as any FromClause)."""
        return cast(Table, cls.__table__)


class Customer(Base):
    """One identity of a customer on one channel (an email address, an X handle)."""

    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Identities linked by `triage customers link` share one person id (the smallest customer
    # id of the group); None for an identity linked to nothing.
    person_id: Mapped[int | None] = mapped_column(Integer, index=True)


class Conversation(Base):
    """A thread: messages that share a root (References / In-Reply-To / Message-ID)."""

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(primary_key=True)
    thread_key: Mapped[str] = mapped_column(String(512), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    subject: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_message_at: Mapped[datetime] = mapped_column(default=utcnow)


def channel_key(channel: str, post_kind: str | None) -> str:
    """A channel as counts and rules name it: "email", "x:mention", "telegram:dm"."""
    return f"{channel}:{post_kind}" if post_kind else channel


INTAKE_STATUSES = ("stored", "classified")
"""The statuses of a customer's request; quarantined mail and department replies are not."""

_INTAKE = text("status IN ({})".format(", ".join(f"'{status}'" for status in INTAKE_STATUSES)))


class Message(Base):
    """One inbound item with its raw bytes (kept forever), its text and what became of it."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("source", "content_key"),
        # One mail sent to several support addresses (several sources) is one request: the
        # database refuses a second, whichever poller commits it (INSERT ... ON CONFLICT).
        Index(
            "ux_messages_intake_content_key",
            "content_key",
            unique=True,
            sqlite_where=_INTAKE,
            postgresql_where=_INTAKE,
        ),
        Index("ix_messages_customer_received", "customer_id", "received_at"),
        Index("ix_messages_status", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(512))
    content_key: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32), default="email")
    # A post's kind on its channel ("mention", "dm", ...); None for mail.
    post_kind: Mapped[str | None] = mapped_column(String(16))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    header_message_id: Mapped[str | None] = mapped_column(String(998))
    subject: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str] = mapped_column(String(8), default="und")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    size: Mapped[int] = mapped_column(Integer, default=0)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_reason: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="stored")
    # The route decided for it, as data (triage/decide/route.py): never parsed, never LIKEd.
    disposition: Mapped[str | None] = mapped_column(String(16), index=True)
    department: Mapped[str | None] = mapped_column(String(64))
    reasons: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    urgent_reasons: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    error: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    purged_at: Mapped[datetime | None]

    customer: Mapped[Customer | None] = relationship()
    classifications: Mapped[list[Classification]] = relationship(
        back_populates="message", order_by="Classification.id"
    )


class Classification(Base):
    """The model's answer on one axis for one message, with the model version that gave it."""

    __tablename__ = "classifications"
    __table_args__ = (UniqueConstraint("message_id", "axis", "model_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    axis: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(128))
    confidence: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    message: Mapped[Message] = relationship(back_populates="classifications")


class Forward(Base):
    """An outbox entry: one message to one department, delivered by the forwarder."""

    __tablename__ = "forwards"
    __table_args__ = (
        UniqueConstraint("message_id", "department"),
        Index("ix_forwards_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    department: Mapped[str] = mapped_column(String(64))
    to_addrs: Mapped[list[Any]] = mapped_column(default=list)
    cc_addrs: Mapped[list[Any]] = mapped_column(default=list)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    # The route that queued it (a correction's re-route queues a second forward).
    disposition: Mapped[str | None] = mapped_column(String(16))
    reasons: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    urgent_reasons: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    rfc_message_id: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]

    message: Mapped[Message] = relationship()


class SourceState(Base):
    """A source's checkpoint (opaque to us, owned by its connector) and its health."""

    __tablename__ = "source_states"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    checkpoint: Mapped[dict[str, Any] | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    error_streak: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_until: Mapped[datetime | None]  # a rate limit: no poll before this instant
    # The worker polling the source now, and until when (triage/store/leases.py).
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]


class ModelVersion(Base):
    """A trained classifier on disk; exactly one row is active, so every worker agrees."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    activated_at: Mapped[datetime | None]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ModelActivation(Base):
    """One activation of a model version, kept so `triage models rollback` can step back.

    The rows not rolled back form a stack whose top is the active version; a rollback marks
    the top rolled back and re-activates the version below it.
    """

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(ForeignKey("model_versions.version"), index=True)
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_by: Mapped[str] = mapped_column(String(255), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    rolled_back_at: Mapped[datetime | None]


class Label(Base):
    """A human's label of one message on one axis, next to what the model had guessed.

    Rows are never updated: a newer label of the same (message, axis) supersedes older ones,
    so the history keeps who changed their mind and when. Erasing a message erases its labels.
    """

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    axis: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(128))
    labelled_by: Mapped[str] = mapped_column(String(255), default="")
    labelled_at: Mapped[datetime] = mapped_column(default=utcnow)
    model_label: Mapped[str | None] = mapped_column(String(128))
    model_confidence: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))


class Alert(Base):
    """An alert to the admin and whether it could be mailed: one that could not is shown by
    `triage status` and the status page, since the mail server that failed it may be the
    very problem it reports."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None]  # None: not mailed (no address set, or it failed)
    error: Mapped[str | None] = mapped_column(Text)  # why it could not be mailed
