"""Groups, the postcode districts each owns, and organisers with their memberships: the one
writer of ``groups``, ``group_areas``, ``organisers`` and ``organiser_groups``.

A district belongs to at most one group (it is the key of ``group_areas``); a task goes to the
group owning its district, decided when the queue is read, so changing a group's areas
re-routes its open tasks at once. The caller owns the session.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from consumers.organising.accounts import end_sessions_of
from consumers.organising.passwords import hash_password
from consumers.organising.rules import (
    ACTIVE,
    Acting,
    Membership,
    NotFound,
    Refused,
    district,
    name_id,
)
from consumers.organising.tasks import release_all
from infra.db import FollowUpTask, Group, GroupArea, Organiser, OrganiserGroup


def acting(session: Session, organiser_id: str) -> Acting:
    """The organiser ``organiser_id`` with their memberships; NotFound when there is none,
    Refused when they are disabled."""
    row = session.get(Organiser, organiser_id)
    if row is None:
        raise NotFound(f"no organiser {organiser_id!r}")
    if row.disabled:
        raise Refused(f"organiser {organiser_id!r} is disabled")
    memberships = session.execute(
        select(OrganiserGroup.group_id, OrganiserGroup.lead)
        .where(OrganiserGroup.organiser_id == organiser_id)
        .order_by(OrganiserGroup.group_id)
    ).all()
    return Acting(
        row.organiser_id,
        row.name,
        row.is_admin,
        tuple(Membership(group_id, lead) for group_id, lead in memberships),
    )


# --- groups and areas -------------------------------------------------------------------------


class GroupView(BaseModel):
    group_id: str
    name: str
    districts: list[str]
    organisers: list[str]
    leads: list[str]
    open_tasks: int


def add_group(
    session: Session,
    group_id: str,
    name: str,
    areas: Sequence[str],
    now: datetime,
    *,
    move: bool = False,
) -> GroupView:
    """A new group owning ``areas`` (districts); ValueError if the id is taken or invalid, or
    a district is another group's (unless ``move``)."""
    group_id = name_id(group_id, "group")
    if not name.strip():
        raise ValueError("a group needs a name")
    if session.get(Group, group_id) is not None:
        raise ValueError(f"group {group_id!r} exists already")
    session.add(Group(group_id=group_id, name=name.strip()[:100], created_at=now))
    session.flush()
    set_areas(session, group_id, areas, now, move=move)
    return group_view(session, group_id)


def set_areas(
    session: Session, group_id: str, areas: Sequence[str], now: datetime, *, move: bool = False
) -> GroupView:
    """Make ``areas`` exactly the districts the group owns. Open tasks follow at once: routing
    is read from here. A district another group owns is refused (ValueError naming it) unless
    ``move``, which takes it from that group."""
    if session.get(Group, group_id) is None:
        raise NotFound(f"no group {group_id!r}")
    wanted = [district(a) for a in areas]
    owners = dict(
        session.execute(
            select(GroupArea.district, GroupArea.group_id).where(GroupArea.district.in_(wanted))
        ).all()
    )
    taken = {d: g for d, g in owners.items() if g != group_id}
    if taken and not move:
        listed = ", ".join(f"{d} ({g})" for d, g in sorted(taken.items()))
        raise ValueError(f"owned by another group: {listed}; give --move to take them")
    session.execute(
        delete(GroupArea).where(GroupArea.group_id == group_id, GroupArea.district.not_in(wanted))
    )
    if taken:
        session.execute(delete(GroupArea).where(GroupArea.district.in_(list(taken))))
    for value in wanted:
        if owners.get(value) != group_id:
            session.add(GroupArea(district=value, group_id=group_id, assigned_at=now))
    session.flush()
    return group_view(session, group_id)


def change_areas(
    session: Session,
    group_id: str,
    now: datetime,
    *,
    exactly: Sequence[str] | None = None,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    move: bool = False,
) -> GroupView:
    """``set_areas`` from a change: ``exactly`` these districts (None: the current ones),
    then ``add`` and ``remove`` some."""
    current = group_view(session, group_id).districts
    wanted = [district(d) for d in exactly] if exactly is not None else current
    wanted += [d for d in map(district, add) if d not in wanted]
    gone = {district(d) for d in remove}
    return set_areas(session, group_id, [d for d in wanted if d not in gone], now, move=move)


def districts_of(session: Session, group_ids: Iterable[str]) -> list[str]:
    """The districts these groups own, sorted."""
    ids = list(group_ids)
    if not ids:
        return []
    return list(
        session.scalars(
            select(GroupArea.district)
            .where(GroupArea.group_id.in_(ids))
            .order_by(GroupArea.district)
        )
    )


def group_view(session: Session, group_id: str) -> GroupView:
    group = session.get(Group, group_id)
    if group is None:
        raise NotFound(f"no group {group_id!r}")
    return _views(session, [group])[0]


def list_groups(session: Session) -> list[GroupView]:
    """Every group with its districts, organisers (leads among them) and open tasks."""
    return _views(session, list(session.scalars(select(Group).order_by(Group.group_id))))


def _views(session: Session, groups: Sequence[Group]) -> list[GroupView]:
    ids = [g.group_id for g in groups]
    areas: dict[str, list[str]] = {}
    for value, group_id in session.execute(
        select(GroupArea.district, GroupArea.group_id)
        .where(GroupArea.group_id.in_(ids))
        .order_by(GroupArea.district)
    ):
        areas.setdefault(group_id, []).append(value)
    members: dict[str, list[tuple[str, bool]]] = {}
    for organiser_id, group_id, lead in session.execute(
        select(OrganiserGroup.organiser_id, OrganiserGroup.group_id, OrganiserGroup.lead)
        .join(Organiser, Organiser.organiser_id == OrganiserGroup.organiser_id)
        .where(OrganiserGroup.group_id.in_(ids), Organiser.disabled.is_(False))
        .order_by(OrganiserGroup.organiser_id)
    ):
        members.setdefault(group_id, []).append((organiser_id, lead))
    counts = dict(
        session.execute(
            select(GroupArea.group_id, func.count(FollowUpTask.task_id))
            .join(FollowUpTask, FollowUpTask.district == GroupArea.district)
            .where(GroupArea.group_id.in_(ids), FollowUpTask.status.in_(ACTIVE))
            .group_by(GroupArea.group_id)
        ).all()
    )
    return [
        GroupView(
            group_id=g.group_id,
            name=g.name,
            districts=areas.get(g.group_id, []),
            organisers=[o for o, _ in members.get(g.group_id, [])],
            leads=[o for o, lead in members.get(g.group_id, []) if lead],
            open_tasks=counts.get(g.group_id, 0),
        )
        for g in groups
    ]


class NationalQueue(BaseModel):
    """Open tasks no group owns: their district is nobody's, or unknown (no postcode)."""

    open_tasks: int
    districts: dict[str, int]
    """Open tasks per unowned district; ``"-"``: no district known."""


def national_summary(session: Session) -> NationalQueue:
    owned = select(GroupArea.district)
    rows = session.execute(
        select(FollowUpTask.district, func.count())
        .where(
            FollowUpTask.status.in_(ACTIVE),
            (FollowUpTask.district.is_(None)) | (FollowUpTask.district.not_in(owned)),
        )
        .group_by(FollowUpTask.district)
    ).all()
    per = {(d or "-"): int(n) for d, n in rows}
    return NationalQueue(open_tasks=sum(per.values()), districts=dict(sorted(per.items())))


# --- organisers -------------------------------------------------------------------------------


class OrganiserView(BaseModel):
    organiser_id: str
    name: str
    is_admin: bool
    disabled: bool
    groups: list[str]
    leads: list[str]
    password_set: bool = False
    """False: they cannot sign in until ``set_password``."""


def add_organiser(
    session: Session,
    organiser_id: str,
    name: str,
    groups: Sequence[str],
    now: datetime,
    *,
    leads: Sequence[str] = (),
    is_admin: bool = False,
) -> OrganiserView:
    """A new organiser in ``groups``, leading ``leads`` (groups they also belong to).
    ValueError for a taken or invalid id or an unknown group. No password is set
    (``set_password``): until one is, they cannot sign in."""
    organiser_id = name_id(organiser_id, "organiser")
    if not name.strip():
        raise ValueError("an organiser needs a name")
    if session.get(Organiser, organiser_id) is not None:
        raise ValueError(f"organiser {organiser_id!r} exists already")
    member = list(dict.fromkeys([*groups, *leads]))
    known = set(session.scalars(select(Group.group_id).where(Group.group_id.in_(member))))
    unknown = [g for g in member if g not in known]
    if unknown:
        raise ValueError(f"no such group: {', '.join(unknown)}")
    session.add(
        Organiser(
            organiser_id=organiser_id,
            name=name.strip()[:100],
            is_admin=is_admin,
            disabled=False,
            created_at=now,
        )
    )
    session.flush()
    for group_id in member:
        session.add(
            OrganiserGroup(organiser_id=organiser_id, group_id=group_id, lead=group_id in leads)
        )
    session.flush()
    return _organiser_views(session, [organiser_id])[0]


def disable_organiser(session: Session, organiser_id: str, now: datetime) -> OrganiserView:
    """Stop an organiser from doing anything; their claims are released at once (recorded)
    and their sessions end (they are signed out everywhere)."""
    row = session.get(Organiser, organiser_id)
    if row is None:
        raise NotFound(f"no organiser {organiser_id!r}")
    if not row.disabled:
        row.disabled, row.disabled_at = True, now
        release_all(session, organiser_id, now, "admin")
    end_sessions_of(session, organiser_id)
    session.flush()
    return _organiser_views(session, [organiser_id])[0]


def set_password(session: Session, organiser_id: str, password: str, now: datetime) -> None:
    """Set an organiser's password (at least ``passwords.MIN_LENGTH`` characters; ValueError
    naming the field otherwise), stored as an argon2id hash, never in clear. Their existing
    sessions end: whoever knew the old password is signed out. NotFound for nobody."""
    row = session.get(Organiser, organiser_id)
    if row is None:
        raise NotFound(f"no organiser {organiser_id!r}")
    row.password_hash = hash_password(password)
    end_sessions_of(session, organiser_id)
    session.flush()


def list_organisers(session: Session) -> list[OrganiserView]:
    return _organiser_views(
        session, list(session.scalars(select(Organiser.organiser_id).order_by("organiser_id")))
    )


def _organiser_views(session: Session, ids: Sequence[str]) -> list[OrganiserView]:
    memberships: dict[str, list[tuple[str, bool]]] = {}
    for organiser_id, group_id, lead in session.execute(
        select(OrganiserGroup.organiser_id, OrganiserGroup.group_id, OrganiserGroup.lead)
        .where(OrganiserGroup.organiser_id.in_(ids))
        .order_by(OrganiserGroup.group_id)
    ):
        memberships.setdefault(organiser_id, []).append((group_id, lead))
    found = session.scalars(select(Organiser).where(Organiser.organiser_id.in_(ids)))
    rows = {r.organiser_id: r for r in found}
    return [
        OrganiserView(
            organiser_id=i,
            name=rows[i].name,
            is_admin=rows[i].is_admin,
            disabled=rows[i].disabled,
            groups=[g for g, _ in memberships.get(i, [])],
            leads=[g for g, lead in memberships.get(i, []) if lead],
            password_set=bool(rows[i].password_hash),
        )
        for i in ids
        if i in rows
    ]


def require_admin(who: Acting) -> None:
    if not who.is_admin:
        raise Refused(f"organiser {who.organiser_id!r} is not an admin")
