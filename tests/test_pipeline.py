"""One poll of a Maildir source through the real pipeline: poison mail, oversized mail, no model,
and a replayed batch (as after a crash before the checkpoint was saved)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import func, select, text, update

from classifiers.model import Classifier
from connectors.base import RawItem
from tests.conftest import tiny_text
from tests.connectors.test_maildir import deliver
from tests.helpers import make_config, make_email
from triage.decide.route import Disposition, Route
from triage.intake.pipeline import _batched
from triage.intake.results import KEPT_OUTCOMES, Outcome, PollResult
from triage.store.schema import Forward, Message, SourceState, utcnow
from triage.worker.scheduler import Worker


def maildir_worker(tmp_path: Path, **maildir: object) -> Worker:
    source = {"name": "box", "type": "maildir", "path": str(tmp_path / "Maildir"), **maildir}
    worker = Worker(make_config(tmp_path, sources=[source]))
    worker.db.upgrade()
    return worker


def test_poison_message_is_quarantined_and_the_batch_goes_on(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1.empty", b"")
    deliver(box, "2.good", make_email(*tiny_text("complaint", "billing")))
    worker = maildir_worker(tmp_path)
    worker.registry.register(*tiny_model, activate=True)
    result = worker.run_once()
    assert result.polls[0].count("quarantined") == 1
    assert result.polls[0].count("stored") == 1
    assert result.outbox.sent == 1
    with worker.db.session() as session:
        poison = session.scalars(select(Message).where(Message.status == "quarantined")).one()
        assert poison.raw == b"" and "empty" in (poison.error or "").lower()


def test_oversized_message_is_recorded_and_sent_to_review(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    subject, body = tiny_text("complaint", "billing")
    deliver(tmp_path / "Maildir", "1.big", make_email(subject, body + " " + "z" * 5000))
    worker = maildir_worker(tmp_path, max_message_bytes=2048)
    worker.registry.register(*tiny_model, activate=True)
    [outcome] = worker.run_once().polls[0].outcomes
    assert outcome.route is not None and outcome.route.department == "review"
    assert outcome.route.disposition == Disposition.REVIEW
    assert [r.code for r in outcome.route.reasons] == ["oversized"]
    with worker.db.session() as session:
        message = session.scalars(select(Message)).one()
        assert message.truncated and message.size > 5000 and b"zzzz" not in message.raw


def test_a_body_that_could_not_be_read_is_sent_to_review_not_guessed(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    subject, body = tiny_text("complaint", "billing")
    nested = f"Content-Type: text/plain\n\n{body}\n"
    for depth in range(60):
        nested = (
            f'Content-Type: multipart/mixed; boundary="b{depth}"\n\n'
            f"--b{depth}\n{nested}\n--b{depth}--\n"
        )
    raw = f"From: olena@example.com\nSubject: {subject}\nMIME-Version: 1.0\n{nested}"
    deliver(tmp_path / "Maildir", "1.deep", raw.encode())
    worker = maildir_worker(tmp_path)
    worker.registry.register(*tiny_model, activate=True)
    [outcome] = worker.run_once().polls[0].outcomes
    assert outcome.route is not None and outcome.route.department == "review"
    assert "the body could not be read: MIME nesting too deep" in outcome.route.explain()


def test_without_a_model_messages_are_stored_and_sent_to_review(tmp_path: Path) -> None:
    deliver(tmp_path / "Maildir", "1.a", make_email(*tiny_text("complaint", "billing")))
    worker = maildir_worker(tmp_path)
    [outcome] = worker.run_once().polls[0].outcomes
    assert outcome.status == "stored" and outcome.predictions is None
    assert outcome.route is not None and outcome.route.department == "review"
    assert [r.code for r in outcome.route.reasons] == ["no_model"]


def test_without_a_model_the_urgency_markers_still_escalate(tmp_path: Path) -> None:
    """A broken model must not hide "urgent ... lawyer" mail among the routine reviews."""
    mail = make_email("Refund", "Urgent: I will go to court if the refund is not made today.")
    deliver(tmp_path / "Maildir", "1.a", mail)
    worker = maildir_worker(tmp_path)
    [outcome] = worker.run_once().polls[0].outcomes
    assert outcome.route is not None and outcome.route.department == "review"
    assert outcome.route.urgent and outcome.route.cc_addrs
    assert [r.code for r in outcome.route.reasons] == ["no_model"]
    assert '"court"' in (outcome.route.because() or "")


def test_a_replayed_batch_adds_nothing_twice(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    box = tmp_path / "Maildir"
    for i, kind in enumerate(("complaint", "feedback", "question")):
        deliver(box, f"{i}.m", make_email(*tiny_text(kind, "delivery")))
    worker = maildir_worker(tmp_path)
    worker.registry.register(*tiny_model, activate=True)
    first = worker.run_once()
    assert first.polls[0].count("stored") == 3 and first.outbox.sent == 2
    with worker.db.transaction() as session:  # as if the checkpoint had never been saved
        session.execute(update(SourceState).values(checkpoint=None))
    replay = worker.run_once()
    assert replay.polls[0].count("duplicate") == 3 and replay.polls[0].count("stored") == 0
    with worker.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Forward)) == 2
    assert len(list((tmp_path / "forwards").glob("*.eml"))) == 2


def test_one_mail_delivered_twice_is_stored_and_forwarded_once(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    """An MTA's retry or a second alias delivers the same mail with other trace headers."""
    mail = make_email(*tiny_text("complaint", "billing"))
    box = tmp_path / "Maildir"
    deliver(
        box, "1.first", b"Received: from mx1.example.net by mail.shop.test; 1 Dec 2026\n" + mail
    )
    again = (
        b"Delivered-To: billing@shop.test\r\nReceived: from mx2.example.net\r\n"
        b"\tby mail.shop.test; 1 Dec 2026\r\n" + mail.replace(b"\n", b"\r\n")
    )
    deliver(box, "2.again", again)
    deliver(box, "3.other", mail.replace(b"Subject: ", b"Subject: Re: "))
    worker = maildir_worker(tmp_path)
    worker.registry.register(*tiny_model, activate=True)
    poll = worker.run_once().polls[0]
    assert (poll.count("stored"), poll.count("duplicate")) == (2, 1)


def test_one_mail_sent_to_two_support_addresses_is_one_request(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    mail = make_email(*tiny_text("complaint", "billing"), headers={"Message-ID": "<cc@x.test>"})
    sources = []
    for name in ("support", "billing-box"):
        deliver(tmp_path / name, "1.a", f"Delivered-To: {name}@shop.test\n".encode() + mail)
        sources.append({"name": name, "type": "maildir", "path": str(tmp_path / name)})
    worker = Worker(make_config(tmp_path, sources=sources))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    result = worker.run_once()
    assert [(p.count("stored"), p.count("duplicate")) for p in result.polls] == [(1, 0), (0, 1)]
    assert result.outbox.sent == 1


def test_messages_stored_under_the_old_content_key_are_still_known(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    deliver(tmp_path / "Maildir", "1.a", make_email(*tiny_text("complaint", "billing")))
    worker = maildir_worker(tmp_path)
    worker.registry.register(*tiny_model, activate=True)
    assert worker.run_once().polls[0].count("stored") == 1
    with worker.db.transaction() as session:  # as an earlier build stored it
        message = session.scalars(select(Message)).one()
        message.content_key = hashlib.sha256(message.raw).hexdigest()
        session.execute(update(SourceState).values(checkpoint=None))
    assert worker.run_once().polls[0].count("duplicate") == 1


def test_a_poll_that_crashes_is_a_failed_poll_and_the_worker_goes_on(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    """A store fault (here a trigger refusing inserts, as a full disk would) must be counted,
    backed off and alerted like a server that is down, not crash the job unseen."""
    deliver(tmp_path / "Maildir", "1.a", make_email(*tiny_text("complaint", "billing")))
    worker = maildir_worker(tmp_path)
    worker.registry.register(*tiny_model, activate=True)
    with worker.db.transaction() as session:
        session.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON messages "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        )
    for streak in (1, 2):
        [poll] = [worker.poll("box")]
        assert poll.error == "poll crashed: IntegrityError: database or disk is full"
        assert poll.streak == streak
    with worker.db.transaction() as session:
        session.execute(text("DROP TRIGGER refuse"))
    recovered = worker.poll("box")
    assert recovered.error is None and recovered.recovered_from == 2
    assert recovered.count("stored") == 1


def test_a_flooding_sender_is_capped(tmp_path: Path, tiny_model: tuple[Classifier, Path]) -> None:
    box = tmp_path / "Maildir"
    for i in range(4):
        subject, body = tiny_text("complaint", "billing")
        deliver(box, f"{i}.m", make_email(f"{subject} {i}", body, sender="loop@example.com"))
    source = {"name": "box", "type": "maildir", "path": str(box)}
    routing = {
        "review_department": "review",
        "min_confidence": 0.0,
        "max_forwards_per_sender_per_hour": 2,
    }
    worker = Worker(make_config(tmp_path, sources=[source], routing=routing))
    worker.db.upgrade()
    worker.registry.register(*tiny_model, activate=True)
    result = worker.run_once()
    assert result.polls[0].count("stored") == 4
    assert result.outbox.sent == 2
    reasons = [o.route.explain() for o in result.polls[0].outcomes if o.route]
    assert sum("over 2 forwards from this sender" in reason for reason in reasons) == 2


def test_a_tampered_model_never_stops_intake(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    box = tmp_path / "Maildir"
    deliver(box, "1.a", make_email(*tiny_text("complaint", "billing")))
    worker = maildir_worker(tmp_path)
    worker.registry.register(*tiny_model, activate=True)
    artifact = tmp_path / "models" / tiny_model[0].version / "model.joblib"
    good = artifact.read_bytes()
    artifact.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    [outcome] = worker.run_once().polls[0].outcomes
    assert outcome.status == "stored" and outcome.route is not None
    assert outcome.route.department == "review"
    artifact.write_bytes(good)
    deliver(box, "2.b", make_email(*tiny_text("complaint", "delivery")))
    later = [o for o in worker.run_once().polls[0].outcomes if o.status == "stored"]
    assert [o.route.department for o in later if o.route] == ["logistics"]


def test_a_poll_result_counts_everything_but_keeps_only_the_first_outcomes() -> None:
    result = PollResult("big")
    route = Route(Disposition.FORWARDED, department="billing")
    result.add(Outcome(f"id{i}", "a@b.test", "s", "stored", route=route) for i in range(1200))
    result.add([Outcome("dup", "", "", "duplicate")])
    assert len(result.outcomes) == KEPT_OUTCOMES
    assert (result.count("stored"), result.count("duplicate"), result.forwarded) == (1200, 1, 1200)
    assert result.total == 1201


def test_a_batch_ends_early_at_its_byte_budget() -> None:
    """Mails with 20 MB attachments must not make a batch of 500 hold gigabytes."""
    now = utcnow()
    items = [(RawItem("box", f"box:{n}", b"x" * 10, now), {"n": n}) for n in range(7)]
    batches = list(_batched(items, size=5, max_bytes=25))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert [item for batch in batches for item in batch] == items


def test_a_source_another_worker_holds_is_reported_busy(tmp_path: Path) -> None:
    deliver(tmp_path / "Maildir", "1.a", make_email(*tiny_text("complaint", "billing")))
    first = maildir_worker(tmp_path)
    second = Worker(first.config, first.db, worker_id="host-b:2")
    assert second.leases.claim("box")
    busy = first.poll("box")
    assert busy.busy_with == "host-b:2" and busy.total == 0
