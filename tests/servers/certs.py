"""Self-signed TLS certificate for the test servers (Dovecot, aiosmtpd).

The certificate names ``localhost`` and ``127.0.0.1`` in its subjectAltName, so a client that
verifies against it (``ssl.create_default_context(cafile=...)``) can connect by either name. It
is made with the ``openssl`` command-line tool and an explicit config file, so it does not depend
on the system ``openssl.cnf`` nor on a Python package a fresh venv may lack.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = v3
prompt = no

[dn]
CN = localhost
O = triage test suite

[v3]
subjectAltName = DNS:localhost,IP:127.0.0.1
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class CertError(RuntimeError):
    """The certificate could not be generated (no ``openssl`` or it failed)."""


@dataclass(frozen=True, slots=True)
class CertPair:
    """A PEM certificate and its private key on disk.

    ``cert`` doubles as the CA file a client verifies against, since it is self-signed.
    """

    cert: Path
    key: Path

    @property
    def cafile(self) -> Path:
        """The file to pass as ``cafile`` to ``ssl.create_default_context``."""
        return self.cert

    def server_context(self) -> ssl.SSLContext:
        """Return a server-side TLS context loaded with this certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Return a client-side TLS context that trusts only this certificate."""
        return ssl.create_default_context(cafile=str(self.cert))


def openssl_binary() -> str | None:
    """Return the path of the ``openssl`` tool, or None when it is not on PATH."""
    return shutil.which("openssl")


def make_cert(directory: Path, *, days: int = 7) -> CertPair:
    """Generate a self-signed certificate for localhost and 127.0.0.1.

    Args:
        directory: where ``cert.pem``, ``key.pem`` and ``openssl.cnf`` are written.
        days: validity of the certificate.

    Returns:
        The paths of the certificate and the key (mode 0600).

    Raises:
        CertError: ``openssl`` is missing or failed.
    """
    openssl = openssl_binary()
    if openssl is None:
        raise CertError("openssl not found on PATH (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)
    pair = CertPair(cert=directory / "cert.pem", key=directory / "key.pem")
    command = [
        openssl, "req", "-x509", "-config", str(config), "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-sha256",
        "-days", str(days), "-keyout", str(pair.key), "-out", str(pair.cert),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CertError(f"openssl req failed ({done.returncode}): {done.stderr.strip()}")
    os.chmod(pair.key, 0o600)
    log.debug("generated %s in %.0f ms", pair.cert, (time.monotonic() - started) * 1000)
    return pair
