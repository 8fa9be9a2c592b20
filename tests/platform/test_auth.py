"""Sign-in and tokens against real PostgreSQL: login, /me, refresh rotation and reuse,
logout, tenant switch, hostile tokens, key rotation and JWKS, throttling, TOTP."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import pyotp
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, OKPKey, RSAKey
from sqlalchemy import select, text

from dentalpin.platform._tables import audit_log, refresh_tokens
from dentalpin.platform._tokens import ALGORITHM, AUDIENCE, keyring, rotate_keys
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import (
    PASSWORD,
    add_member,
    bearer,
    client,
    code,
    host_of,
    make_user,
    session,
    totp_secret,
)

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/me"
REMINDERS = "/api/v1/recall/reminders"


@pytest.fixture(scope="module")
async def clinic(platform):
    return await create_tenant(platform, unique_slug("auth"), modules=["recall"])


@pytest.fixture(scope="module")
async def other_clinic(platform):
    return await create_tenant(platform, unique_slug("auth-b"), modules=["recall"])


async def audit_actions(platform, **where):
    async with platform.db.engine.connect() as conn:
        query = select(audit_log.c.action).order_by(audit_log.c.id)
        for column, value in where.items():
            query = query.where(audit_log.c[column] == value)
        return list((await conn.execute(query)).scalars())


def segments(token: str) -> tuple[dict, dict]:
    def part(s: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

    head, body, _ = token.split(".")
    return part(head), part(body)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# Login and /me -----------------------------------------------------------------------


async def test_login_returns_tokens_and_me_reads_permissions_from_the_database(platform, clinic):
    user = await make_user(platform, email=f"Recep-{uuid.uuid4().hex[:6]}@Example.ES")
    await add_member(platform, clinic, user, ["receptionist"])
    async with client(platform) as http:
        # E-mail is case-insensitive.
        response = await http.post(
            LOGIN, json={"email": user.email.upper(), "password": PASSWORD, "tenant": clinic.slug}
        )
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == platform.settings.access_token_ttl_s
        assert body["refresh_token"].startswith("dprt_")
        header, claims = segments(body["access_token"])
        assert header["alg"] == ALGORITHM and header["typ"] == "at+jwt" and header["kid"]
        assert claims["sub"] == str(user.id) and claims["tenant"] == str(clinic.id)
        assert claims["aud"] == AUDIENCE and claims["exp"] > claims["iat"] and claims["jti"]
        assert "permissions" not in claims and "roles" not in claims

        me = await http.get(ME, headers=bearer(body["access_token"]))
        assert me.status_code == 200, me.text
        data = me.json()
        assert data["user"]["email"] == user.email
        assert data["tenant"]["slug"] == clinic.slug
        assert data["roles"] == ["receptionist"]
        # (Only the fixtures' part: recall pulled in patients, and new clinics get the
        # auto-install modules too.)
        fixtures = {"fx_people", "recall"}
        assert [p for p in data["permissions"] if p.split(".")[0] in fixtures] == [
            "fx_people.person.read",
            "recall.reminder.read",
            "recall.reminder.write",
        ]
        assert "patients.patient.read" in data["permissions"]
        navigation = [(n["module"], n["path"], n["permission"]) for n in data["navigation"]]
        assert [n for n in navigation if n[0] in fixtures] == [
            ("fx_people", "/people", "fx_people.person.read"),
            ("recall", "/recall", "recall.reminder.read"),
        ]
        # The token works on the clinic's host and on the bare API host alike.
        for host in (host_of(clinic), "localhost"):
            ok = await http.get(REMINDERS, headers={**bearer(body["access_token"]), "host": host})
            assert ok.status_code == 200, (host, ok.text)
    assert "login.succeeded" in await audit_actions(platform, tenant_id=clinic.id)


async def test_permissions_follow_the_database_not_the_token(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["receptionist"])
    pair = await session(platform, user, clinic)
    async with client(platform, host_of(clinic)) as http:
        assert (await http.get(REMINDERS, headers=bearer(pair))).status_code == 200
        async with platform.db.engine.begin() as conn:
            await conn.execute(
                text(
                    "update platform.membership_roles set role = 'dentist'"
                    " where user_id = :u and tenant_id = :t"
                ),
                {"u": user.id, "t": clinic.id},
            )
        # Same token, fewer permissions: refused at once.
        assert (await http.get(REMINDERS, headers=bearer(pair))).status_code == 403
        async with platform.db.engine.begin() as conn:
            await conn.execute(
                text("delete from platform.memberships where user_id = :u and tenant_id = :t"),
                {"u": user.id, "t": clinic.id},
            )
        gone = await http.get(ME, headers=bearer(pair))
        assert gone.status_code == 403 and gone.json()["type"].endswith("/not-a-member")


async def test_wrong_password_and_unknown_account_look_the_same(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["dentist"])
    async with client(platform) as http:
        wrong = await http.post(LOGIN, json={"email": user.email, "password": "nope-nope-nope"})
        nobody = await http.post(
            LOGIN, json={"email": "nobody-here@example.es", "password": "nope-nope-nope"}
        )
    for response in (wrong, nobody):
        assert response.status_code == 401
        assert response.json()["type"].endswith("/invalid-credentials")
        assert response.json()["detail"] == "wrong e-mail or password"
        assert "access_token" not in response.text
    async with platform.db.engine.connect() as conn:
        targets = set(
            (
                await conn.execute(
                    select(audit_log.c.target).where(audit_log.c.action == "login.failed")
                )
            ).scalars()
        )
    assert {user.email, "nobody-here@example.es"} <= targets


async def test_login_needs_a_membership_and_asks_which_clinic(platform, clinic, other_clinic):
    loner = await make_user(platform)
    both = await make_user(platform)
    await add_member(platform, clinic, both, ["receptionist"])
    await add_member(platform, other_clinic, both, ["dentist"])
    async with client(platform) as http:
        response = await http.post(LOGIN, json={"email": loner.email, "password": PASSWORD})
        assert response.status_code == 403
        response = await http.post(
            LOGIN, json={"email": loner.email, "password": PASSWORD, "tenant": clinic.slug}
        )
        assert response.status_code == 403
        response = await http.post(LOGIN, json={"email": both.email, "password": PASSWORD})
        assert response.status_code == 422
        assert clinic.slug in response.json()["detail"]


# Refresh, logout, switch ---------------------------------------------------------------


async def test_refresh_rotates_and_reuse_revokes_the_whole_family(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["receptionist"])
    first = await session(platform, user, clinic)
    async with client(platform) as http:
        response = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": first.refresh_token}
        )
        assert response.status_code == 200, response.text
        second = response.json()
        assert second["refresh_token"] != first.refresh_token
        assert (await http.get(ME, headers=bearer(second["access_token"]))).status_code == 200

        # The spent token is presented again (stolen copy): everything of the session dies.
        reuse = await http.post("/api/v1/auth/refresh", json={"refresh_token": first.refresh_token})
        assert reuse.status_code == 401
        again = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}
        )
        assert again.status_code == 401
        assert (await http.get(ME, headers=bearer(second["access_token"]))).status_code == 401
        assert (await http.get(ME, headers=bearer(first))).status_code == 401
        unknown = await http.post("/api/v1/auth/refresh", json={"refresh_token": "dprt_forged"})
        assert unknown.status_code == 401
    async with platform.db.engine.connect() as conn:
        stored = list(
            (
                await conn.execute(
                    select(refresh_tokens.c.token_hash, refresh_tokens.c.revoked_at).where(
                        refresh_tokens.c.user_id == user.id
                    )
                )
            ).all()
        )
    assert len(stored) == 2 and all(r.revoked_at is not None for r in stored)
    # Stored hashed: neither token appears in the table.
    assert all(len(r.token_hash) == 64 and "dprt_" not in r.token_hash for r in stored)
    assert "token.reuse_detected" in await audit_actions(platform, actor_id=user.id)


async def test_logout_ends_the_session(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["receptionist"])
    pair = await session(platform, user, clinic)
    other = await session(platform, user, clinic)
    async with client(platform) as http:
        assert (await http.post("/api/v1/auth/logout")).status_code == 401
        assert (await http.post("/api/v1/auth/logout", headers=bearer(pair))).status_code == 204
        assert (await http.get(ME, headers=bearer(pair))).status_code == 401
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": pair.refresh_token}
        )
        assert refreshed.status_code == 401
        # Another session of the same user is untouched.
        assert (await http.get(ME, headers=bearer(other))).status_code == 200


async def test_tenant_switch(platform, clinic, other_clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["receptionist"])
    await add_member(platform, other_clinic, user, ["dentist"])
    third = await create_tenant(platform, unique_slug("auth-c"))
    pair = await session(platform, user, clinic, mfa=False)
    async with client(platform) as http:
        response = await http.post(
            "/api/v1/auth/switch", json={"tenant": other_clinic.slug}, headers=bearer(pair)
        )
        assert response.status_code == 200, response.text
        switched = response.json()
        me = (await http.get(ME, headers=bearer(switched["access_token"]))).json()
        assert me["tenant"]["slug"] == other_clinic.slug and me["roles"] == ["dentist"]
        assert {m["slug"] for m in me["memberships"]} == {clinic.slug, other_clinic.slug}
        refused = await http.post(
            "/api/v1/auth/switch", json={"tenant": third.slug}, headers=bearer(pair)
        )
        assert refused.status_code == 403
        # The new token is for the other clinic only.
        wrong_host = await http.get(
            REMINDERS, headers={**bearer(switched["access_token"]), "host": host_of(clinic)}
        )
        assert wrong_host.status_code == 403


async def test_changing_the_password_ends_every_session(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["receptionist"])
    pair = await session(platform, user, clinic)
    await asyncio.sleep(1.1)  # iat has a one-second resolution
    async with client(platform) as http:
        weak = await http.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "short"},
            headers=bearer(pair),
        )
        assert weak.status_code == 422
        wrong = await http.post(
            "/api/v1/auth/password",
            json={"current_password": "not it at all", "new_password": "a much better one"},
            headers=bearer(pair),
        )
        assert wrong.status_code == 401
        ok = await http.post(
            "/api/v1/auth/password",
            json={"current_password": PASSWORD, "new_password": "a much better one"},
            headers=bearer(pair),
        )
        assert ok.status_code == 204
        assert (await http.get(ME, headers=bearer(pair))).status_code == 401
        login = await http.post(LOGIN, json={"email": user.email, "password": "a much better one"})
        assert login.status_code == 200


# Hostile tokens ----------------------------------------------------------------------


async def test_hostile_tokens_are_refused(platform, clinic, other_clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["admin"])
    pair = await session(platform, user, clinic)
    ring = await keyring(platform)
    good_header, good_claims = segments(pair.access_token)
    now = int(time.time())

    def signed(header: dict, claims: dict, key=None, algorithms=(ALGORITHM,)) -> str:
        return jwt.encode(header, claims, key or ring.signing, algorithms=list(algorithms))

    stranger = OKPKey.generate_key("Ed25519")
    rsa = RSAKey.generate_key(2048)
    public_as_secret = OctKey.import_key(json.dumps(ring.jwks[-1]).encode())
    bad = {
        "expired": signed(good_header, {**good_claims, "iat": now - 4000, "exp": now - 3000}),
        "forged (other key, same kid)": signed(good_header, good_claims, stranger),
        "unknown kid": signed({**good_header, "kid": "nope"}, good_claims, stranger),
        "no kid": signed({"alg": ALGORITHM, "typ": "at+jwt"}, good_claims),
        "alg none": f"{b64({**good_header, 'alg': 'none'})}.{b64(good_claims)}.",
        "alg none unsigned": f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(good_claims)}.",
        "HS256 with the public key": signed(
            {**good_header, "alg": "HS256"}, good_claims, public_as_secret, ("HS256",)
        ),
        "RS256 own key": signed({**good_header, "alg": "RS256"}, good_claims, rsa, ("RS256",)),
        "wrong audience": signed(good_header, {**good_claims, "aud": "someone-else"}),
        "wrong issuer": signed(good_header, {**good_claims, "iss": "https://evil.example"}),
        "not an access token": signed({**good_header, "typ": "JWT"}, good_claims),
        "no expiry": signed(good_header, {k: v for k, v in good_claims.items() if k != "exp"}),
        "tampered tenant": ".".join(
            [
                pair.access_token.split(".")[0],
                b64({**good_claims, "tenant": str(other_clinic.id)}),
                pair.access_token.split(".")[2],
            ]
        ),
        "garbage": "abc.def.ghi",
        "huge": "a." + "b" * 10000 + ".c",
    }
    async with client(platform) as http:
        assert (await http.get(ME, headers=bearer(pair))).status_code == 200
        for name, token in bad.items():
            response = await http.get(ME, headers=bearer(token))
            assert response.status_code == 401, (name, response.text)
            assert response.headers["www-authenticate"].lower().startswith("bearer")
        for header in ("Basic dXNlcjpwYXNz", "Bearer", "Token abc"):
            response = await http.get(ME, headers={"authorization": header})
            assert response.status_code == 401, header
        # A valid token of clinic A on clinic B's host.
        response = await http.get(
            REMINDERS, headers={**bearer(pair), "host": host_of(other_clinic)}
        )
        assert response.status_code == 403


async def test_key_rotation_keeps_old_tokens_valid_until_they_expire(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["receptionist"])
    before = await session(platform, user, clinic)
    old_kid = segments(before.access_token)[0]["kid"]
    new_kid = await rotate_keys(platform)
    after = await session(platform, user, clinic)
    assert segments(after.access_token)[0]["kid"] == new_kid != old_kid
    async with client(platform) as http:
        keys = (await http.get("/.well-known/jwks.json")).json()["keys"]
        assert {old_kid, new_kid} <= {k["kid"] for k in keys}
        assert all(set(k) == {"kty", "crv", "x", "kid", "alg", "use"} for k in keys)  # no "d"
        assert (await http.get(ME, headers=bearer(before))).status_code == 200
        assert (await http.get(ME, headers=bearer(after))).status_code == 200
        # Once the old key retired longer ago than a token lives, it is gone and so are its tokens.
        async with platform.db.engine.begin() as conn:
            await conn.execute(
                text(
                    "update platform.signing_keys set retired_at = now() - interval '1 day'"
                    " where kid = :kid"
                ),
                {"kid": old_kid},
            )
        platform.state.pop("signing_keys", None)
        keys = (await http.get("/.well-known/jwks.json")).json()["keys"]
        assert old_kid not in {k["kid"] for k in keys}
        assert (await http.get(ME, headers=bearer(before))).status_code == 401
        assert (await http.get(ME, headers=bearer(after))).status_code == 200


async def test_private_keys_are_stored_encrypted(platform):
    await keyring(platform)
    async with platform.db.engine.connect() as conn:
        stored = list(
            (await conn.execute(text("select private_key from platform.signing_keys"))).scalars()
        )
    assert stored and all("PRIVATE KEY" not in s for s in stored)


# Throttling --------------------------------------------------------------------------


async def test_brute_force_on_an_account_gets_growing_delays_not_a_lockout(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["receptionist"])
    wrong = {"email": user.email, "password": "guess-guess-guess"}
    async with client(platform) as http:
        for _ in range(5):
            assert (await http.post(LOGIN, json=wrong)).status_code == 401
        # The fifth failure costs a wait; meanwhile even the right password is not checked.
        blocked = await http.post(LOGIN, json={**wrong, "password": PASSWORD})
        assert blocked.status_code == 429, blocked.text
        assert blocked.json()["type"].endswith("/too-many-attempts")
        assert int(blocked.headers["retry-after"]) >= 1
        await asyncio.sleep(int(blocked.headers["retry-after"]) + 0.1)
        assert (await http.post(LOGIN, json=wrong)).status_code == 401
        second = await http.post(LOGIN, json=wrong)
        assert second.status_code == 429
        assert int(second.headers["retry-after"]) >= int(blocked.headers["retry-after"])
        await asyncio.sleep(int(second.headers["retry-after"]) + 0.1)
        # Not a lockout: the owner gets in once the delay is over, and that clears it.
        ok = await http.post(LOGIN, json={**wrong, "password": PASSWORD})
        assert ok.status_code == 200, ok.text
        assert (await http.post(LOGIN, json=wrong)).status_code == 401


async def test_brute_force_from_one_address_is_throttled_across_accounts(platform):
    async with client(platform, ip="192.0.2.77") as http:
        statuses = []
        for n in range(21):
            response = await http.post(
                LOGIN, json={"email": f"spray-{n}@example.es", "password": "Winter2026!!"}
            )
            statuses.append(response.status_code)
        assert statuses[:20] == [401] * 20
        assert statuses[20] == 429
        assert int(response.headers["retry-after"]) >= 1
    # Another address is not affected.
    async with client(platform, ip="192.0.2.78") as http:
        response = await http.post(
            LOGIN, json={"email": "spray-0@example.es", "password": "Winter2026!!"}
        )
        assert response.status_code == 401


async def test_concurrent_guesses_are_counted_one_by_one(platform):
    user = await make_user(platform)
    async with client(platform) as http:
        responses = await asyncio.gather(
            *(
                http.post(LOGIN, json={"email": user.email, "password": f"guess-{n}-xxxxx"})
                for n in range(12)
            )
        )
    statuses = sorted(r.status_code for r in responses)
    # Five free failures at most; the rest waited their turn and found the delay.
    assert statuses.count(401) <= 6 and statuses.count(429) >= 6, statuses


# Second factor -----------------------------------------------------------------------


async def test_admins_must_enrol_and_then_use_totp(platform, clinic):
    admin = await make_user(platform)
    await add_member(platform, clinic, admin, ["admin"])
    creds = {"email": admin.email, "password": PASSWORD, "tenant": clinic.slug}
    async with client(platform) as http:
        challenge = await http.post(LOGIN, json=creds)
        assert challenge.status_code == 401
        assert challenge.json()["type"].endswith("/mfa-enrolment-required")
        assert "access_token" not in challenge.json()
        mfa_token = challenge.json()["mfa_token"]
        enrol = await http.post("/api/v1/auth/mfa/enrol", json={"mfa_token": mfa_token})
        assert enrol.status_code == 200, enrol.text
        assert enrol.json()["otpauth_uri"].startswith("otpauth://totp/")
        secret = enrol.json()["secret"]
        assert secret == await totp_secret(platform, admin.id)
        wrong = await http.post(
            "/api/v1/auth/mfa/enrol/confirm", json={"mfa_token": mfa_token, "code": "000000"}
        )
        assert wrong.status_code == 401
        done = await http.post(
            "/api/v1/auth/mfa/enrol/confirm", json={"mfa_token": mfa_token, "code": code(secret)}
        )
        assert done.status_code == 200, done.text
        assert segments(done.json()["access_token"])[1]["amr"] == ["pwd", "otp"]
        me = (await http.get(ME, headers=bearer(done.json()["access_token"]))).json()
        assert "platform.member.manage" in me["permissions"] and me["mfa"] is True
        # The challenge is single use.
        replay = await http.post(
            "/api/v1/auth/mfa/enrol/confirm", json={"mfa_token": mfa_token, "code": code(secret)}
        )
        assert replay.status_code == 401

        # Next sign-in: password, then the code.
        challenge = await http.post(LOGIN, json=creds)
        assert challenge.json()["type"].endswith("/mfa-required")
        mfa_token = challenge.json()["mfa_token"]
        # The code used for enrolment cannot be replayed.
        used = await http.post(
            "/api/v1/auth/mfa", json={"mfa_token": mfa_token, "code": code(secret)}
        )
        assert used.status_code == 401
        ok = await http.post(
            "/api/v1/auth/mfa", json={"mfa_token": mfa_token, "code": code(secret, 1)}
        )
        assert ok.status_code == 200, ok.text
        assert (await http.get(ME, headers=bearer(ok.json()["access_token"]))).status_code == 200
        # An MFA token is not an access token.
        assert (await http.get(ME, headers=bearer(mfa_token))).status_code == 401


async def test_mfa_challenge_allows_few_attempts(platform, clinic):
    secret_b32 = pyotp.random_base32()
    admin = await make_user(platform)
    await add_member(platform, clinic, admin, ["admin"])
    async with platform.db.engine.begin() as conn:
        from dentalpin.platform._passwords import fernet
        from dentalpin.platform._tables import users

        await conn.execute(
            users.update()
            .where(users.c.id == admin.id)
            .values(
                totp_secret=fernet(platform.settings, "totp").encrypt(secret_b32.encode()).decode(),
                totp_enabled_at=text("now()"),
            )
        )
    async with client(platform) as http:
        challenge = await http.post(
            LOGIN, json={"email": admin.email, "password": PASSWORD, "tenant": clinic.slug}
        )
        mfa_token = challenge.json()["mfa_token"]
        for _ in range(5):
            bad = await http.post(
                "/api/v1/auth/mfa", json={"mfa_token": mfa_token, "code": "123456"}
            )
            assert bad.status_code == 401
        late = await http.post(
            "/api/v1/auth/mfa", json={"mfa_token": mfa_token, "code": code(secret_b32)}
        )
        assert late.status_code == 401  # spent: sign in again (and face the throttle)
    assert "login.mfa_failed" in await audit_actions(platform, actor_id=admin.id)


async def test_operators_need_totp_and_get_no_clinic_permissions(platform, clinic):
    operator = await make_user(platform, operator=True)
    async with client(platform) as http:
        challenge = await http.post(LOGIN, json={"email": operator.email, "password": PASSWORD})
        assert challenge.status_code == 401
        assert challenge.json()["type"].endswith("/mfa-enrolment-required")
    pair = await session(platform, operator, None)
    async with client(platform) as http:
        me = (await http.get(ME, headers=bearer(pair))).json()
        assert me["user"]["is_operator"] is True and me["tenant"] is None
        assert me["permissions"] == [] and me["navigation"] == []
        for host in (host_of(clinic), "localhost"):
            response = await http.get(REMINDERS, headers={**bearer(pair), "host": host})
            assert response.status_code in (403, 404), response.text


async def test_second_factor_guesses_are_throttled_across_fresh_challenges(platform, clinic):
    admin = await make_user(platform)
    await add_member(platform, clinic, admin, ["admin"])
    async with platform.db.engine.begin() as conn:
        from dentalpin.platform._passwords import fernet
        from dentalpin.platform._tables import users

        await conn.execute(
            users.update()
            .where(users.c.id == admin.id)
            .values(
                totp_secret=fernet(platform.settings, "totp")
                .encrypt(pyotp.random_base32().encode())
                .decode(),
                totp_enabled_at=text("now()"),
            )
        )
    creds = {"email": admin.email, "password": PASSWORD, "tenant": clinic.slug}
    statuses = []
    async with client(platform) as http:
        for _ in range(3):
            challenge = await http.post(LOGIN, json=creds)
            statuses.append(challenge.status_code)
            if challenge.status_code != 401:
                break
            for _ in range(2):
                guess = await http.post(
                    "/api/v1/auth/mfa",
                    json={"mfa_token": challenge.json()["mfa_token"], "code": "000000"},
                )
                statuses.append(guess.status_code)
    # A right password does not reset the count of wrong codes: the sixth try waits.
    assert 429 in statuses, statuses


async def test_enrolling_while_signed_in_needs_the_password(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["dentist"])
    headers = bearer(await session(platform, user, clinic, mfa=False))
    async with client(platform) as http:
        stolen = await http.post("/api/v1/auth/mfa/enrol", json={}, headers=headers)
        assert stolen.status_code == 401
        wrong = await http.post(
            "/api/v1/auth/mfa/enrol", json={"password": "not-the-password"}, headers=headers
        )
        assert wrong.status_code == 401
        assert (
            await http.post("/api/v1/auth/mfa/enrol", json={"password": PASSWORD})
        ).status_code == 401
        ok = await http.post("/api/v1/auth/mfa/enrol", json={"password": PASSWORD}, headers=headers)
        assert ok.status_code == 200, ok.text
        confirm = await http.post(
            "/api/v1/auth/mfa/enrol/confirm",
            json={"code": code(ok.json()["secret"])},
            headers=headers,
        )
        assert confirm.status_code == 204
        # From now on this user signs in with a code too.
        login = await http.post(
            LOGIN, json={"email": user.email, "password": PASSWORD, "tenant": clinic.slug}
        )
        assert login.json()["type"].endswith("/mfa-required")


def test_production_refuses_a_missing_or_weak_secret_key():
    from pydantic import SecretStr

    from dentalpin.platform._passwords import SecretKeyMissing, fernet
    from dentalpin.platform._settings import Settings

    for secret in ("dev-insecure-secret-change-me", "CHANGE_ME"):
        with pytest.raises(SecretKeyMissing):
            fernet(Settings(environment="production", secret_key=SecretStr(secret)), "x")
    strong = Settings(environment="production", secret_key=SecretStr("s" * 40))
    token = fernet(strong, "signing-keys").encrypt(b"k")
    # Keys per purpose: a TOTP key cannot decrypt a signing key.
    with pytest.raises(Exception):  # noqa: B017
        fernet(strong, "totp").decrypt(token)
