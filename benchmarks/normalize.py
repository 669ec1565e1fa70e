"""Throughput of ``triage.intake.normalize.parse_email`` against ``email.policy.default``.

Generates a synthetic mix of messages (plain UTF-8, windows-1251, KOI8-U with RFC 2047
headers, HTML-only, multipart/alternative + attachment) and parses all of them with each
approach, printing messages per second. Run: ``.venv/bin/python benchmarks/normalize.py``.
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import random
import time
from collections.abc import Callable

from triage.intake.normalize import parse_email

UK_SENTENCES = [
    "Доброго дня, прошу повернути кошти за замовлення.",
    "Товар прийшов пошкоджений, упаковка розірвана.",
    "Кур'єр не приїхав у призначений час, ніхто не телефонував.",
    "Чекаю на відповідь вже третій тиждень.",
    "Їжак на коробці, ґудзик відірваний, є подряпини на екрані.",
]
EN_SENTENCES = [
    "Hello, I would like a refund for my last order.",
    "The parcel arrived damaged and the box was torn.",
    "Nobody called me before the delivery window closed.",
    "I have been waiting for an answer for three weeks.",
    "Please cancel the subscription and confirm by email.",
]
QUOTE = "\n\nOn Mon, Jan 1, 2024 at 10:00 AM Support <support@x.example> wrote:\n> Hello.\n> Bye.\n"
SIGNATURE = "\n\n-- \nІван Петренко\n+380 44 000 00 00\n"


def b_word(text: str, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def head(i: int, subject: str, sender: str, content_type: str, extra: str = "") -> bytes:
    return (
        f"From: {sender}\r\nTo: support@triage.example\r\nSubject: {subject}\r\n"
        f"Date: Mon, 1 Jan 2024 10:{i % 60:02d}:00 +0200\r\nMessage-ID: <m{i}@example.com>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n{extra}\r\n"
    ).encode("ascii")


def text(rng: random.Random, sentences: list[str], count: int = 6) -> str:
    return " ".join(rng.choice(sentences) for _ in range(count))


def plain_utf8(i: int, rng: random.Random) -> bytes:
    body = text(rng, EN_SENTENCES) + QUOTE
    return head(i, "Re: Refund", "John <john@example.com>", "text/plain; charset=utf-8") + (
        body.encode()
    )


def plain_cp1251(i: int, rng: random.Random) -> bytes:
    body = text(rng, UK_SENTENCES) + SIGNATURE
    subject = b_word("Скарга на доставку", "windows-1251")
    sender = f"{b_word('Іван Петренко', 'windows-1251')} <ivan@example.ua>"
    ctype = "text/plain; charset=windows-1251"
    return head(i, subject, sender, ctype, "Content-Transfer-Encoding: 8bit\r\n") + body.encode(
        "cp1251"
    )


def plain_koi8u(i: int, rng: random.Random) -> bytes:
    body = base64.encodebytes(text(rng, UK_SENTENCES).encode("koi8_u"))
    subject = b_word("Повернення коштів", "koi8-u")
    sender = f"{b_word('Олена Коваль', 'koi8-u')} <olena@example.ua>"
    ctype = "text/plain; charset=koi8-u"
    return head(i, subject, sender, ctype, "Content-Transfer-Encoding: base64\r\n") + body


def html_only(i: int, rng: random.Random) -> bytes:
    paragraphs = "".join(
        f"<p>{s} &mdash; caf&eacute;</p>" for s in text(rng, EN_SENTENCES).split(". ")
    )
    markup = (
        "<html><head><style>p{margin:0}</style></head><body>"
        f"<div>{paragraphs}</div><blockquote><p>Old text</p></blockquote></body></html>"
    )
    return head(i, "Order", "Ann <ann@example.com>", "text/html; charset=utf-8") + markup.encode()


def multipart_attachment(i: int, rng: random.Random) -> bytes:
    body = text(rng, UK_SENTENCES)
    attachment = base64.encodebytes(rng.randbytes(20_000)).decode()
    payload = (
        "--OUTER\r\nContent-Type: multipart/alternative; boundary=INNER\r\n\r\n"
        "--INNER\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body}\r\n"
        "--INNER\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"<p>{body}</p>\r\n--INNER--\r\n"
        "--OUTER\r\nContent-Type: application/pdf; name=invoice.pdf\r\n"
        "Content-Disposition: attachment; filename=invoice.pdf\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--OUTER--\r\n"
    )
    ctype = 'multipart/mixed; boundary="OUTER"'
    return head(i, "Invoice", "Petro <petro@example.ua>", ctype) + payload.encode()


GENERATORS = [plain_utf8, plain_cp1251, plain_koi8u, html_only, multipart_attachment]


def corpus(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [GENERATORS[i % len(GENERATORS)](i, rng) for i in range(count)]


def stdlib_default(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    body = msg.get_body(("plain", "html"))
    return body.get_content() if body is not None else ""


def ours(raw: bytes) -> str:
    return parse_email(raw).body_text


def measure(name: str, parse: Callable[[bytes], str], messages: list[bytes], rounds: int) -> None:
    best = float("inf")
    errors = 0
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in messages:
            try:
                parse(raw)
            except Exception:
                errors += 1
        best = min(best, time.perf_counter() - start)
    per_msg_ms = best / len(messages) * 1000
    print(
        f"{name:<48} {len(messages) / best:>9,.0f} msgs/s  {per_msg_ms:.3f} ms/msg  errors={errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds is reported")
    args = parser.parse_args()
    messages = corpus(args.count)
    size = sum(map(len, messages)) / len(messages)
    print(f"{len(messages)} synthetic messages, mean size {size / 1024:.1f} KiB")
    measure("triage.intake.normalize.parse_email (compat32)", ours, messages, args.rounds)
    measure("policy.default + get_body().get_content()", stdlib_default, messages, args.rounds)
    for generator in GENERATORS:
        subset = [m for i, m in enumerate(messages) if GENERATORS[i % len(GENERATORS)] is generator]
        measure(f"  parse_email, {generator.__name__} only", ours, subset, args.rounds)


if __name__ == "__main__":
    main()
