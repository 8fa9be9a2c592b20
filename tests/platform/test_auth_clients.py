"""Resellers and OAuth2 client credentials: tokens, scopes, hostile clients, and a client
token never reaching a clinic's routes (generated from the route table)."""

from __future__ import annotations

import base64
import secrets

import pytest
from sqlalchemy import text

from dentalpin.platform._audit import CLI
from dentalpin.platform._clients import add_reseller_admin, create_client, create_reseller
from dentalpin.platform._errors import Conflict, InvalidInput, NotFound
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import PASSWORD, bearer, client, host_of, make_user
from tests.platform.test_auth import segments
from tests.platform.test_auth_isolation import GUARDED_MODULE_CASES, PLATFORM_CASES, call

TOKEN = "/api/v1/auth/token"


async def new_client(platform, scopes=("tenants:read", "usage:read")):
    name = f"Reseller {secrets.token_hex(3)}"
    async with platform.db.engine.begin() as conn:
        await create_reseller(conn, name, "pro", ctx=CLI)
        client_id, secret = await create_client(conn, "Provisioning", name, list(scopes), ctx=CLI)
    return name, client_id, secret


async def test_client_credentials_issue_a_scoped_client_token(platform):
    _, client_id, secret = await new_client(platform)
    async with client(platform) as http:
        form = await http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                "scope": "tenants:read",
            },
        )
        assert form.status_code == 200, form.text
        assert form.headers["cache-control"] == "no-store"
        body = form.json()
        assert body["token_type"] == "Bearer" and body["scope"] == "tenants:read"
        assert "refresh_token" not in body
        _, claims = segments(body["access_token"])
        assert claims["kind"] == "client" and claims["sub"] == client_id
        assert claims["tenant"] is None and claims["scope"] == "tenants:read"

        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        everything = await http.post(
            TOKEN,
            data={"grant_type": "client_credentials"},
            headers={"authorization": f"Basic {basic}"},
        )
        assert everything.status_code == 200, everything.text
        assert everything.json()["scope"] == "tenants:read usage:read"

        me = (await http.get("/api/v1/me", headers=bearer(body["access_token"]))).json()
        assert me["client"]["id"] == client_id and me["scopes"] == ["tenants:read"]
        assert me["permissions"] == [] and me["tenant"] is None


async def test_hostile_client_requests_are_refused(platform):
    _, client_id, secret = await new_client(platform)
    cases = [
        ({"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"}, 401),
        (
            {
                "grant_type": "client_credentials",
                "client_id": "dpc_0000000000000000",
                "client_secret": secret,
            },
            401,
        ),
        (
            {"grant_type": "client_credentials", "client_id": "' or 1=1 --", "client_secret": "x"},
            401,
        ),
        ({"grant_type": "client_credentials"}, 401),
        ({"grant_type": "password", "client_id": client_id, "client_secret": secret}, 400),
        (
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                "scope": "tenants:write",
            },
            400,
        ),
    ]
    async with client(platform) as http:
        for data, status in cases:
            response = await http.post(TOKEN, data=data)
            assert response.status_code == status, (data, response.text)
            assert "access_token" not in response.text
            if status == 401:
                assert response.json()["error"] == "invalid_client"
        assert (
            await http.post(TOKEN, json={"grant_type": "client_credentials"})
        ).status_code == 422
        bad_basic = await http.post(
            TOKEN,
            data={"grant_type": "client_credentials"},
            headers={"authorization": "Basic !!notbase64"},
        )
        assert bad_basic.status_code == 401

        ok = await http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        token = ok.json()["access_token"]
        async with platform.db.engine.begin() as conn:
            await conn.execute(
                text("update platform.api_clients set revoked_at = now() where id = :id"),
                {"id": client_id},
            )
        assert (await http.get("/api/v1/me", headers=bearer(token))).status_code == 401
        again = await http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        assert again.status_code == 401


async def test_guessing_a_client_secret_is_throttled(platform):
    _, client_id, _ = await new_client(platform)
    async with client(platform) as http:
        statuses = [
            (
                await http.post(
                    TOKEN,
                    data={
                        "grant_type": "client_credentials",
                        "client_id": client_id,
                        "client_secret": f"guess-{n}",
                    },
                )
            ).status_code
            for n in range(6)
        ]
    assert statuses[:5] == [401] * 5 and statuses[5] == 429


@pytest.fixture(scope="module")
async def client_token(platform):
    _, client_id, secret = await new_client(
        platform, ("tenants:read", "tenants:write", "modules:write", "usage:read")
    )
    async with client(platform) as http:
        response = await http.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
    return bearer(response.json()["access_token"])


@pytest.fixture(scope="module")
async def clinic(platform):
    return await create_tenant(platform, unique_slug("cc"), modules=["recall"])


@pytest.mark.parametrize("case", GUARDED_MODULE_CASES, ids=lambda c: c.id)
async def test_a_client_token_never_reaches_clinical_routes(platform, client_token, clinic, case):
    async with client(platform) as http:
        for host in (host_of(clinic), "localhost"):
            response = await call(http, case, {**client_token, "host": host})
            assert response.status_code in (403, 404), (host, response.text)


@pytest.mark.parametrize(
    "case",
    [c for c in PLATFORM_CASES if c.path != "/api/v1/me" and c.platform_api is None],
    ids=lambda c: c.id,
)
async def test_a_client_token_has_no_clinic_administration(platform, client_token, case):
    async with client(platform) as http:
        response = await call(http, case, client_token)
    assert response.status_code in (403, 422), response.text


async def test_resellers_and_their_admins(platform):
    name = f"Dental Partners {secrets.token_hex(3)}"
    admin = await make_user(platform)
    async with platform.db.engine.begin() as conn:
        await create_reseller(conn, name, ctx=CLI)
        with pytest.raises(Conflict):
            async with conn.begin_nested():
                await create_reseller(conn, name, ctx=CLI)
        with pytest.raises(InvalidInput):
            await create_reseller(conn, "<script>", ctx=CLI)
        with pytest.raises(InvalidInput):
            await create_client(conn, "c", name, ["everything"], ctx=CLI)
        with pytest.raises(NotFound):
            await add_reseller_admin(conn, "nobody at all", admin.email, ctx=CLI)
        await add_reseller_admin(conn, name, admin.email, ctx=CLI)
    # A reseller admin signs in without a clinic, and needs a second factor.
    async with client(platform) as http:
        response = await http.post(
            "/api/v1/auth/login", json={"email": admin.email, "password": PASSWORD}
        )
    assert response.status_code == 401
    assert response.json()["type"].endswith("/mfa-enrolment-required")
