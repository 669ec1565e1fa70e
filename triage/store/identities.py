"""One customer, many channels: identities linked by the admin share a person.

The history and the "earlier requests" of a forward cover every identity of the person, so a
complaint on X shows the emails that came before it.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from triage.errors import TriageError
from triage.store.database import Database
from triage.store.schema import Customer

PERSON_KEY = "person_key"
"""The bound parameter of `same_person`, set to what `person_of` returns."""


def person_of(session: Session, customer_id: int) -> tuple[bool, int]:
    """(linked, key): the person id of a customer linked to other identities, else
    (False, its own id)."""
    customer = session.get(Customer, customer_id)  # from the session's identity map when loaded
    if customer is None or customer.person_id is None:
        return False, customer_id
    return True, customer.person_id


def same_person(linked: bool) -> ColumnElement[bool]:
    """A condition on ``Customer`` matching every identity of a person; its key is the bound
    parameter PERSON_KEY, so a statement built on it is built once, not for every customer."""
    return (Customer.person_id if linked else Customer.id) == bindparam(PERSON_KEY)


def find(session: Session, address: str) -> list[Customer]:
    """Identities matching an email address or a handle (with or without the leading @)."""
    wanted = address.strip().lower()
    handles = {wanted, wanted if wanted.startswith("@") else f"@{wanted}"}
    return list(session.scalars(select(Customer).where(func.lower(Customer.address).in_(handles))))


def link(db: Database, first: str, second: str) -> list[Customer]:
    """Join the identities of ``first`` and ``second`` (and all already linked to them).

    Raises:
        TriageError: one of them is not known.
    """
    with db.transaction() as session:
        groups = []
        for address in (first, second):
            found = find(session, address)
            if not found:
                raise TriageError(f"no customer {address!r} is known; see `triage history`")
            groups.extend(found)
        persons = {c.person_id for c in groups if c.person_id is not None}
        ids = {c.id for c in groups}
        members = session.scalars(
            select(Customer).where(or_(Customer.id.in_(ids), Customer.person_id.in_(persons)))
        ).all()
        person = min(c.id for c in members)
        session.execute(
            update(Customer)
            .where(Customer.id.in_([c.id for c in members]))
            .values(person_id=person)
        )
        return identities(session, person)


def customer_ids(session: Session, address: str) -> list[int]:
    """Every identity of the person (or persons) behind ``address``."""
    found = find(session, address)
    persons = {c.person_id for c in found if c.person_id is not None}
    linked = session.scalars(select(Customer.id).where(Customer.person_id.in_(persons)))
    return sorted({c.id for c in found} | set(linked))


def identities(session: Session, person: int) -> list[Customer]:
    return list(
        session.scalars(select(Customer).where(Customer.person_id == person).order_by(Customer.id))
    )
