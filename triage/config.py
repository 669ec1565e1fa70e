"""Load and validate ``config.toml`` once, at start, into frozen objects.

Every error names the key path (``sources[1].port``) in one sentence, so an admin can fix the
file without reading a traceback. Secrets are never stored here: the config names an environment
variable or a file, and :func:`resolve_secret` reads it when a connection is made.
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from triage.errors import ConfigError

TlsMode = Literal["ssl", "starttls", "plain"]
DATABASE_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
"""The database URLs' schemes the worker accepts, and the driver each one means."""
DATABASE_URLS = "sqlite:///path/to/triage.db or postgresql+psycopg://user@host/dbname"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Secret(_Section):
    """Where a secret lives: an environment variable or a file, never the config itself."""

    password_env: str | None = None
    password_file: Path | None = None


class _TlsEndpoint(Secret):
    host: str
    port: int = Field(gt=0, lt=65536)
    tls: TlsMode = "ssl"
    cafile: Path | None = None
    username: str | None = None
    timeout: float = Field(default=30.0, gt=0)


class OAuth2(_Section):
    """XOAUTH2 login (Gmail, Microsoft 365): access tokens from a refresh token (RFC 6749 §6)."""

    token_url: str = Field(pattern=r"^https?://")
    client_id: str
    scope: str | None = None
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    refresh_token_env: str | None = None
    refresh_token_file: Path | None = None

    @model_validator(mode="after")
    def _needs_refresh_token(self) -> OAuth2:
        if not (self.refresh_token_env or self.refresh_token_file):
            raise ValueError("set refresh_token_env or refresh_token_file")
        return self


class ImapSource(_TlsEndpoint):
    type: Literal["imap"]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    port: int = Field(default=993, gt=0, lt=65536)
    username: str
    folder: str = "INBOX"
    post_action: str = Field(default="none", pattern=r"^(none|seen|keyword:\S+|move:.+)$")
    idle: bool = True
    oauth2: OAuth2 | None = None
    batch_size: int = Field(default=500, ge=1, le=5000)
    max_message_bytes: int = Field(default=25_000_000, ge=1024)
    poll_interval: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _needs_secret(self) -> ImapSource:
        if not (self.password_env or self.password_file or self.oauth2):
            raise ValueError("set password_env or password_file (or an oauth2 table)")
        return self


class MaildirSource(_Section):
    type: Literal["maildir"]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    path: Path
    batch_size: int = Field(default=500, ge=1, le=5000)
    max_message_bytes: int = Field(default=25_000_000, ge=1024)
    poll_interval: float | None = Field(default=None, gt=0)


class _SocialSource(_Section):
    """A social channel: an API token named (env or file), and where the API lives."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    token_env: str | None = None
    token_file: Path | None = None
    batch_size: int = Field(default=100, ge=1, le=5000)
    poll_interval: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _needs_token(self) -> _SocialSource:
        if not (self.token_env or self.token_file or getattr(self, "oauth1", None)):
            raise ValueError("set token_env or token_file for the API token")
        return self


class XOAuth1(_Section):
    """OAuth 1.0a user context for X: public keys here, their secrets named (env or file)."""

    consumer_key: str
    access_token: str
    consumer_secret_env: str | None = None
    consumer_secret_file: Path | None = None
    access_token_secret_env: str | None = None
    access_token_secret_file: Path | None = None


class XSource(_SocialSource):
    type: Literal["x"]
    oauth1: XOAuth1 | None = None
    api_base_url: str = Field(default="https://api.twitter.com", pattern=r"^https?://")
    user_id: str = Field(pattern=r"^[0-9]+$")  # the support account whose mentions are read
    direct_messages: bool = False  # needs an OAuth 2.0 user token with dm.read
    page_size: int = Field(default=100, ge=5, le=100)


class TelegramSource(_SocialSource):
    type: Literal["telegram"]
    api_base_url: str = Field(default="https://api.telegram.org", pattern=r"^https?://")
    bot_username: str | None = None  # asked of getMe when left out
    long_poll_seconds: int = Field(default=10, ge=0, le=50)
    batch_size: int = Field(default=100, ge=1, le=100)


class MastodonSource(_SocialSource):
    type: Literal["mastodon"]
    api_base_url: str = Field(pattern=r"^https?://")  # the instance, e.g. https://mastodon.social
    mastodon_version: str = "4.2.0"
    page_size: int = Field(default=40, ge=1, le=80)


SocialSource = XSource | TelegramSource | MastodonSource
AnySource = ImapSource | MaildirSource | SocialSource
Source = Annotated[AnySource, Field(discriminator="type")]
SOURCE_TYPES = ("imap", "maildir", "x", "telegram", "mastodon")


class Department(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    areas: tuple[str, ...] = ()


class Rule(_Section):
    """An explicit (kind, area) -> department rule; checked before the area owners."""

    department: str
    kind: str | None = None
    area: str | None = None


class Routing(_Section):
    forward_kinds: tuple[str, ...] = ("complaint", "feedback")
    urgent_labels: tuple[str, ...] = ("urgent",)
    escalation_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    review_department: str | None = None
    min_confidence: float = Field(default=0.45, ge=0, le=1)
    max_forwards_per_sender_per_hour: int = Field(default=10, ge=1)
    rules: tuple[Rule, ...] = ()


DEFAULT_MARKERS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "urgent": ("urgent", "urgently", "asap", "immediately", "emergency"),
        "outage": ("down", "outage", "not working at all", "does not work at all"),
        "legal": ("lawyer*", "attorney*", "court", "sue", "lawsuit", "legal action",
                  "consumer protection"),
    },
    "uk": {
        "urgent": ("терміново", "негайно", "невідкладно"),
        "outage": ("не працює взагалі", "взагалі не працює", "нічого не працює"),
        "legal": ("суд", "суду", "судом", "суді", "адвокат*", "юрист*", "позов*",
                  "споживач*"),
    },
}  # fmt: skip
"""Built-in urgency markers per language and category; ``*`` at the end matches any ending."""


class Urgency(_Section):
    """Signals that make a message urgent besides the model's guess (``triage.urgency``)."""

    # language -> category -> words; a category given here replaces that built-in list
    markers: dict[str, dict[str, tuple[str, ...]]] = Field(
        default_factory=lambda: {lang: dict(c) for lang, c in DEFAULT_MARKERS.items()}
    )
    vip: tuple[str, ...] = ()
    repeat_contacts: int = Field(default=3, ge=2)
    repeat_window_days: float = Field(default=7, gt=0)
    escalate_channels: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _extend_defaults(self) -> Urgency:
        merged = {lang: dict(c) for lang, c in DEFAULT_MARKERS.items()}
        for lang, categories in self.markers.items():
            merged.setdefault(lang, {}).update(categories)
        object.__setattr__(self, "markers", merged)
        return self


class Smtp(_TlsEndpoint):
    port: int = Field(default=587, gt=0, lt=65536)
    tls: TlsMode = "starttls"


class Forwarding(_Section):
    transport: Literal["smtp", "directory"] = "directory"
    directory: Path = Path("var/forwards")
    from_address: str = Field(default="triage@localhost", pattern=r"^[^@\s]+@[^@\s]+$")
    redirect_all_to: str | None = None
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    history_in_forward: int = Field(default=5, ge=0)


class Classifier(_Section):
    models_dir: Path = Path("models")
    batch_size: int = Field(default=256, ge=1)
    # "embeddings" adds sentence embeddings from a local model directory (the embeddings extra).
    mode: Literal["tfidf", "embeddings"] = "tfidf"
    embedding_model: Path | None = None
    embedding_weight: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _needs_embedding_model(self) -> Classifier:
        if self.mode == "embeddings" and self.embedding_model is None:
            raise ValueError('mode "embeddings" needs embedding_model (a model directory)')
        return self

    def train_options(self) -> dict[str, object]:
        """Keywords of `classifiers.training.train` that select the feature mode."""
        return {
            "mode": self.mode,
            "embedding_model": self.embedding_model,
            "embedding_weight": self.embedding_weight,
        }


class Schedule(_Section):
    poll_interval: float = Field(default=60.0, gt=0)
    outbox_interval: float = Field(default=15.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    # Processes that parse and classify fetched mail beside the polling one; None: one per
    # core, at most 4 (each holds a copy of the model); 0: all in the polling process.
    parse_processes: int | None = Field(default=None, ge=0, le=64)

    @property
    def parse_workers(self) -> int:
        """The number of parsing processes this machine gets."""
        if self.parse_processes is not None:
            return self.parse_processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return min(4, cores or 1)


class Alerts(_Section):
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    after_failures: int = Field(default=3, ge=1)
    stale_after_minutes: float = Field(default=60.0, gt=0)


class Retention(_Section):
    raw_days: int = Field(default=0, ge=0)


class Logging(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Database(_Section):
    url: str = "sqlite:///var/triage.db"

    @field_validator("url")
    @classmethod
    def _supported(cls, url: str) -> str:
        """SQLite or PostgreSQL through psycopg: a plain ``postgresql://`` means psycopg too
        (SQLAlchemy's default driver for it, psycopg2, is not installed)."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError(f"is not a database URL; use {DATABASE_URLS}") from None
        driver = DATABASE_DRIVERS.get(parsed.drivername)
        if driver is None:
            raise ValueError(
                f"{parsed.drivername!r} is not a supported database; use {DATABASE_URLS}"
            )
        return parsed.set(drivername=driver).render_as_string(hide_password=False)


class Web(_Section):
    """The daemon's HTTP endpoint: the status page, /metrics and /healthz (read only)."""

    enabled: bool = True
    listen: str = Field(
        default="127.0.0.1:8088", pattern=r"^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}$"
    )

    @property
    def address(self) -> tuple[str, int]:
        """(host, port); an IPv6 host is given in brackets, e.g. ``[::1]:8088``."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class Corrections(_Section):
    """Departments correct the model by replying to forwards; ``source`` receives the replies."""

    source: str


class Config(_Section):
    """The validated configuration; relative paths are resolved against the file's folder."""

    database: Database = Database()
    sources: tuple[Source, ...] = ()
    departments: tuple[Department, ...] = ()
    routing: Routing = Routing()
    urgency: Urgency = Urgency()
    forwarding: Forwarding = Forwarding()
    smtp: Smtp | None = None
    classifier: Classifier = Classifier()
    schedule: Schedule = Schedule()
    alerts: Alerts = Alerts()
    retention: Retention = Retention()
    logging: Logging = Logging()
    web: Web = Web()
    corrections: Corrections | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        _unique([s.name for s in self.sources], "sources", "name")
        _unique([d.name for d in self.departments], "departments", "name")
        _one_owner_per_area(self.departments)
        known = {d.name for d in self.departments}
        if self.routing.review_department and self.routing.review_department not in known:
            raise ValueError(
                f"routing.review_department names {self.routing.review_department!r}, "
                "which is not a department"
            )
        for i, rule in enumerate(self.routing.rules):
            if rule.department not in known:
                raise ValueError(
                    f"routing.rules[{i}].department names {rule.department!r}, "
                    "which is not a department"
                )
        if self.corrections is not None:
            _check_corrections_source(self.corrections.source, self.sources)
        if self.forwarding.transport == "smtp" and self.smtp is None:
            raise ValueError("forwarding.transport is 'smtp' but there is no [smtp] section")
        return self

    def source(self, name: str) -> AnySource:
        """The source called ``name``; ConfigError listing the known names otherwise."""
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"no source named {name!r} (configured: {known})")

    def channel_of(self, name: str, item_format: str) -> str:
        """The channel of the source called ``name`` ("email", "x", ...), for items that
        could not be parsed; by the item's format when a reload removed the source."""
        for source in self.sources:
            if source.name == name:
                return "email" if source.type in ("imap", "maildir") else source.type
        return "email" if item_format == "rfc822" else "social"


def doubts(config: Config) -> list[str]:
    """What makes a valid config do nothing useful, one sentence each, for `config check`."""
    found = []
    if not config.sources:
        found.append("there is no [[sources]] section: the worker has nothing to poll")
    for i, source in enumerate(config.sources):
        if isinstance(source, MaildirSource) and not source.path.is_dir():
            found.append(f"sources[{i}].path: {source.path} is not a folder (yet)")
    if not config.departments:
        found.append("there is no [[departments]] section: nothing can be forwarded")
    return found


def _check_corrections_source(name: str, sources: tuple[AnySource, ...]) -> None:
    for source in sources:
        if source.name == name:
            if source.type not in ("imap", "maildir"):
                raise ValueError(f"corrections.source {name!r} is not an imap or maildir source")
            return
    raise ValueError(f"corrections.source names {name!r}, which is not a source")


def _one_owner_per_area(departments: tuple[Department, ...]) -> None:
    """An area owned twice would silently go to whichever department is listed last."""
    owners: dict[str, str] = {}
    for i, department in enumerate(departments):
        for area in department.areas:
            if (owner := owners.setdefault(area, department.name)) != department.name:
                raise ValueError(
                    f"departments[{i}].areas: {area!r} is already owned by department {owner!r}"
                )


def _unique(names: list[str], section: str, key: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{section}[{i}].{key} {name!r} is used twice")
        seen.add(name)


def load_config(path: Path) -> Config:
    """Read and validate ``path``.

    Raises:
        ConfigError: the file is missing, not TOML, or a key is wrong; the message names the key.
    """
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8-sig"))  # an editor's byte-order mark is fine
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 (line {line}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_config(data, base_dir=path.resolve().parent, origin=str(path))


def parse_config(data: dict[str, object], *, base_dir: Path, origin: str = "config") -> Config:
    """Validate an already-parsed TOML document (tests build configs this way)."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_first_error(exc)}") from None
    return _absolute_paths(config, base_dir)


def _first_error(exc: ValidationError) -> str:
    """One sentence for the most telling error: a misspelt key explains the missing one."""
    errors = exc.errors()
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = _key_path(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing"]
        close = difflib.get_close_matches(str(error["loc"][-1]), missing, n=1)
        return f"{loc} is not a known key" + (f" (did you mean {close[0]!r}?)" if close else "")
    if error["type"] == "missing":
        return f"{loc} is required"
    if error["type"] == "union_tag_invalid":
        return f"{loc}.type must be one of " + ", ".join(repr(t) for t in SOURCE_TYPES)
    if error["type"] == "union_tag_not_found":
        return f"{loc}.type is required (" + ", ".join(repr(t) for t in SOURCE_TYPES) + ")"
    return f"{loc}: {message}" if loc else message


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in SOURCE_TYPES:  # pydantic's discriminator level, not a key of the file
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def _absolute_paths(config: Config, base: Path) -> Config:
    def absolute(path: Path | None) -> Path | None:
        return None if path is None else (path if path.is_absolute() else base / path)

    def fix(section: _Section) -> _Section:
        updates = {
            name: absolute(value)
            for name, value in section.__dict__.items()
            if isinstance(value, Path)
        }
        return section.model_copy(update=updates) if updates else section

    database = config.database
    if database.url.startswith("sqlite:///") and not database.url.startswith("sqlite:////"):
        relative = database.url.removeprefix("sqlite:///")
        if relative and relative != ":memory:":
            database = Database(url=f"sqlite:///{base / relative}")
    return config.model_copy(
        update={
            "database": database,
            "sources": tuple(fix(s) for s in config.sources),
            "forwarding": fix(config.forwarding),
            "classifier": fix(config.classifier),
            "smtp": fix(config.smtp) if config.smtp else None,
        }
    )


def read_secret(env_var: str | None, file: Path | None, key: str, name: str) -> str:
    """Read a secret from the environment variable or the file the config names.

    ``key`` is the section's path and ``name`` the secret's (``password``, ``token``, ...), so an
    error names the exact key: ``sources[0].password_env: environment variable X is not set``.

    Raises:
        ConfigError: the variable is unset, the file is missing, or readable by everyone.
    """
    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise ConfigError(f"{key}.{name}_env: environment variable {env_var} is not set")
        return value.strip()
    if file:
        return _read_secret_file(file, f"{key}.{name}_file")
    raise ConfigError(f"{key}: set {name}_env or {name}_file")


def resolve_secret(secret: Secret, key: str) -> str:
    """The password a section names (``password_env`` or ``password_file``)."""
    return read_secret(secret.password_env, secret.password_file, key, "password")


def resolve_token(source: SocialSource, key: str) -> str:
    """The API token a social source names (``token_env`` or ``token_file``)."""
    return read_secret(source.token_env, source.token_file, key, "token")


def oauth1_secrets(oauth: XOAuth1, key: str) -> tuple[str, str]:
    """The consumer secret and the access token secret an X ``oauth1`` table names."""
    return (
        read_secret(oauth.consumer_secret_env, oauth.consumer_secret_file, key, "consumer_secret"),
        read_secret(
            oauth.access_token_secret_env,
            oauth.access_token_secret_file,
            key,
            "access_token_secret",
        ),
    )


def _read_secret_file(path: Path, key: str) -> str:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist") from None
    if mode & stat.S_IROTH:
        raise ConfigError(f"{key}: {path} is readable by everyone; run chmod o-r {path}")
    return path.read_text(encoding="utf-8").strip()


def check_secrets(config: Config) -> None:
    """Resolve every secret once so a missing one fails at start, not at the first poll."""
    for i, source in enumerate(config.sources):
        if isinstance(source, ImapSource) and source.oauth2:
            oauth_secrets(source.oauth2, f"sources[{i}].oauth2")
        elif isinstance(source, ImapSource):
            resolve_secret(source, f"sources[{i}]")
        elif isinstance(source, XSource) and source.oauth1:
            oauth1_secrets(source.oauth1, f"sources[{i}].oauth1")
        elif isinstance(source, XSource | TelegramSource | MastodonSource):
            resolve_token(source, f"sources[{i}]")
    if config.smtp and (config.smtp.password_env or config.smtp.password_file):
        resolve_secret(config.smtp, "smtp")


def oauth_secrets(oauth: OAuth2, key: str) -> tuple[str, str | None]:
    """The refresh token and the client secret (None for a public client) an oauth2 table names."""
    refresh = read_secret(oauth.refresh_token_env, oauth.refresh_token_file, key, "refresh_token")
    has_secret = oauth.client_secret_env or oauth.client_secret_file
    secret = (
        read_secret(oauth.client_secret_env, oauth.client_secret_file, key, "client_secret")
        if has_secret
        else None
    )
    return refresh, secret
