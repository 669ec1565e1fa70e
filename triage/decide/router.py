"""The router: the one place that decides where a message goes, and why. It decides; the
outbox acts.

``Router.decide`` takes the facts the pipeline gathered about one message (the model's
predictions, the urgency assessment, machine mail, a size or body problem, the sender's recent
forwards, a human's correction) and returns a ``Route``: a disposition with its reasons as data.
Order of decisions: an oversized message goes to review with its headers, and so does one whose
body could not be read; machine-sent mail is never forwarded (no loops with auto-replies or our
own forwards); without a model, or when the model is unsure, the message goes to the review department
instead of a guess; kinds that are not forwarded stop here; then an explicit rule or the
department that owns the product area takes it; a sender over the hourly cap is held back.
Urgent messages are marked and escalated.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from classifiers.base import Prediction
from triage.config import Config
from triage.decide.route import Disposition, Reason, Route, Signal, reason
from triage.decide.urgency import Assessment

KIND, AREA, URGENCY = "kind", "area", "urgency"


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What is known about one message when it is routed.

    Attributes:
        predictions: the model's answer per axis (a human's labels, for a correction); None
            when no model is active.
        urgency: the urgency the signals and the model decide (``urgency.assess``).
        auto_reason: why the message is machine-sent (auto-reply, bulk, our own forward).
        oversized: the message's size when it was over the limit and only its headers kept.
        unreadable: why its body could not be read.
        sender_forwards: forwards queued for this sender in the last hour (the loop guard).
        review_request: a human said what is wrong but not what is right.
        corrected_by: who corrected the labels this route is decided on.
    """

    predictions: Mapping[str, Prediction] | None = None
    urgency: Assessment | None = None
    auto_reason: str | None = None
    oversized: int | None = None
    unreadable: str | None = None
    sender_forwards: int = 0
    review_request: Reason | None = None
    corrected_by: str | None = None


class Router:
    """A pure mapping from facts to a route, built from config."""

    def __init__(self, config: Config) -> None:
        self.routing = config.routing
        self.emails = {d.name: d.email for d in config.departments}
        self.owners = {area: d.name for d in config.departments for area in d.areas}
        self.redirect = config.forwarding.redirect_all_to

    def decide(self, facts: MessageFacts) -> Route:
        """Where one message goes, and why."""
        route = self._decide(facts)
        cap = self.routing.max_forwards_per_sender_per_hour
        if route.department and facts.sender_forwards >= cap:
            return Route(Disposition.CAPPED, (reason("sender_cap", cap=cap),))
        if facts.corrected_by:
            corrected = (*route.reasons, reason("corrected", by=facts.corrected_by))
            return _replace_reasons(route, corrected)
        return route

    def _decide(self, facts: MessageFacts) -> Route:
        signals = facts.urgency.signals if facts.urgency else ()
        if facts.oversized is not None:
            return self._review(reason("oversized", size=facts.oversized))
        if facts.review_request is not None:
            return self._review(facts.review_request)
        if facts.unreadable:
            return self._review(reason("unreadable", detail=facts.unreadable), signals)
        if facts.auto_reason:
            return Route(Disposition.MACHINE, (reason("machine_sent", why=facts.auto_reason),))
        predictions = facts.predictions
        if predictions is None:
            return self._review(reason("no_model"), signals)
        urgency = self._urgency(predictions, facts.urgency)
        urgent = urgency is not None and urgency in self.routing.urgent_labels
        signals = signals if urgent else ()
        kind = predictions.get(KIND)
        if kind is None:
            return self._review(reason("no_kind_axis"), signals, urgent)
        if unsure := self._unsure(kind):
            return self._review(unsure, signals, urgent)
        if kind.label not in self.routing.forward_kinds:
            return Route(Disposition.RECORDED, (reason("kind_not_forwarded", kind=kind.label),))
        area = predictions.get(AREA)
        if area is not None and (unsure := self._unsure(area)):
            return self._review(unsure, signals, urgent)
        department, why = self._department(kind.label, area.label if area else None)
        if department is None:
            return self._review(why, signals, urgent)
        return self._send(Disposition.FORWARDED, department, why, signals, urgent)

    @staticmethod
    def _urgency(predictions: Mapping[str, Prediction], assessed: Assessment | None) -> str | None:
        """The urgency label to act on: the assessment's (signals may raise the model's)."""
        if assessed is not None and assessed.label is not None:
            return assessed.label
        model = predictions.get(URGENCY)
        return model.label if model is not None else None

    def _unsure(self, prediction: Prediction) -> Reason | None:
        """Why the router should not act on a prediction: the model abstained ("none of our
        categories") or is below the configured confidence."""
        if prediction.abstained:
            return reason("out_of_scope", label=prediction.label, confidence=prediction.confidence)
        if prediction.confidence < self.routing.min_confidence:
            return reason(
                "low_confidence", label=prediction.label, confidence=prediction.confidence
            )
        return None

    def _department(self, kind: str, area: str | None) -> tuple[str | None, Reason]:
        for rule in self.routing.rules:
            if rule.kind in (None, kind) and rule.area in (None, area):
                return rule.department, reason("rule", kind=rule.kind or "*", area=rule.area or "*")
        if area is not None and area in self.owners:
            return self.owners[area], reason("owns_area", area=area)
        return None, reason("unowned_area", area=area)

    def _review(
        self, why: Reason, signals: tuple[Signal, ...] = (), urgent: bool | None = None
    ) -> Route:
        """To the review department (or recorded only, when none is configured); urgent when
        ``urgent`` says so, else when signals fired (no model to ask)."""
        review = self.routing.review_department
        if review is None:
            return Route(Disposition.RECORDED, (why, reason("no_review_department")))
        urgent = bool(signals) if urgent is None else urgent
        return self._send(Disposition.REVIEW, review, why, signals, urgent)

    def _send(
        self,
        disposition: Disposition,
        department: str,
        why: Reason,
        signals: tuple[Signal, ...],
        urgent: bool,
    ) -> Route:
        to = (self.redirect or self.emails[department],)
        escalation = self.routing.escalation_email if urgent else None
        cc = (self.redirect or escalation,) if escalation else ()
        return Route(disposition, (why,), department, to, cc, urgent, signals if urgent else ())


def _replace_reasons(route: Route, reasons: tuple[Reason, ...]) -> Route:
    return Route(
        route.disposition, reasons, route.department, route.to_addrs, route.cc_addrs,
        route.urgent, route.signals,
    )  # fmt: skip


def label_gaps(config: Config, labels: Mapping[str, Collection[str]]) -> list[str]:
    """Names in the routing config that a model with these labels (axis -> labels) can never
    predict, one sentence each: a kind that is never forwarded, an area no mail reaches, an
    urgent label never given. A label written with other case or spaces is named as the cause.
    """
    wanted = {
        KIND: ("routing.forward_kinds", config.routing.forward_kinds),
        AREA: ("departments[].areas", tuple(a for d in config.departments for a in d.areas)),
        URGENCY: ("routing.urgent_labels", config.routing.urgent_labels),
    }
    gaps = []
    for axis, (key, names) in wanted.items():
        known = set(labels.get(axis, ()))
        if not known:
            continue
        spelled = {fold_label(label): label for label in known}
        for name in dict.fromkeys(names):
            if name in known:
                continue
            if (other := spelled.get(fold_label(name))) is not None:
                gaps.append(f"{key} has {name!r} but the model's {axis} label is {other!r}")
            else:
                gaps.append(
                    f"{key} has {name!r}, which is none of the model's {axis} labels "
                    f"({', '.join(sorted(known))})"
                )
    return gaps


def fold_label(label: str) -> str:
    """What two spellings of one label share: "Billing " and "billing" are one label."""
    return " ".join(label.split()).casefold()
