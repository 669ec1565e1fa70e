"""Tests of the email normalization stage on hand-built raw messages and CPython's corpus."""

from __future__ import annotations

import base64
import email.utils
import os
import quopri
import random
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.helpers import EN_TEXT, UK_TEXT, b_word, multipart, part, q_word, raw_mail
from triage.intake.normalize import (
    NormalizationError,
    ParsedEmail,
    _fold,
    decode_bytes,
    html_to_text,
    parse_email,
    split_address,
    trim_for_classification,
)

# --------------------------------------------------------------------------- charsets


def test_windows_1251_body_declared() -> None:
    parsed = parse_email(
        raw_mail(UK_TEXT.encode("cp1251"), content_type="text/plain; charset=windows-1251")
    )
    assert parsed.body_text == UK_TEXT
    assert parsed.warnings == ()
    assert parsed.language == "uk"


def test_koi8u_base64_body_with_rfc2047_koi8u_subject_and_display_name() -> None:
    raw = raw_mail(
        base64.encodebytes(UK_TEXT.encode("koi8_u")),
        content_type='text/plain; charset="KOI8-U"',
        cte="base64",
        sender=f"{b_word('Іван Петренко', 'koi8-u')} <Ivan.Petrenko@Example.UA>",
        subject=q_word("Скарга: пошкоджений товар", "koi8-u"),
    )
    parsed = parse_email(raw)
    assert parsed.body_text == UK_TEXT
    assert parsed.subject == "Скарга: пошкоджений товар"
    assert parsed.sender_name == "Іван Петренко"
    assert parsed.sender_address == "ivan.petrenko@example.ua"
    assert parsed.warnings == ()


def test_quoted_encoded_word_display_name_and_control_chars() -> None:
    raw = raw_mail(
        b"body\x00 text",
        sender=f'"{b_word("Коваль, Олена", "utf-8")}" <Olena@X.UA>',
        subject="=?utf-8?Q?Null=00byte?=",
    )
    parsed = parse_email(raw)
    assert (parsed.sender_name, parsed.sender_address) == ("Коваль, Олена", "olena@x.ua")
    assert parsed.subject == "Nullbyte"
    assert parsed.body_text == "body text"
    in_address = parse_email(
        raw_mail(b"t", sender="Olena <nu\x00l@X.UA>")
    )  # PostgreSQL refuses NUL
    assert in_address.sender_address == "nul@x.ua"


def test_quoted_printable_cp1251_and_folded_multiword_subject() -> None:
    subject = f"{b_word('Повернення', 'windows-1251')}\r\n {b_word(' коштів', 'windows-1251')}"
    raw = raw_mail(
        quopri.encodestring(UK_TEXT.encode("cp1251")),
        content_type="text/plain; charset=cp-1251",
        cte="quoted-printable",
        subject=subject,
    )
    parsed = parse_email(raw)
    assert parsed.body_text == UK_TEXT
    assert parsed.subject == "Повернення коштів"


@pytest.mark.parametrize("declared", ["iso-8859-1", "us-ascii", "windows-1252", "latin1"])
def test_cp1251_bytes_wrongly_declared_are_redecoded(declared: str) -> None:
    raw = raw_mail(UK_TEXT.encode("cp1251"), content_type=f"text/plain; charset={declared}")
    parsed = parse_email(raw)
    assert parsed.body_text == UK_TEXT
    assert any("cp1251" in w and declared in w for w in parsed.warnings), parsed.warnings


def test_koi8_bytes_declared_as_cp1251_are_redecoded() -> None:
    raw = raw_mail(UK_TEXT.encode("koi8_u"), content_type="text/plain; charset=windows-1251")
    parsed = parse_email(raw)
    assert parsed.body_text == UK_TEXT
    assert any("koi8_u" in w for w in parsed.warnings)


def test_cp1251_bytes_declared_utf8_are_redecoded() -> None:
    parsed = parse_email(
        raw_mail(UK_TEXT.encode("cp1251"), content_type="text/plain; charset=utf-8")
    )
    assert parsed.body_text == UK_TEXT
    assert parsed.warnings == (
        "part declared charset 'utf-8' does not match its bytes; decoded as cp1251",
    )


def test_utf8_with_a_few_bad_bytes_keeps_utf8() -> None:
    data = UK_TEXT.encode() + b" \xff end"
    parsed = parse_email(raw_mail(data, content_type="text/plain; charset=utf-8"))
    assert parsed.body_text == UK_TEXT + " \ufffd end"
    assert parsed.warnings == (
        "part declared charset 'utf-8' does not match its bytes; 1 invalid byte sequence(s) replaced",
    )


def test_ascii_declared_utf16_is_not_decoded_as_utf16() -> None:
    parsed = parse_email(raw_mail(b"Plain ASCII text!", content_type="text/plain; charset=utf-16"))
    assert parsed.body_text == "Plain ASCII text!"
    real = "Привіт".encode("utf-16")
    assert (
        parse_email(raw_mail(real, content_type="text/plain; charset=utf-16")).body_text == "Привіт"
    )


def test_utf8_bytes_declared_latin1_are_redecoded() -> None:
    text = "Café déjà vu — Привіт"
    parsed = parse_email(
        raw_mail(text.encode("utf-8"), content_type="text/plain; charset=iso-8859-1")
    )
    assert parsed.body_text == text
    assert "Ã" not in parsed.body_text
    assert any("utf-8" in w for w in parsed.warnings)


def test_real_latin1_text_is_left_alone() -> None:
    text = "Café crème brûlée, Müller Größe: the order is wrong."
    raw = raw_mail(text.encode("latin-1"), content_type="text/plain; charset=iso-8859-1")
    parsed = parse_email(raw)
    assert parsed.body_text == text
    assert parsed.warnings == ()


def test_missing_charset_with_utf8_bytes() -> None:
    parsed = parse_email(raw_mail(UK_TEXT.encode("utf-8"), content_type="text/plain"))
    assert parsed.body_text == UK_TEXT
    assert parsed.warnings == ("part has 8-bit bytes but no declared charset; decoded as utf-8",)


@pytest.mark.parametrize(
    ("text", "codec"),
    [
        ("ЗАЯВА НА ПОВЕРНЕННЯ КОШТІВ", "cp1251"),
        ("ЗАЯВА НА ПОВЕРНЕННЯ КОШТІВ", "koi8_u"),
        ("Дякую", "cp1251"),
        ("Дякую", "koi8_u"),
        ("ні", "koi8_u"),  # also valid UTF-8 ("Φ"), which must not win
        ("Здравствуйте, вы отправили не тот товар.", "koi8_u"),
        ("Café crème, naïve résumé, Müller", "cp1252"),
    ],
)
def test_undeclared_8bit_text_is_detected(text: str, codec: str) -> None:
    warnings: list[str] = []
    assert decode_bytes(text.encode(codec), None, warnings) == text
    assert warnings == [f"part has 8-bit bytes but no declared charset; decoded as {codec}"]


@pytest.mark.parametrize("codec", ["cp1251", "koi8_u"])
def test_correct_cyrillic_labels_are_trusted(codec: str) -> None:
    for text in ("ЗАЯВА НА ПОВЕРНЕННЯ КОШТІВ", "ДЯКУЮ ЧЕКАЮ НЕ", "ні", "Дякую", UK_TEXT):
        warnings: list[str] = []
        label = "windows-1251" if codec == "cp1251" else "koi8-u"
        assert decode_bytes(text.encode(codec), label, warnings) == text
        assert warnings == []


def test_missing_content_type_with_cp1251_bytes() -> None:
    parsed = parse_email(raw_mail(UK_TEXT.encode("cp1251"), content_type=None))
    assert parsed.body_text == UK_TEXT
    assert any("cp1251" in w for w in parsed.warnings)


@pytest.mark.parametrize("codec", ["utf-8", "cp1251", "koi8_u"])
def test_bogus_default_charset(codec: str) -> None:
    raw = raw_mail(UK_TEXT.encode(codec), content_type="text/plain; charset=DEFAULT")
    parsed = parse_email(raw)
    assert parsed.body_text == UK_TEXT
    assert parsed.warnings == (f"part declared charset 'DEFAULT' is unknown; decoded as {codec}",)


def test_unknown_charset_in_header_word_and_raw_8bit_header() -> None:
    raw = raw_mail(
        b"text",
        subject=f"=?unknown-8bit?B?{base64.b64encode('Рахунок'.encode('cp1251')).decode()}?=",
    )
    assert parse_email(raw).subject == "Рахунок"
    raw = raw.replace(b"From: Customer <customer@example.com>", "From: Олена <o@x.ua>".encode())
    parsed = parse_email(raw)
    assert (parsed.sender_name, parsed.sender_address) == ("Олена", "o@x.ua")
    assert any(w.startswith("header From") for w in parsed.warnings)


@pytest.mark.parametrize(
    ("declared", "data", "expected"),
    [
        ("utf8", "Привіт".encode(), "Привіт"),
        ("win-1251", "Привіт".encode("cp1251"), "Привіт"),
        ("koi8u", "Привіт".encode("koi8_u"), "Привіт"),
        ("x-mac-cyrillic", "Привіт".encode("mac_cyrillic"), "Привіт"),
        ("gb2312", "中文".encode("gb18030"), "中文"),
        ("ks_c_5601-1987", "한국어".encode("cp949"), "한국어"),
        ("iso-8859-8-i", "שלום".encode("iso8859_8"), "שלום"),
        ('"UTF-8"', "ü".encode(), "ü"),
        ("koi8-r", "Їжак і єнот".encode("koi8_u"), "Їжак і єнот"),  # Ukrainian in a KOI8-R client
    ],
)
def test_charset_aliases(declared: str, data: bytes, expected: str) -> None:
    warnings: list[str] = []
    assert decode_bytes(data, declared, warnings) == expected
    assert warnings == []


@pytest.mark.parametrize(
    "declared", ["undefined", "hex", "base64", "unicode_escape", "utf-16", "x"]
)
def test_decode_bytes_never_raises(declared: str) -> None:
    warnings: list[str] = []
    text = decode_bytes(b"\xff\xfe\x00abc\x81\x8d\x90\\u1234", declared, warnings)
    assert isinstance(text, str)
    text.encode("utf-8")  # no lone surrogates


# --------------------------------------------------------------------------- HTML and MIME


def test_html_only_with_entities_and_style_block() -> None:
    markup = (
        "<html><head><title>ignored title</title><style>p { color: red; }</style></head>"
        "<body><script>alert('x')</script><p>Dear&nbsp;support,</p>"
        "<div>Price is 5 &lt; 10 &amp; &quot;quoted&quot; &#8212; caf&eacute;</div>"
        "<ul><li>first</li><li>second</li></ul>see <a href='https://x.example'>my order</a>"
        "<br>line two</body></html>"
    )
    parsed = parse_email(raw_mail(markup.encode(), content_type="text/html; charset=utf-8"))
    assert parsed.html_only is True
    assert parsed.body_text == (
        'Dear support,\nPrice is 5 < 10 & "quoted" — café\n• first\n• second\nsee my order\nline two'
    )
    for junk in ("color", "alert", "ignored title", "<", "href"):
        assert junk not in parsed.body_text.replace("5 < 10", "")


def test_html_without_charset_uses_meta_charset() -> None:
    markup = '<html><head><meta charset="windows-1251"></head><body>Привіт</body></html>'
    parsed = parse_email(raw_mail(markup.encode("cp1251"), content_type="text/html"))
    assert parsed.body_text == "Привіт"


def test_html_blockquote_becomes_quote_and_is_trimmed() -> None:
    markup = (
        "<div>Still broken, please call me.</div><div class=gmail_quote>"
        "<div>On Mon, 1 Jan 2024 at 10:00, Support &lt;s@x&gt; wrote:</div>"
        "<blockquote><p>Have you tried restarting it?</p></blockquote></div>"
    )
    parsed = parse_email(raw_mail(markup.encode(), content_type="text/html; charset=utf-8"))
    assert "> Have you tried restarting it?" in parsed.body_text
    assert parsed.text_for_classification == "Still broken, please call me."


def test_outlook_html_reply_history_trimmed() -> None:
    markup = (
        "<html><head><style><!-- p.MsoNormal {margin:0cm;} --></style>"
        "<!--[if gte mso 9]><xml><o:shapedefaults /></xml><![endif]--></head><body>"
        "<p class=MsoNormal>Рахунок досі не оплачено.<o:p></o:p></p>"
        "<p class=MsoNormal><![if !supportLists]>1.<![endif]> Перевірте, будь ласка.</p>"
        "<div style='border-top:solid #E1E1E1 1.0pt'><p class=MsoNormal><b>Від:</b> Підтримка "
        "&lt;support@x.ua&gt;<br><b>Надіслано:</b> 1 січня 2024 р. 10:00<br><b>Кому:</b> Іван"
        "<br><b>Тема:</b> Рахунок</p></div><p class=MsoNormal>Старий текст</p></body></html>"
    )
    parsed = parse_email(raw_mail(markup.encode(), content_type="text/html; charset=utf-8"))
    assert "Від: Підтримка <support@x.ua>\nНадіслано:" in parsed.body_text
    assert parsed.text_for_classification == "Рахунок досі не оплачено. 1. Перевірте, будь ласка."


def test_broken_html_does_not_raise() -> None:
    assert "text" in html_to_text("<![ broken <p>text</p>")
    assert html_to_text("<head><title>t</title><body>visible</body>") == "visible"


def test_multipart_alternative_prefers_plain() -> None:
    ctype, body = multipart(
        "alternative",
        [
            part(b"Plain version", "text/plain; charset=us-ascii"),
            part(b"<p>HTML version</p>", "text/html; charset=us-ascii"),
        ],
    )
    parsed = parse_email(raw_mail(body, content_type=ctype))
    assert parsed.body_text == "Plain version"
    assert parsed.html_only is False


def test_multipart_alternative_with_empty_plain_uses_html() -> None:
    ctype, body = multipart(
        "alternative",
        [part(b"\n  \n", "text/plain"), part(b"<p>Only here</p>", "text/html")],
    )
    parsed = parse_email(raw_mail(body, content_type=ctype))
    assert parsed.body_text == "Only here"
    assert parsed.html_only is True


def test_html_inside_a_related_alternative_is_rendered_when_chosen() -> None:
    related_ctype, related = multipart(
        "related",
        [
            part(b"<p>Order <b>4512</b> is late</p>", "text/html"),
            part(b"GIF89a", "image/gif", "Content-Disposition: inline; filename=logo.gif"),
        ],
        boundary="REL",
    )
    ctype, body = multipart(
        "alternative", [part(b" \n", "text/plain"), part(related, related_ctype)]
    )
    parsed = parse_email(raw_mail(body, content_type=ctype))
    assert parsed.body_text == "Order 4512 is late"
    assert parsed.html_only is True
    assert parsed.attachments == ("logo.gif",)


@pytest.mark.parametrize(
    "header",
    [
        "ivan@example.com",
        " ivan@example.com ",
        "Ivan Petrenko <ivan@example.com>",
        "Ivan Petrenko<ivan@example.com>",
        '"Petrenko, Ivan" <ivan@example.com>',
        '"  spaced  " <s@example.com>',
        '"" <ivan@example.com>',
        "J. O'Brien <j.ob+tag@mail.example.org>",
        "=?utf-8?b?0IbQstCw0L0=?= <ivan@example.ua>",
        "<ivan@example.ua>",
        # Shapes the regex leaves to parseaddr:
        "Ivan  Petrenko <ivan@example.com>",
        "ivan@example.com (Ivan)",
        "Ivan <ivan@example.com>, Bob <bob@example.com>",
        '"a\\"b" <c@example.com>',
        "undisclosed-recipients:;",
        "Ivan <ivan@[10.0.0.1]>",
        "not an address",
    ],
)
def test_split_address_agrees_with_parseaddr(header: str) -> None:
    assert split_address(header) == email.utils.parseaddr(header)


def test_folding_whitespace_agrees_with_the_regex() -> None:
    spaces = " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2000\u2028\u3000\u200b\ufeff"
    rng = random.Random(5)
    for _ in range(2000):
        text = "".join(rng.choice(spaces + "aя.") for _ in range(rng.randint(0, 10)))
        assert _fold(text) == re.sub(r"\s+", " ", text).strip()


def test_multipart_mixed_attachments_are_named_and_excluded() -> None:
    rfc2231 = "UTF-8''" + "".join(f"%{b:02X}" for b in "Рахунок №5.pdf".encode())
    inner_ctype, inner = multipart(
        "alternative",
        [
            part(UK_TEXT.encode("cp1251"), "text/plain; charset=windows-1251"),
            part(b"<p>x</p>", "text/html"),
        ],
        boundary="INNER",
    )
    ctype, body = multipart(
        "mixed",
        [
            part(inner, inner_ctype),
            part(
                base64.encodebytes(b"%PDF-1.4 binary"),
                "application/pdf",
                f"Content-Disposition: attachment; filename*={rfc2231}",
                "Content-Transfer-Encoding: base64",
            ),
            part(
                b"log line 1\nlog line 2",
                "text/plain",
                f'Content-Disposition: attachment; filename="{b_word("журнал.txt", "koi8-u")}"',
            ),
            part(b"GIF89a", "image/gif", "Content-Transfer-Encoding: 8bit"),
        ],
    )
    parsed = parse_email(raw_mail(body, content_type=ctype))
    assert parsed.body_text == UK_TEXT
    assert parsed.attachments == ("Рахунок №5.pdf", "журнал.txt", "(unnamed image/gif)")
    assert "log line" not in parsed.body_text


def test_attached_message_rfc822_text_is_kept() -> None:
    inner = raw_mail(b"My neighbour's order never arrived.", subject="Lost parcel")
    ctype, body = multipart(
        "mixed",
        [
            part(b"See the forwarded complaint.", "text/plain"),
            part(inner, "message/rfc822", "Content-Disposition: attachment"),
        ],
    )
    parsed = parse_email(raw_mail(body, content_type=ctype, subject="Fwd: Lost parcel"))
    assert parsed.attachments == ("Lost parcel.eml",)
    assert "never arrived" in parsed.body_text
    assert parsed.text_for_classification == (
        "See the forwarded complaint. My neighbour's order never arrived."
    )


def test_body_is_truncated() -> None:
    parsed = parse_email(raw_mail(b"x" * 50_000, content_type="text/plain"), max_text_chars=1000)
    assert len(parsed.body_text) == 1000
    assert any("truncated" in w for w in parsed.warnings)


# --------------------------------------------------------------------------- trimming


def test_english_quoted_reply_trimmed() -> None:
    body = (
        "The replacement is also broken.\n\n"
        "On Mon, Jan 1, 2024 at 10:00 AM Support <support@triage.example> wrote:\n"
        "> Hello, we sent a replacement.\n> Regards\n"
    )
    parsed = parse_email(raw_mail(body.encode(), subject="Re: Broken kettle"))
    assert parsed.text_for_classification == "The replacement is also broken."
    assert "> Hello" in parsed.body_text


def test_gmail_reply_header_wrapped_over_two_lines() -> None:
    body = (
        "Thanks, that fixed it.\n\n"
        "On Mon, Jan 1, 2024 at 10:00 AM Support Team <\n"
        "support@triage.example> wrote:\n\n"
        "> Try this.\n"
    )
    assert trim_for_classification(body) == "Thanks, that fixed it."


@pytest.mark.parametrize(
    "header",
    [
        "пн, 1 січ. 2024 р. о 10:00 Служба підтримки <support@triage.example> пише:",
        "01.01.2024 10:00, Служба підтримки написав(ла):",
        "01.01.2024 10:00, Служба поддержки написал(а):",
    ],
)
def test_ukrainian_and_russian_quoted_reply_trimmed(header: str) -> None:
    body = f"Товар досі не прийшов.\n\n{header}\n> Ваше замовлення відправлено.\n"
    parsed = parse_email(raw_mail(body.encode(), subject=b_word("Відп: Замовлення", "utf-8")))
    assert parsed.text_for_classification == "Товар досі не прийшов."


def test_reply_header_without_quotes_cuts_the_history() -> None:
    body = "Ще чекаю.\n\n01.01.2024 10:00, Служба підтримки пише:\nВаше замовлення відправлено.\n"
    assert trim_for_classification(body) == "Ще чекаю."


def test_bottom_posted_reply_keeps_the_answer() -> None:
    body = "On Mon, 1 Jan 2024, Support wrote:\n> Is it fixed?\nNo, it is still broken.\n"
    assert trim_for_classification(body) == "No, it is still broken."


@pytest.mark.parametrize(
    "history",
    [
        "-----Original Message-----\nFrom: Support\nSent: Monday\nSubject: Re\n\nOld text",
        "________________________________\nFrom: Support <s@x>\nSent: Monday\nOld text",
        (
            "Від: Служба підтримки <s@x>\nНадіслано: 1 січня 2024 р. 10:00\nКому: Іван\n"
            "Тема: Замовлення\n\nСтарий текст"
        ),
        "From: Support <s@x>\nSent: Monday, January 1, 2024 10:00\nTo: me\nSubject: Re\nOld text",
    ],
)
def test_outlook_history_trimmed(history: str) -> None:
    assert trim_for_classification(f"New complaint text.\n\n{history}\n") == "New complaint text."


def test_prose_resembling_headers_is_kept() -> None:
    body = "From: Kyiv\nTo: Lviv\nDate: 5 May\nThe parcel is lost.\n"
    assert trim_for_classification(body) == "From: Kyiv To: Lviv Date: 5 May The parcel is lost."
    body = "1. Товар пошкоджений\nМенеджер пише:\nвсе гаразд. Але це не так."
    assert trim_for_classification(body) == (
        "1. Товар пошкоджений Менеджер пише: все гаразд. Але це не так."
    )


def test_mobile_signature_trimmed() -> None:
    body = "Де моє замовлення?\n\nНадіслано з iPhone\n"
    assert trim_for_classification(body) == "Де моє замовлення?"
    assert trim_for_classification("Where is it?\nSent from my iPhone") == "Where is it?"


def test_signature_delimiter_and_closing_trimmed() -> None:
    body = "Please cancel order 77.\n\n-- \nJohn Smith\nACME Ltd\n+380 44 000 00 00\n"
    parsed = parse_email(raw_mail(body.encode()))
    assert parsed.text_for_classification == "Please cancel order 77."
    body = "Прошу скасувати замовлення 77.\n\nЗ повагою,\nОлена Коваль\nТОВ «Ромашка»\n"
    assert trim_for_classification(body) == "Прошу скасувати замовлення 77."


def test_signature_trimming_is_conservative() -> None:
    long_tail = "\n".join(f"Point {i}: the device fails again." for i in range(20))
    body = f"Summary of the issue.\n--\n{long_tail}\n"
    assert "Point 19" in trim_for_classification(body)
    body = "Thanks\nbut the refund never came, " + "and nobody answers my calls " * 5
    assert "refund never came" in trim_for_classification(body)
    assert (
        trim_for_classification("Thanks!") == "Thanks!"
        or parse_email(raw_mail(b"Thanks!")).text_for_classification == "Thanks!"
    )


def test_gmail_forward_keeps_content_and_drops_forward_headers() -> None:
    body = (
        "Please look at this complaint.\n\n"
        "---------- Forwarded message ---------\n"
        "From: Petro <petro@example.com>\n"
        "Date: Mon, 1 Jan 2024 at 10:00\n"
        "Subject: Broken screen\n"
        "To: <me@example.com>\n\n"
        "The screen cracked on the first day.\n"
    )
    parsed = parse_email(raw_mail(body.encode(), subject="Fwd: Broken screen"))
    assert parsed.text_for_classification == (
        "Please look at this complaint. The screen cracked on the first day."
    )


def test_forwarder_signature_does_not_swallow_the_forwarded_mail() -> None:
    body = (
        "FYI, see below.\n-- \nJohn, ACME\n\n"
        "---------- Forwarded message ---------\nFrom: Petro <p@x.ua>\nSubject: Broken\n\n"
        "The screen cracked.\n\nBest regards,\nPetro\n"
    )
    assert trim_for_classification(body) == "FYI, see below. The screen cracked."


def test_ukrainian_and_outlook_forwards_keep_content() -> None:
    body = (
        "---------- Пересланий лист ---------\nВід: Петро <p@x.ua>\nDate: пн, 1 січ. 2024 р.\n"
        "Subject: Скарга\nTo: <me@x.ua>\n\nЕкран тріснув.\n"
    )
    assert trim_for_classification(body) == "Екран тріснув."
    outlook = (
        "FYI\n\nFrom: Petro <p@x.ua>\nSent: Monday\nTo: me\nSubject: Broken\n\nScreen cracked."
    )
    parsed = parse_email(raw_mail(outlook.encode(), subject="FW: Broken"))
    assert parsed.text_for_classification == "FYI Screen cracked."
    parsed = parse_email(raw_mail(outlook.encode(), subject="Re: Broken"))
    assert parsed.text_for_classification == "FYI"


def test_classification_text_falls_back_to_body_then_subject() -> None:
    parsed = parse_email(raw_mail(b"> only a quote\n> nothing else"))
    assert parsed.text_for_classification == "> only a quote > nothing else"
    parsed = parse_email(raw_mail(b"", subject="Refund please"))
    assert parsed.body_text == ""
    assert parsed.text_for_classification == "Refund please"


# --------------------------------------------------------------------------- auto mail


@pytest.mark.parametrize(
    ("headers", "subject", "reason"),
    [
        ([("Auto-Submitted", "auto-replied")], "Hi", "Auto-Submitted: auto-replied"),
        ([("Auto-Submitted", "auto-generated; owner=x")], "Hi", "Auto-Submitted: auto-generated"),
        ([("Precedence", "bulk")], "Hi", "Precedence: bulk"),
        ([("Precedence", "junk")], "Hi", "Precedence: junk"),
        ([("List-Id", "<news.example.com>")], "Hi", "List-Id header (mailing list)"),
        ([("List-Unsubscribe", "<mailto:u@x>")], "Hi", "List-Unsubscribe header (mailing list)"),
        ([("X-Triage-Forward", "1")], "Hi", "X-Triage-Forward header (our own forward)"),
        ([("Return-Path", "<>")], "Hi", "null sender (Return-Path <>)"),
        ([("X-Autoreply", "yes")], "Hi", "X-Autoreply header"),
        ([("X-Loop", "support@x")], "Hi", "X-Loop header (mail loop guard)"),
        ([], "Automatic reply: Order", "out-of-office subject"),
        ([], "Out of Office: back Monday", "out-of-office subject"),
        ([], "Автовідповідь: Замовлення", "out-of-office subject"),
        ([], "Undeliverable: Order", "bounce subject (delivery failure)"),
        (
            [("X-Auto-Response-Suppress", "All")],
            "Re: Order (I am on vacation)",
            "X-Auto-Response-Suppress with an auto-reply subject",
        ),
    ],
)
def test_auto_detection(headers: list[tuple[str, str]], subject: str, reason: str) -> None:
    encoded = subject if subject.isascii() else b_word(subject, "utf-8")
    assert parse_email(raw_mail(b"text", headers=headers, subject=encoded)).auto_reason == reason


def test_bounce_multipart_report() -> None:
    ctype, body = multipart(
        "report",
        [
            part(b"Delivery to the following recipient failed.", "text/plain"),
            part(
                b"Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; a@b",
                "message/delivery-status",
            ),
            part(raw_mail(b"original"), "message/rfc822"),
        ],
    )
    parsed = parse_email(raw_mail(body, content_type=ctype + "; report-type=delivery-status"))
    assert parsed.auto_reason == "Content-Type multipart/report (delivery or read report)"


def test_human_messages_are_not_auto() -> None:
    assert parse_email(raw_mail(b"text", headers=[("Auto-Submitted", "no")])).auto_reason is None
    assert (
        parse_email(raw_mail(b"text", headers=[("Precedence", "first-class")])).auto_reason is None
    )
    suppress = [("X-Auto-Response-Suppress", "All")]
    assert parse_email(raw_mail(b"text", headers=suppress, subject="Broken")).auto_reason is None


# --------------------------------------------------------------------------- headers


def test_thread_key_prefers_first_reference() -> None:
    headers = [
        ("Message-ID", " <c@x> "),
        ("In-Reply-To", "<b@x> (from support)"),
        ("References", "<a@x>\r\n <b@x>"),
    ]
    parsed = parse_email(raw_mail(b"t", headers=headers))
    assert parsed.message_id == "<c@x>"
    assert parsed.in_reply_to == "<b@x>"
    assert parsed.references == ("<a@x>", "<b@x>")
    assert parsed.thread_key == "<a@x>"


def test_thread_key_from_in_reply_to_then_message_id() -> None:
    parsed = parse_email(
        raw_mail(b"t", headers=[("Message-ID", "<c@x>"), ("In-Reply-To", "<b@x>")])
    )
    assert parsed.thread_key == "<b@x>"
    assert parse_email(raw_mail(b"t", headers=[("Message-ID", "<c@x>")])).thread_key == "<c@x>"


def test_thread_key_without_ids_is_stable_per_subject_and_sender() -> None:
    first = parse_email(raw_mail(b"a", subject="Broken kettle"))
    assert first.message_id is None
    assert first.thread_key.startswith("sha256:")
    for subject in (
        "Re: Broken kettle",
        "RE: Fwd: broken  kettle",
        b_word("Відп: Broken kettle", "utf-8"),
    ):
        assert parse_email(raw_mail(b"b", subject=subject)).thread_key == first.thread_key
    other = parse_email(raw_mail(b"a", subject="Broken kettle", sender="other@example.com"))
    assert other.thread_key != first.thread_key
    assert parse_email(raw_mail(b"a", subject="Other")).thread_key != first.thread_key


def test_sender_fallbacks() -> None:
    parsed = parse_email(raw_mail(b"t", sender=None, headers=[("Sender", "Bot <BOT@x.com>")]))
    assert (parsed.sender_name, parsed.sender_address) == ("Bot", "bot@x.com")
    parsed = parse_email(raw_mail(b"t", sender=None, headers=[("Return-Path", "<rp@x.com>")]))
    assert parsed.sender_address == "rp@x.com"
    parsed = parse_email(raw_mail(b"t", sender=None))
    assert (parsed.sender_name, parsed.sender_address) == ("", "")
    parsed = parse_email(raw_mail(b"t", sender="Angry Customer"))  # no address: still who wrote
    assert (parsed.sender_name, parsed.sender_address) == ("Angry Customer", "")
    parsed = parse_email(raw_mail(b"t", sender="<>"))
    assert (parsed.sender_name, parsed.sender_address) == ("", "")


def test_date_parsing() -> None:
    parsed = parse_email(raw_mail(b"t", headers=[("Date", "Mon, 1 Jan 2024 10:00:00 +0200")]))
    assert parsed.date == datetime(2024, 1, 1, 10, tzinfo=timezone(timedelta(hours=2)))
    parsed = parse_email(raw_mail(b"t", headers=[("Date", "1 Jan 2024 10:00:00")]))
    assert parsed.date == datetime(2024, 1, 1, 10, tzinfo=UTC)
    assert parse_email(raw_mail(b"t", headers=[("Date", "yesterday-ish")])).date is None
    assert parse_email(raw_mail(b"t")).date is None


@pytest.mark.parametrize(
    ("text", "language"),
    [
        (UK_TEXT, "uk"),
        (EN_TEXT, "en"),
        ("Здравствуйте, вы отправили не тот товар, это ошибка.", "ru"),
        ("12345 !!!", "und"),
    ],
)
def test_language_guess(text: str, language: str) -> None:
    assert parse_email(raw_mail(text.encode(), subject="")).language == language


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("raw", [b"", b"   \r\n\r\n  \t"])
def test_empty_bytes_raise(raw: bytes) -> None:
    with pytest.raises(NormalizationError):
        parse_email(raw)


def test_random_binary_does_not_raise() -> None:
    rng = random.Random(20240101)
    for size in (1, 7, 100, 1000, 20_000):
        for _ in range(10):
            raw = bytes(rng.getrandbits(8) for _ in range(size))
            if raw.strip():
                assert_well_formed(parse_email(raw))


def test_mutated_messages_do_not_raise() -> None:
    """Seeded byte-level fuzzing of realistic messages: flips, cuts and MIME/RFC 2047 debris."""
    ctype, body = multipart(
        "mixed",
        [
            part(UK_TEXT.encode("cp1251"), "text/plain; charset*=utf-8''windows-1251"),
            part(b"<p>x</p>", "text/html", "Content-Transfer-Encoding: quoted-printable"),
            part(b"AAAA", 'image/png; name="=?koi8-u?B?8NLJ?=.png"'),
        ],
    )
    seeds = [
        raw_mail(body, content_type=ctype, subject=b_word("Тема", "koi8-u")),
        raw_mail(base64.encodebytes(UK_TEXT.encode("koi8_u")), cte="base64"),
    ]
    debris = [b"=?", b"?=", b"=?x?b?", b"\xff", b"\x00", b"--BOUNDARY\n", b"*=", b"<![", b"\n"]
    rng = random.Random(7)
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[pos] = rng.randrange(256)
            elif choice < 0.8:
                data[pos:pos] = rng.choice(debris)
            else:
                del data[pos : pos + rng.randint(1, 40)]
        if bytes(data).strip():
            assert_well_formed(parse_email(bytes(data)))


def test_hostile_mime_nesting_keeps_headers() -> None:
    depth = 1500
    lines = [b"From: a@b.example\nSubject: deep\nContent-Type: multipart/mixed; boundary=b0\n"]
    for i in range(1, depth):
        lines.append(f"--b{i - 1}\nContent-Type: multipart/mixed; boundary=b{i}\n".encode())
    lines.append(f"--b{depth - 1}\nContent-Type: text/plain\n\nhello\n".encode())
    parsed = parse_email(b"\n".join(lines))
    assert parsed.subject == "deep"
    assert parsed.sender_address == "a@b.example"
    assert parsed.body_text == ""
    assert any("nesting" in w for w in parsed.warnings)


def test_headers_only_and_body_only_inputs() -> None:
    assert_well_formed(parse_email(b"Subject: only headers"))
    parsed = parse_email("просто текст без заголовків".encode())
    assert_well_formed(parsed)


def assert_well_formed(parsed: ParsedEmail) -> None:
    """Every str field is real text (UTF-8 encodable), every tuple holds str."""
    for name in ("thread_key", "sender_address", "sender_name", "subject", "body_text"):
        value = getattr(parsed, name)
        assert isinstance(value, str), name
        value.encode("utf-8")
    assert isinstance(parsed.text_for_classification, str)
    parsed.text_for_classification.encode("utf-8")
    if parsed.body_text.strip():
        assert parsed.text_for_classification
    for name in ("references", "attachments", "warnings"):
        assert all(isinstance(item, str) for item in getattr(parsed, name)), name
        "".join(getattr(parsed, name)).encode("utf-8")
    assert parsed.language in {"uk", "ru", "en", "und"}
    assert parsed.date is None or parsed.date.tzinfo is not None
    assert parsed.auto_reason is None or isinstance(parsed.auto_reason, str)


def cpython_email_corpus() -> list[str]:
    try:
        import test
    except ImportError:
        return []
    data = os.path.join(os.path.dirname(test.__file__), "test_email", "data")
    if not os.path.isdir(data):
        return []
    return sorted(os.path.join(data, name) for name in os.listdir(data))


def test_cpython_email_corpus_parses() -> None:
    files = cpython_email_corpus()
    if not files:
        pytest.skip("CPython's test package (test/test_email/data) is not installed")
    parsed_count = 0
    for path in files:
        with open(path, "rb") as handle:
            raw = handle.read()
        if not raw.strip():
            continue
        assert_well_formed(parse_email(raw))
        parsed_count += 1
    assert parsed_count >= 40
