"""Urgency from more than the text: the model's guess combined with a support lead's signals.

Text alone is a weak urgency signal on real mail, so the final label also weighs what a lead
would: explicit markers in the text (asks for haste, reports an outage, threatens legal action),
the channel (a public post is seen by everyone), a VIP list, and the customer's recent history
(the third contact in a week about the same area). Every signal that fires is kept as data
(``route.Signal``) and read in the forward's "Urgent because" line. Pure logic: the caller
counts the recent contacts (one query per batch) and passes them in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from classifiers.base import Prediction
from triage.config import Urgency
from triage.decide.route import Signal

RECENT_CONTACTS_COUNTED = 20
"""Earlier contacts per area counted for the repeat signal: the history read per batch stays
small however busy a sender (or a mail loop) is; beyond this the reason says "or later"."""


@dataclass(frozen=True, slots=True)
class Assessment:
    """The final urgency of one message.

    Attributes:
        label: The urgency label to act on: the model's, or ``urgent_label`` when a signal fired.
        signals: Why it is urgent, one per signal (empty when it is not).
        escalated: True when a signal raised the label above the model's.
    """

    label: str | None
    signals: tuple[Signal, ...] = ()
    escalated: bool = False


def assess(
    prediction: Prediction | None,
    text: str,
    channel: str,
    sender: str,
    recent_contacts: int,
    settings: Urgency,
    urgent_labels: Sequence[str],
    area: str | None = None,
) -> Assessment:
    """Combine the model's urgency with the signals the config names.

    Args:
        prediction: The model's urgency prediction; None when the model has no urgency axis.
        text: The text the model read (subject and body, quotes trimmed).
        channel: The message's channel ("email", "x", ...), or "x:mention" style with its kind.
        sender: The sender's address or handle.
        recent_contacts: Earlier messages of this customer about ``area`` within
            ``settings.repeat_window_days`` (this message not counted).
        settings: The ``[urgency]`` config section.
        urgent_labels: The labels the router escalates; the first is used when a signal fires.
        area: The product area of this message, for the repeat-contact reason.

    Returns:
        The label to route on and the reasons; the model's label unchanged when nothing fired.
    """
    model_label = prediction.label if prediction is not None else None
    model_urgent = model_label is not None and model_label in urgent_labels
    signals = [
        *marker_signals(text, settings.markers),
        *_channel_signals(channel, settings.escalate_channels),
        *_vip_signals(sender, settings.vip),
        *_repeat_signals(recent_contacts, settings, area),
    ]
    if model_urgent:
        assert prediction is not None
        model = Signal("model", {"label": model_label, "confidence": prediction.confidence})
        return Assessment(model_label, (model, *signals))
    if not signals or not urgent_labels:
        return Assessment(model_label)
    return Assessment(urgent_labels[0], tuple(signals), escalated=True)


def marker_signals(text: str, markers: Mapping[str, Mapping[str, Sequence[str]]]) -> list[Signal]:
    """One signal per marker category found in ``text``, with the words that matched.

    A marker matches whole words, case-insensitively; a trailing ``*`` also matches any ending
    (``адвокат*`` finds "адвоката"), for inflected languages.
    """
    pattern, categories, stems = compiled_markers(markers)
    lowered = text.lower()
    if not any(stem in lowered for stem in stems):
        return []  # the common case, at the cost of a substring search
    found: dict[str, list[str]] = {}
    for match in pattern.finditer(text):
        category = categories[match.lastgroup or ""]
        quoted = match.group(0).lower()
        if quoted not in found.setdefault(category, []):
            found[category].append(quoted)
    return [
        Signal("marker", {"category": category, "words": words})
        for category, words in found.items()
    ]


def compiled_markers(
    markers: Mapping[str, Mapping[str, Sequence[str]]],
) -> tuple[re.Pattern[str], dict[str, str], frozenset[str]]:
    """The markers of every language merged by category, compiled (cached per word list)."""
    by_category: dict[str, list[str]] = {}
    for languages in markers.values():
        for category, words in languages.items():
            by_category.setdefault(category, []).extend(words)
    return _pattern(tuple((c, tuple(w)) for c, w in by_category.items() if w))


@lru_cache(maxsize=64)
def _pattern(
    categories: tuple[tuple[str, tuple[str, ...]], ...],
) -> tuple[re.Pattern[str], dict[str, str], frozenset[str]]:
    """One regex for every category (a named group each), so the text is scanned once, and
    the longest word of every marker, which a text must contain for the regex to find anything."""
    stems = frozenset(
        max(word.removesuffix("*").split(), key=len).lower()
        for _, words in categories
        for word in words
        if word.strip("* ")
    )
    groups = {f"c{index}": category for index, (category, _) in enumerate(categories)}
    alternatives = [
        f"(?P<c{index}>{'|'.join(_alternative(w) for w in sorted(words, key=len, reverse=True))})"
        for index, (_, words) in enumerate(categories)
    ]
    pattern = r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)"
    return re.compile(pattern, re.IGNORECASE), groups, stems


def _alternative(word: str) -> str:
    return re.escape(word.removesuffix("*")).replace(r"\ ", r"\s+") + (
        r"\w*" if word.endswith("*") else ""
    )


def _channel_signals(channel: str, escalate: Iterable[str]) -> list[Signal]:
    wanted = {c.lower() for c in escalate}
    base = channel.split(":", 1)[0].lower()
    if channel.lower() in wanted or base in wanted:
        return [Signal("channel", {"channel": channel})]
    return []


def _vip_signals(sender: str, vip: Iterable[str]) -> list[Signal]:
    return [Signal("vip", {"sender": sender})] if sender and is_vip(sender, vip) else []


def is_vip(sender: str, vip: Iterable[str]) -> bool:
    """Whether ``sender`` is on the VIP list: an address, a handle (the @ optional) or a
    whole domain written ``*@example.com``."""
    who = sender.strip().lower()
    bare = who.removeprefix("@")
    for entry in (v.strip().lower() for v in vip):
        if entry.startswith("*@"):
            if who.endswith(entry[1:]):
                return True
        elif entry.removeprefix("@") == bare:
            return True
    return False


def _repeat_signals(recent: int, settings: Urgency, area: str | None) -> list[Signal]:
    contact = recent + 1
    if contact < settings.repeat_contacts:
        return []
    detail = {"contact": contact, "or_later": recent >= RECENT_CONTACTS_COUNTED, "area": area,
              "days": settings.repeat_window_days}  # fmt: skip
    return [Signal("repeat", detail)]


def count_recent(
    history: Iterable[tuple[str, datetime]], area: str | None, at: datetime, window: timedelta
) -> int:
    """How many of ``history``'s (area, received at) contacts are about ``area`` within
    ``window`` before ``at``; none without an area."""
    if area is None:
        return 0
    return sum(1 for label, when in history if label == area and at - window <= when <= at)
