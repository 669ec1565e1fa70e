"""The router's decisions, one rule at a time (pure logic: no server needed): the disposition and
its reasons as data, and the sentence a person reads, rendered from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifiers.base import Prediction
from tests.helpers import make_config
from triage.decide.route import Disposition, Signal, reason
from triage.decide.router import MessageFacts, Router
from triage.decide.urgency import Assessment


def predictions(
    kind: str, area: str, urgency: str = "normal", confidence: float = 0.9
) -> dict[str, Prediction]:
    return {
        "kind": Prediction(kind, confidence),
        "area": Prediction(area, confidence),
        "urgency": Prediction(urgency, confidence),
    }


def facts(guesses: dict[str, Prediction] | None, **more: object) -> MessageFacts:
    return MessageFacts(guesses, **more)  # type: ignore[arg-type]


@pytest.fixture
def router(tmp_path: Path) -> Router:
    config = make_config(
        tmp_path,
        routing={
            "escalation_email": "duty@dept.test",
            "review_department": "review",
            "min_confidence": 0.5,
            "max_forwards_per_sender_per_hour": 3,
            "rules": [{"kind": "feedback", "department": "review"}],
        },
    )
    return Router(config)


def test_complaint_goes_to_the_area_owner(router: Router) -> None:
    route = router.decide(facts(predictions("complaint", "billing")))
    assert (route.disposition, route.department) == (Disposition.FORWARDED, "billing")
    assert route.reasons == (reason("owns_area", area="billing"),)
    assert route.to_addrs == ("billing@dept.test",)
    assert not route.urgent and route.cc_addrs == ()
    assert route.explain() == "forwarded to billing (owns billing)"


def test_urgent_is_escalated(router: Router) -> None:
    route = router.decide(facts(predictions("complaint", "delivery", "urgent")))
    assert (route.disposition, route.department) == (Disposition.FORWARDED, "logistics")
    assert route.urgent and route.cc_addrs == ("duty@dept.test",)
    assert route.explain() == "forwarded to logistics (owns delivery), escalated as urgent"


def test_the_signals_that_made_it_urgent_travel_with_the_route(router: Router) -> None:
    signals = (Signal("marker", {"category": "outage", "words": ["down"]}),
               Signal("vip", {"sender": "ceo@bigpartner.example"}))  # fmt: skip
    assessed = Assessment("urgent", signals, escalated=True)
    route = router.decide(facts(predictions("complaint", "billing"), urgency=assessed))
    assert route.urgent and route.signals == signals
    assert route.because() == (
        'Urgent because: reports an outage ("down"); VIP customer (ceo@bigpartner.example)'
    )


def test_questions_are_recorded_not_forwarded(router: Router) -> None:
    route = router.decide(facts(predictions("question", "billing")))
    assert (route.disposition, route.department) == (Disposition.RECORDED, None)
    assert route.explain() == "not forwarded: question is not a forwarded kind"


def test_low_confidence_goes_to_review(router: Router) -> None:
    route = router.decide(facts(predictions("complaint", "billing", confidence=0.3)))
    assert (route.disposition, route.department) == (Disposition.REVIEW, "review")
    assert route.reasons == (reason("low_confidence", label="complaint", confidence=0.3),)
    assert route.explain() == "sent to review (low confidence: complaint 0.30)"


def test_machine_sent_mail_is_never_forwarded(router: Router) -> None:
    route = router.decide(
        facts(predictions("complaint", "billing", "urgent"), auto_reason="Auto-Submitted: auto")
    )
    assert (route.disposition, route.department, route.urgent) == (Disposition.MACHINE, None, False)
    assert route.explain() == "not forwarded: machine-sent (Auto-Submitted: auto)"


def test_rules_come_before_area_owners(router: Router) -> None:
    route = router.decide(facts(predictions("feedback", "billing")))
    assert route.department == "review" and route.disposition == Disposition.FORWARDED
    assert route.explain() == "forwarded to review (rule feedback/*)"


def test_unowned_area_and_missing_model_go_to_review(router: Router) -> None:
    unowned = router.decide(facts(predictions("complaint", "returns")))
    assert unowned.explain() == "sent to review (no department owns area 'returns')"
    missing = router.decide(facts(None))
    assert (missing.disposition, missing.explain()) == (
        Disposition.REVIEW, "sent to review (no active model)",
    )  # fmt: skip


def test_without_a_model_signals_still_make_it_urgent(router: Router) -> None:
    signals = (Signal("vip", {"sender": "ceo@bigpartner.example"}),)
    route = router.decide(facts(None, urgency=Assessment("urgent", signals, escalated=True)))
    assert route.disposition == Disposition.REVIEW and route.urgent
    assert route.explain() == "sent to review (no active model), escalated as urgent"


def test_an_oversized_or_unreadable_message_goes_to_review(router: Router) -> None:
    big = router.decide(facts(predictions("complaint", "billing"), oversized=30_000_000))
    assert big.explain() == (
        "sent to review (message of 30000000 bytes is over the size limit; headers kept)"
    )
    lost = router.decide(facts(predictions("complaint", "billing"), unreadable="nested too deep"))
    assert lost.explain() == "sent to review (the body could not be read: nested too deep)"


def test_a_sender_over_the_hourly_cap_is_held_back(router: Router) -> None:
    assert router.decide(facts(predictions("complaint", "billing"), sender_forwards=2)).department
    route = router.decide(facts(predictions("complaint", "billing"), sender_forwards=3))
    assert (route.disposition, route.department) == (Disposition.CAPPED, None)
    assert route.explain() == "not forwarded: over 3 forwards from this sender in an hour"


def test_a_correction_is_decided_on_the_human_labels(router: Router) -> None:
    route = router.decide(
        facts({"kind": Prediction("complaint", 1.0), "area": Prediction("delivery", 1.0)},
              corrected_by="finance@dept.test")
    )  # fmt: skip
    assert (
        route.explain() == "forwarded to logistics (owns delivery); corrected by finance@dept.test"
    )
    said = reason("said", by="finance@dept.test", said="not ours")
    review = router.decide(facts(None, review_request=said, corrected_by="finance@dept.test"))
    assert review.explain() == (
        "sent to review (finance@dept.test says: not ours); corrected by finance@dept.test"
    )


def test_redirect_all_to(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        forwarding={"redirect_all_to": "me@trial.test", "directory": str(tmp_path)},
        routing={"escalation_email": "duty@dept.test"},
    )
    route = Router(config).decide(facts(predictions("complaint", "billing", "urgent")))
    assert route.to_addrs == ("me@trial.test",) and route.cc_addrs == ("me@trial.test",)


def test_no_review_department_records_with_the_reason(tmp_path: Path) -> None:
    router = Router(make_config(tmp_path, routing={"min_confidence": 0.5}))
    route = router.decide(facts(predictions("complaint", "billing", confidence=0.3)))
    assert (route.disposition, route.department) == (Disposition.RECORDED, None)
    assert route.explain() == (
        "not forwarded: low confidence: complaint 0.30; no review department configured"
    )


def test_an_abstaining_model_sends_to_review(router: Router) -> None:
    guesses = predictions("complaint", "billing")
    guesses["area"] = Prediction("billing", 0.9, abstained=True)
    route = router.decide(facts(guesses))
    assert route.department == "review"
    assert route.reasons == (reason("out_of_scope", label="billing", confidence=0.9),)
