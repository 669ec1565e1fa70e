"""Config validation: every error is one sentence naming the key; secrets are named, not stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from classifiers.model import Classifier
from tests.helpers import make_config
from triage.config import ImapSource, check_secrets, load_config, resolve_secret
from triage.errors import ConfigError, NoActiveModel, StoreError
from triage.store.database import Database
from triage.worker.scheduler import Worker

IMAP = """
[[sources]]
name = "support"
type = "imap"
host = "imap.example.org"
username = "support@example.org"
password_env = "TRIAGE_TEST_IMAP_PASSWORD"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_the_shipped_config_is_valid() -> None:
    config = load_config(Path(__file__).parent.parent / "config.toml")
    assert [s.name for s in config.sources] == ["demo-mailbox"]
    assert config.routing.review_department == "review"
    assert config.forwarding.directory.is_absolute()
    assert config.database.url.startswith("sqlite:////")


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, IMAP))
    source = config.sources[0]
    assert isinstance(source, ImapSource)
    assert (source.port, source.tls, source.folder) == (993, "ssl", "INBOX")
    assert config.database.url == f"sqlite:///{tmp_path / 'var/triage.db'}"
    assert config.classifier.models_dir == tmp_path / "models"


TWO_OWNERS = """
[[departments]]
name = "a"
email = "a@x.test"
areas = ["billing"]
[[departments]]
name = "b"
email = "b@x.test"
areas = ["billing"]
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (IMAP.replace('host = "imap.example.org"', 'host = "x"\nport = "imap"'), "sources[0].port"),
        (
            IMAP.replace('host = "imap.example.org"', 'hots = "x"'),
            "sources[0].hots is not a known key",
        ),
        (IMAP.replace('type = "imap"', 'type = "pop3"'), "sources[0].type must be one of"),
        (
            IMAP.replace('password_env = "TRIAGE_TEST_IMAP_PASSWORD"', ""),
            "password_env or password_file",
        ),
        (IMAP + IMAP, "sources[1].name 'support' is used twice"),
        ('[routing]\nreview_department = "nobody"', "routing.review_department names 'nobody'"),
        ('[forwarding]\ntransport = "smtp"', "there is no [smtp] section"),
        ("[database]\nurl = 5", "database.url"),
        ('[database]\nurl = "sqlit:///x.db"', "database.url: 'sqlit' is not a supported database"),
        ('[database]\nurl = "var/triage.db"', "database.url: is not a database URL"),
        ('[[departments]]\nname = "x"\nemail = "not-an-address"', "departments[0].email"),
        ("[routing\n", "is not valid TOML"),
        (
            TWO_OWNERS,
            "departments[1].areas: 'billing' is already owned by department 'a'",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert expected in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_a_config_not_in_utf8_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes('[logging]\nlevel = "INFO" # журнал\n'.encode("cp1251"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 \(line 2\); save it as UTF-8$"):
        load_config(path)
    path.write_bytes('\ufeff[logging]\nlevel = "INFO" # журнал\n'.encode())
    assert load_config(path).logging.level == "INFO"  # saved "with BOM" by an editor


def test_a_directory_as_config_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=f"cannot read the config file {tmp_path}: Is a directory"
    ):
        load_config(tmp_path)


def test_secret_from_env_is_required_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(write(tmp_path, IMAP))
    monkeypatch.delenv("TRIAGE_TEST_IMAP_PASSWORD", raising=False)
    with pytest.raises(
        ConfigError, match=r"sources\[0\]\.password_env: .*TRIAGE_TEST_IMAP_PASSWORD is not set"
    ):
        check_secrets(config)
    monkeypatch.setenv("TRIAGE_TEST_IMAP_PASSWORD", "s3cret")
    assert resolve_secret(config.sources[0], "sources[0]") == "s3cret"


def test_secret_file_must_not_be_world_readable(tmp_path: Path) -> None:
    secret = tmp_path / "imap-password"
    secret.write_text("s3cret\n")
    config = load_config(
        write(
            tmp_path,
            IMAP.replace(
                'password_env = "TRIAGE_TEST_IMAP_PASSWORD"', 'password_file = "imap-password"'
            ),
        )
    )
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="readable by everyone"):
        check_secrets(config)
    os.chmod(secret, 0o600)
    assert resolve_secret(config.sources[0], "sources[0]") == "s3cret"


def config_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triage", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
    )


def test_cli_config_check_exit_codes(tmp_path: Path) -> None:
    ok = config_check(write(tmp_path, ""))
    assert ok.returncode == 0, ok.stderr
    assert "is valid" in ok.stdout
    assert "warning: there is no [[sources]] section: the worker has nothing to poll" in ok.stderr
    assert "warning: there is no [[departments]] section" in ok.stderr
    missing = config_check(
        write(tmp_path, '[[sources]]\nname = "box"\ntype = "maildir"\npath = "nowhere"\n')
    )
    assert missing.returncode == 0, missing.stderr
    assert f"sources[0].path: {tmp_path / 'nowhere'} is not a folder (yet)" in missing.stderr
    failed = config_check(write(tmp_path, "[schedule]\npoll_interval = -1"))
    assert failed.returncode == 2
    assert "schedule.poll_interval" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


def test_database_and_models_refuse_loose_permissions(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    db_path = tmp_path / "triage.db"
    worker = Worker(make_config(tmp_path))
    assert db_path.stat().st_mode & 0o077 == 0  # created private
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    version = tiny_model[0].version
    artifact = tmp_path / "models" / version / "model.joblib"
    artifact.chmod(0o666)
    with pytest.raises(NoActiveModel, match=r"writable by others \(run chmod o-w"):
        worker.registry.load_active()
    artifact.chmod(0o644)
    assert worker.registry.load_active().version == version
    worker.db.dispose()
    db_path.chmod(0o644)
    with pytest.raises(StoreError, match="readable by everyone; run chmod o-r"):
        Database(f"sqlite:///{db_path}")


def test_a_plain_postgresql_url_means_psycopg(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[database]\nurl = "postgresql://u:p%40ss@db/triage"'))
    assert config.database.url == "postgresql+psycopg://u:p%40ss@db/triage"


def test_a_database_file_that_cannot_be_created_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "var").write_text("a file where the folder should be")
    with pytest.raises(StoreError, match=r"cannot create the database file .*a file stands in"):
        Database(f"sqlite:///{tmp_path / 'var' / 'triage.db'}")
