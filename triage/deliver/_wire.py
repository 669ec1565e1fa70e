"""The bytes of a mail on the wire: depends on the email package's generator and policy internals.

``_WireGenerator`` writes an attached message that is held as a string verbatim, 8-bit bytes
included (it reads ``Message._payload`` and overrides ``_handle_message_rfc822``, as the
stdlib generator does); ``_Compat32ShortHeaders`` writes a short plain header without the
folder, which was half the time of writing a forward. Both are compared with the stdlib's own
output in tests/test_forwarding.py. Re-check after upgrading Python: ``email.generator``.
"""

from __future__ import annotations

import io
from email.generator import BytesGenerator
from email.message import Message as Email
from email.policy import Compat32
from typing import Any


class _WireGenerator(BytesGenerator):
    """Writes an attached message given as a string verbatim, 8-bit bytes included."""

    def _handle_message_rfc822(self, msg: Email) -> None:
        payload = msg._payload  # type: ignore[attr-defined]  # as the stdlib generator reads it; get_payload() would decode
        if isinstance(payload, str):
            self.write(payload)  # BytesGenerator.write restores the bytes (surrogateescape)
        else:
            self._handle_message(msg)  # type: ignore[attr-defined]


class _Compat32ShortHeaders(Compat32):
    """compat32, writing a short plain header as it is instead of through its Header folder.

    Folding every header was half the time of writing a forward; a single-spaced printable
    ASCII value that fits on its line comes out of the folder unchanged anyway
    (tests/test_forwarding.py compares the two).
    """

    def fold_binary(self, name: str, value: Any) -> bytes:
        if (
            isinstance(value, str)
            and value.isascii()
            and value.isprintable()
            and "  " not in value
            and value == value.strip()
            and len(name) + 2 + len(value) <= (self.max_line_length or 78)
        ):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


WIRE_POLICY = _Compat32ShortHeaders()


def as_bytes(message: Email) -> bytes:
    """The wire form: CRLF line ends everywhere (bare LF is refused by hardened MTAs)."""
    buffer = io.BytesIO()
    _WireGenerator(buffer, mangle_from_=False, policy=WIRE_POLICY).flatten(message, linesep="\r\n")
    return buffer.getvalue()
