"""The router's decisions, one rule at a time (pure logic: no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifiers.base import Prediction
from tests.helpers import make_config
from triage.routing import Router, review_reason


def predictions(
    kind: str, area: str, urgency: str = "normal", confidence: float = 0.9
) -> dict[str, Prediction]:
    return {
        "kind": Prediction(kind, confidence),
        "area": Prediction(area, confidence),
        "urgency": Prediction(urgency, confidence),
    }


@pytest.fixture
def router(tmp_path: Path) -> Router:
    config = make_config(
        tmp_path,
        routing={
            "escalation_email": "duty@dept.test",
            "review_department": "review",
            "min_confidence": 0.5,
            "rules": [{"kind": "feedback", "department": "review"}],
        },
    )
    return Router(config)


def test_complaint_goes_to_the_area_owner(router: Router) -> None:
    route = router.route(predictions("complaint", "billing"), None)
    assert route.department == "billing"
    assert route.to_addrs == ("billing@dept.test",)
    assert not route.urgent and route.cc_addrs == ()


def test_urgent_is_escalated(router: Router) -> None:
    route = router.route(predictions("complaint", "delivery", "urgent"), None)
    assert route.department == "logistics"
    assert route.urgent
    assert route.cc_addrs == ("duty@dept.test",)
    assert "urgent" in route.reason


def test_questions_are_recorded_not_forwarded(router: Router) -> None:
    route = router.route(predictions("question", "billing"), None)
    assert route.department is None
    assert "question is not a forwarded kind" in route.reason


def test_low_confidence_goes_to_review(router: Router) -> None:
    route = router.route(predictions("complaint", "billing", confidence=0.3), None)
    assert route.department == "review"
    assert "low confidence" in route.reason


def test_machine_sent_mail_is_never_forwarded(router: Router) -> None:
    route = router.route(
        predictions("complaint", "billing", "urgent"), "Auto-Submitted: auto-replied"
    )
    assert route.department is None
    assert "machine-sent" in route.reason


def test_rules_come_before_area_owners(router: Router) -> None:
    assert router.route(predictions("feedback", "billing"), None).department == "review"


def test_unowned_area_and_missing_model_go_to_review(router: Router) -> None:
    assert router.route(predictions("complaint", "returns"), None).department == "review"
    assert router.route(None, None).department == "review"


def test_redirect_all_to(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        forwarding={"redirect_all_to": "me@trial.test", "directory": str(tmp_path)},
        routing={"escalation_email": "duty@dept.test"},
    )
    route = Router(config).route(predictions("complaint", "billing", "urgent"), None)
    assert route.to_addrs == ("me@trial.test",) and route.cc_addrs == ("me@trial.test",)


def test_an_abstaining_model_sends_to_review(router: Router) -> None:
    guesses = predictions("complaint", "billing")
    guesses["area"] = Prediction("billing", 0.9, abstained=True)
    route = router.route(guesses, None)
    assert route.department == "review" and "out of scope" in route.reason


def test_the_review_reason_reads_back_without_brackets(router: Router) -> None:
    calm = router.route(predictions("complaint", "billing", confidence=0.3), None)
    urgent = router.route(predictions("complaint", "returns", "urgent"), None)
    assert review_reason(calm.reason) == "low confidence: complaint 0.30"
    assert review_reason(urgent.reason) == "no department owns area 'returns'; urgent"
