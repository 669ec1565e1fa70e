"""The router: decides where a classified message goes. It decides only; the outbox acts.

Order of decisions: machine-sent mail is never forwarded (no loops with auto-replies or our own
forwards); without a model, or when the model is unsure, the message goes to the review
department instead of a guess; kinds that are not forwarded stop here; then an explicit rule or
the department that owns the product area takes it. Urgent messages are marked and escalated.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from classifiers.base import Prediction
from triage.config import Config

KIND, AREA, URGENCY = "kind", "area", "urgency"
REVIEW_PREFIX = "sent to review"
"""How the routing text of a message sent to review begins."""
URGENT_SUFFIX = ", escalated as urgent"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message goes. ``department`` None means recorded, not forwarded, for ``reason``."""

    department: str | None
    reason: str
    to_addrs: tuple[str, ...] = ()
    cc_addrs: tuple[str, ...] = ()
    urgent: bool = False


class Router:
    """A pure mapping from labels to departments, built from config."""

    def __init__(self, config: Config) -> None:
        self.routing = config.routing
        self.emails = {d.name: d.email for d in config.departments}
        self.owners = {area: d.name for d in config.departments for area in d.areas}
        self.redirect = config.forwarding.redirect_all_to

    def route(
        self,
        predictions: Mapping[str, Prediction] | None,
        auto_reason: str | None,
        signalled_urgent: bool = False,
    ) -> Route:
        """Decide the department for one message.

        Args:
            predictions: the model's answer per axis; None when no model is active.
            auto_reason: why the message is machine-sent (auto-reply, bulk, our own forward).
            signalled_urgent: urgent by the config's markers, VIPs or channels, which still
                count when there is no model to ask.
        """
        if auto_reason:
            return Route(None, f"not forwarded: machine-sent ({auto_reason})")
        if predictions is None:
            return self.review("no active model", signalled_urgent)
        urgent = self._is_urgent(predictions.get(URGENCY))
        kind = predictions.get(KIND)
        if kind is None:
            return self.review("the model has no 'kind' axis", urgent)
        if unsure := self._unsure(kind):
            return self.review(unsure, urgent)
        if kind.label not in self.routing.forward_kinds:
            return Route(None, f"not forwarded: {kind.label} is not a forwarded kind")
        area = predictions.get(AREA)
        if area is not None and (unsure := self._unsure(area)):
            return self.review(unsure, urgent)
        department, why = self._department(kind.label, area.label if area else None)
        if department is None:
            return self.review(why, urgent)
        return self._send(department, f"forwarded to {department} ({why})", urgent)

    def _unsure(self, prediction: Prediction) -> str | None:
        """Why the router should not act on a prediction: the model abstained ("none of our
        categories") or is below the configured confidence."""
        if prediction.abstained:
            return f"out of scope: best guess {prediction.label} {prediction.confidence:.2f}"
        if prediction.confidence < self.routing.min_confidence:
            return f"low confidence: {prediction.label} {prediction.confidence:.2f}"
        return None

    def _is_urgent(self, urgency: Prediction | None) -> bool:
        return urgency is not None and urgency.label in self.routing.urgent_labels

    def _department(self, kind: str, area: str | None) -> tuple[str | None, str]:
        for rule in self.routing.rules:
            if rule.kind in (None, kind) and rule.area in (None, area):
                return rule.department, f"rule {rule.kind or '*'}/{rule.area or '*'}"
        if area is not None and area in self.owners:
            return self.owners[area], f"owns {area}"
        return None, f"no department owns area {area!r}"

    def review(self, why: str, urgent: bool = False) -> Route:
        """Send to the review department (or record only, when none is configured)."""
        review = self.routing.review_department
        if review is None:
            return Route(None, f"not forwarded: {why}; no review department configured")
        return self._send(review, f"{REVIEW_PREFIX} ({why})", urgent)

    def _send(self, department: str, reason: str, urgent: bool) -> Route:
        to = (self.redirect or self.emails[department],)
        escalation = self.routing.escalation_email if urgent else None
        cc = (self.redirect or escalation,) if escalation else ()
        if urgent:
            reason += URGENT_SUFFIX
        return Route(department, reason, to, cc, urgent)


def review_reason(routing: str) -> str:
    """Why a message was sent to review, read back from its routing text."""
    rest, urgent, _ = routing.removeprefix(REVIEW_PREFIX).partition(URGENT_SUFFIX)
    why = rest.strip().removeprefix("(").removesuffix(")")
    return f"{why}; urgent" if urgent else why


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
