"""The decision about one message, as data: a disposition, its reasons and its urgency signals.

The router returns a ``Route``; the pipeline stores it as columns (``messages.disposition``,
``department``, ``reasons``, ``urgent``, ``urgent_reasons``), and every view reads those columns.
The sentence a person reads ("sent to review (low confidence: complaint 0.31), escalated as
urgent") is rendered from the data by ``explain`` and never parsed back or filtered on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Disposition(StrEnum):
    """What became of a message."""

    FORWARDED = "forwarded"  # the department that owns it (or a rule's) gets it
    REVIEW = "review"  # the review department gets it: a person decides
    RECORDED = "recorded"  # kept in the history, forwarded to nobody
    MACHINE = "machine"  # machine-sent (auto-reply, bulk, bounce, our own): never forwarded
    CAPPED = "capped"  # over the sender's hourly forwards: the loop guard held it back
    CORRECTION = "correction"  # a department's reply that corrected a forward
    IGNORED = "ignored"  # a reply in the corrections mailbox that asked nothing we could do
    DUPLICATE = "duplicate"  # a copy of a request stored twice by an earlier build
    UNKNOWN = "unknown"  # an earlier build's routing text no parser understood (kept as is)


REVIEWABLE = frozenset({Disposition.REVIEW})
"""The dispositions the review queue holds."""


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason for a disposition: a code and its details, e.g. ``low_confidence`` with the
    label and the confidence. ``text`` renders it for a person."""

    code: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        template = REASON_TEXTS.get(self.code)
        try:
            return template.format(**self.detail) if template else str(self.detail.get("text", ""))
        except (KeyError, ValueError, IndexError):  # a detail an older build did not store
            return str(self.detail.get("text") or self.code)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, **self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reason:
        detail = {key: value for key, value in data.items() if key != "code"}
        return cls(str(data.get("code", "text")), detail)


def reason(code: str, **detail: Any) -> Reason:
    """A reason; ``reason("owns_area", area="billing")``."""
    return Reason(code, detail)


REASON_TEXTS = {
    "owns_area": "owns {area}",
    "rule": "rule {kind}/{area}",
    "no_model": "no active model",
    "no_kind_axis": "the model has no 'kind' axis",
    "out_of_scope": "out of scope: best guess {label} {confidence:.2f}",
    "low_confidence": "low confidence: {label} {confidence:.2f}",
    "unowned_area": "no department owns area {area!r}",
    "oversized": "message of {size} bytes is over the size limit; headers kept",
    "unreadable": "the body could not be read: {detail}",
    "kind_not_forwarded": "{kind} is not a forwarded kind",
    "no_review_department": "no review department configured",
    "machine_sent": "machine-sent ({why})",
    "sender_cap": "over {cap} forwards from this sender in an hour",
    "said": "{by} says: {said}",
    "corrected": "corrected by {by}",
    "correction": "correction of message {message}: {notes}",
    "ignored": "{why}",
    "copy_of": "a copy of message {message}, stored twice by an earlier build",
    "text": "{text}",
}
"""How each reason code reads; ``text`` carries a phrase an earlier build wrote."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One reason a message is urgent: a marker in its text, a VIP sender, a repeat contact,
    a channel the config escalates, or the model's own rating."""

    kind: str  # "marker", "vip", "repeat", "channel", "model"; "text" for an older phrase
    detail: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        render = SIGNAL_TEXTS.get(self.kind)
        try:
            return render(self.detail) if render else str(self.detail.get("text", self.kind))
        except (KeyError, ValueError, TypeError):
            return str(self.detail.get("text") or self.kind)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Signal:
        detail = {key: value for key, value in data.items() if key != "kind"}
        return cls(str(data.get("kind", "text")), detail)


CATEGORY_NAMES = {
    "urgent": "asks for urgency",
    "outage": "reports an outage",
    "legal": "threatens legal action",
}
"""How a marker category reads; other categories are shown by their name."""


def _marker_text(detail: Mapping[str, Any]) -> str:
    words = ", ".join(f'"{word}"' for word in detail["words"])
    return f"{CATEGORY_NAMES.get(detail['category'], detail['category'])} ({words})"


def _repeat_text(detail: Mapping[str, Any]) -> str:
    number = f"no. {detail['contact']}" + (" or later" if detail.get("or_later") else "")
    about = f" about {detail['area']}" if detail.get("area") else ""
    return f"contact {number}{about} within {detail['days']} days"


SIGNAL_TEXTS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "marker": _marker_text,
    "vip": lambda d: f"VIP customer ({d['sender']})",
    "repeat": _repeat_text,
    "channel": lambda d: f"came in on {d['channel']}, a channel escalated by config",
    "model": lambda d: f"the model rates the text {d['label']} ({d['confidence']:.0%})",
}

URGENT_BECAUSE = "Urgent because: "


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message goes and why. ``department`` None: it is forwarded to nobody."""

    disposition: Disposition
    reasons: tuple[Reason, ...] = ()
    department: str | None = None
    to_addrs: tuple[str, ...] = ()
    cc_addrs: tuple[str, ...] = ()
    urgent: bool = False
    signals: tuple[Signal, ...] = ()  # why it is urgent

    def explain(self) -> str:
        """The sentence a person reads."""
        return explain(self.disposition, self.department, self.reasons, self.urgent)

    def because(self) -> str | None:
        """The "Urgent because: ..." line, when signals made it urgent."""
        return urgent_line(self.signals)


def explain(
    disposition: str | None,
    department: str | None,
    reasons: Iterable[Reason],
    urgent: bool = False,
    legacy: str | None = None,
) -> str:
    """Why a message was routed so, in one sentence, from what the store keeps of its route."""
    reasons = list(reasons)
    corrected = [r for r in reasons if r.code == "corrected"]
    main = "; ".join(r.text() for r in reasons if r.code != "corrected")
    if disposition == Disposition.FORWARDED:
        sentence = f"forwarded to {department} ({main})"
    elif disposition == Disposition.REVIEW:
        sentence = f"sent to review ({main})"
    elif disposition in (Disposition.RECORDED, Disposition.MACHINE, Disposition.CAPPED):
        sentence = f"not forwarded: {main}"
    elif disposition in (Disposition.IGNORED,):
        sentence = f"ignored: {main}"
    elif disposition in (Disposition.CORRECTION, Disposition.DUPLICATE):
        sentence = main
    else:
        return legacy or main
    if urgent and disposition in (Disposition.FORWARDED, Disposition.REVIEW):
        sentence += ", escalated as urgent"
    return sentence + "".join(f"; {r.text()}" for r in corrected)


def urgent_line(signals: Sequence[Signal]) -> str | None:
    return URGENT_BECAUSE + "; ".join(s.text() for s in signals) if signals else None


def route_columns(route: Route) -> dict[str, Any]:
    """The columns a message keeps of its route."""
    return {
        "disposition": route.disposition.value,
        "department": route.department,
        "reasons": reasons_json(route.reasons),
        "urgent": route.urgent,
        "urgent_reasons": signals_json(route.signals),
    }


def reasons_json(reasons: Iterable[Reason]) -> list[dict[str, Any]]:
    return [r.to_json() for r in reasons]


def reasons_of(data: Iterable[Mapping[str, Any]] | None) -> tuple[Reason, ...]:
    return tuple(Reason.from_json(item) for item in data or ())


def signals_json(signals: Iterable[Signal]) -> list[dict[str, Any]]:
    return [s.to_json() for s in signals]


def signals_of(data: Iterable[Mapping[str, Any]] | None) -> tuple[Signal, ...]:
    return tuple(Signal.from_json(item) for item in data or ())
