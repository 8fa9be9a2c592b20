"""A clinic's members as modules may see them. Memberships live in the platform schema,
which a tenant's database role cannot read; a module that stores a member's user id (the
agenda's professionals, who recorded a chart entry) asks here whether the id is one of
its clinic's members, and under which name."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ._runtime import Platform


@dataclass(frozen=True)
class Member:
    """A member of the clinic: never their e-mail or credentials, only who they are here."""

    user_id: uuid.UUID
    name: str
    roles: frozenset[str]


class ClinicMembers:
    """The members of one clinic (the request's, for a route: `Members`)."""

    def __init__(self, platform: Platform, tenant_id: uuid.UUID) -> None:
        self._platform = platform
        self._tenant_id = tenant_id

    async def get(self, user_id: uuid.UUID) -> Member | None:
        """The member with this user id; None for anyone else, members of other clinics and
        support access included."""
        # Identity pulls in the password hashing: not at `import dentalpin.platform`.
        from ._identity import member_roles, user_by_id

        async with self._platform.db.engine.connect() as conn:
            roles = await member_roles(conn, self._tenant_id, user_id)
            if roles is None:
                return None
            user = await user_by_id(conn, user_id)
        return Member(user_id=user.id, name=user.name, roles=frozenset(roles))
