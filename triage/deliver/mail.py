"""Building the mail we send (forwards, alerts, acknowledgements): UTF-8 text parts, subjects, the
loop-guard header, and the bytes on the wire.
"""

from __future__ import annotations

import binascii
from email.charset import Charset
from email.header import Header
from email.message import Message as Email
from email.mime.nonmultipart import MIMENonMultipart

LOOP_HEADER = "X-Triage-Forward"
"""Set on every forward; the normalizer treats mail carrying it as machine-sent (no loops)."""


def text_part(text: str) -> Email:
    """A UTF-8 text/plain part in quoted-printable: readable in any client, safe through 7-bit
    relays. Encoded by ``binascii`` (C): the email package's own encoder is pure Python, and a
    forward quotes the customer's whole message."""
    part = MIMENonMultipart("text", "plain", charset="utf-8")
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(binascii.b2a_qp(text.encode("utf-8")).decode("ascii"))
    return part


_UTF8_BASE64 = Charset("utf-8")


def set_subject(mail: Email, subject: str) -> None:
    """The Subject: plain when it is printable ASCII, else RFC 2047 words by the classic
    (compat32) encoder, which keeps the spaces of a long Cyrillic subject that the modern header
    folder of some Python versions drops."""
    if subject.isascii() and subject.isprintable():
        mail["Subject"] = subject
    else:
        mail["Subject"] = Header(subject, _UTF8_BASE64)  # type: ignore[assignment]  # compat32 takes a Header; typeshed says str
