"""OpenID Connect single sign-on against a real local provider (uvicorn, RS256 ID tokens):
configuration by a clinic admin, linking, the whole flow, and hostile cases — wrong state
or nonce, another audience, a forged signature, A's provider used for B, the same e-mail
with another subject."""

from __future__ import annotations

import secrets
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from dentalpin.app import create_app
from dentalpin.platform._passwords import fernet
from dentalpin.platform._tables import audit_log, oidc_identities, oidc_providers
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import add_member, bearer, host_of, make_user, random_ip, session
from tests.platform.oidc_provider import Login, Running

PROVIDERS = "/api/v1/sso/providers"
ME = "/api/v1/me"


def browser(platform, host: str) -> httpx.AsyncClient:
    """A browser on the app over https (the `__Host-` cookies are Secure), with a cookie jar."""
    transport = httpx.ASGITransport(
        app=create_app(platform), raise_app_exceptions=False, client=(random_ip(), 4321)
    )
    return httpx.AsyncClient(transport=transport, base_url=f"https://{host}")


@pytest.fixture(scope="module")
def idp():
    running = Running()
    yield running.provider
    running.stop()


class Clinic:
    def __init__(self, tenant, admin_headers, provider_id, client_id):
        self.tenant = tenant
        self.admin = admin_headers
        self.provider_id = provider_id
        self.client_id = client_id

    @property
    def host(self) -> str:
        return host_of(self.tenant)


async def configure(platform, idp, prefix: str, **extra) -> Clinic:
    tenant = await create_tenant(platform, unique_slug(prefix), modules=["recall"])
    admin = await make_user(platform)
    await add_member(platform, tenant, admin, ["admin"])
    headers = bearer(await session(platform, admin, tenant))
    client_id, secret = idp.client()
    async with browser(platform, host_of(tenant)) as http:
        created = await http.post(
            PROVIDERS,
            json={
                "name": "Clinic login",
                "issuer": idp.issuer,
                "client_id": client_id,
                "client_secret": secret,
                **extra,
            },
            headers=headers,
        )
    assert created.status_code == 201, created.text
    return Clinic(tenant, headers, uuid.UUID(created.json()["id"]), client_id)


@pytest.fixture(scope="module")
async def clinic_a(platform, idp):
    return await configure(platform, idp, "sso-a")


@pytest.fixture(scope="module")
async def clinic_b(platform, idp):
    return await configure(platform, idp, "sso-b")


async def member(platform, clinic: Clinic, roles=("receptionist",)):
    user = await make_user(platform)
    await add_member(platform, clinic.tenant, user, list(roles))
    return user


async def to_callback(http, idp, start: httpx.Response, login: Login) -> httpx.Response:
    """Follow the provider's side of the flow like a browser, up to our callback's answer."""
    assert start.status_code in (200, 303), start.text
    url = (
        start.headers["location"] if start.status_code == 303 else start.json()["authorization_url"]
    )
    assert url.startswith(idp.issuer + "/authorize?")
    idp.next_login = login
    async with httpx.AsyncClient() as outside:
        authorized = await outside.get(url)
    assert authorized.status_code == 302, authorized.text
    back = authorized.headers["location"]
    assert urlsplit(back).path == "/api/v1/auth/sso/callback"
    return await http.get(back)


async def sign_in(platform, idp, clinic: Clinic, login: Login, host: str | None = None, **params):
    async with browser(platform, host or clinic.host) as http:
        start = await http.get(f"/api/v1/auth/sso/{clinic.provider_id}/start", params=params)
        return await to_callback(http, idp, start, login)


async def link(platform, idp, clinic: Clinic, user, login: Login) -> httpx.Response:
    pair = await session(platform, user, clinic.tenant, mfa=False)
    async with browser(platform, clinic.host) as http:
        start = await http.post(f"/api/v1/auth/sso/{clinic.provider_id}/link", headers=bearer(pair))
        return await to_callback(http, idp, start, login)


async def actions(platform, tenant_id) -> list[str]:
    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            select(audit_log.c.action).where(audit_log.c.tenant_id == tenant_id)
        )
        return list(rows.scalars())


def subject() -> str:
    return f"sub-{secrets.token_hex(6)}"


def assert_problem(response: httpx.Response, status: int, kind: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if kind:
        assert response.json()["type"].endswith("/" + kind), response.text


# Configuration -------------------------------------------------------------------------


async def test_admin_configures_a_provider_and_its_secret_is_stored_encrypted(
    platform, idp, clinic_a
):
    async with browser(platform, clinic_a.host) as http:
        listed = await http.get(PROVIDERS, headers=clinic_a.admin)
        public = await http.get("/api/v1/auth/sso")
    assert listed.status_code == 200
    [provider] = listed.json()
    assert provider["issuer"] == idp.issuer and provider["client_id"] == clinic_a.client_id
    assert "client_secret" not in provider
    assert public.json() == [{"id": str(clinic_a.provider_id), "name": "Clinic login"}]
    async with platform.db.engine.connect() as conn:
        stored = await conn.scalar(
            select(oidc_providers.c.client_secret).where(
                oidc_providers.c.id == clinic_a.provider_id
            )
        )
    secret = idp.clients[clinic_a.client_id]
    assert secret not in stored
    assert (
        fernet(platform.settings, "oidc-client-secret").decrypt(stored.encode()).decode() == secret
    )


async def test_bad_provider_configurations_are_refused_with_a_reason(platform, idp, clinic_a):
    async with browser(platform, clinic_a.host) as http:

        async def create(issuer: str, headers=clinic_a.admin):
            body = {"name": "x", "issuer": issuer, "client_id": "c", "client_secret": "s"}
            return await http.post(PROVIDERS, json=body, headers=headers)

        # Discovery names another issuer than the one configured.
        mismatch = await create(idp.issuer + "/")
        assert_problem(mismatch, 422)
        assert "configure exactly the issuer" in mismatch.json()["detail"]
        # Nothing answers there.
        assert_problem(await create("http://127.0.0.1:9"), 422)
        # Plain http to a non-loopback host.
        assert_problem(await create("http://idp.example.es"), 422)
        # A receptionist cannot configure sign-in.
        receptionist = await member(platform, clinic_a)
        refused = await create(
            idp.issuer, bearer(await session(platform, receptionist, clinic_a.tenant))
        )
        assert_problem(refused, 403)


async def test_another_clinic_cannot_see_or_remove_a_provider(platform, clinic_a, clinic_b):
    async with browser(platform, clinic_b.host) as http:
        listed = await http.get(PROVIDERS, headers=clinic_b.admin)
        removed = await http.delete(f"{PROVIDERS}/{clinic_a.provider_id}", headers=clinic_b.admin)
    assert str(clinic_a.provider_id) not in listed.text
    assert_problem(removed, 404)
    async with browser(platform, clinic_a.host) as http:
        still = await http.get(PROVIDERS, headers=clinic_a.admin)
    assert str(clinic_a.provider_id) in still.text


# The flow ----------------------------------------------------------------------------


async def test_link_then_sign_in_with_the_provider(platform, idp, clinic_a):
    user = await member(platform, clinic_a)
    sub = subject()
    linked = await link(platform, idp, clinic_a, user, Login(sub, "anyone@example.es"))
    assert linked.status_code == 200, linked.text
    # The authorization request carried state, nonce and an S256 PKCE challenge...
    request = idp.authorize_requests[-1]
    assert request["response_type"] == "code" and "openid" in request["scope"].split()
    assert request["state"] and request["nonce"] and request["code_challenge_method"] == "S256"
    # ...and the token request the verifier and the registered redirect URI.
    assert idp.token_requests[-1]["code_verifier"]
    assert (
        idp.token_requests[-1]["redirect_uri"]
        == f"https://{clinic_a.host}/api/v1/auth/sso/callback"
    )

    signed = await sign_in(platform, idp, clinic_a, Login(sub, "anyone@example.es"))
    assert signed.status_code == 200, signed.text
    assert signed.headers["cache-control"] == "no-store"
    body = signed.json()
    assert body["token_type"] == "Bearer" and body["refresh_token"].startswith("dprt_")
    async with browser(platform, clinic_a.host) as http:
        me = await http.get(ME, headers=bearer(body["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["user"]["id"] == str(user.id)
    assert me.json()["tenant"]["slug"] == clinic_a.tenant.slug
    async with platform.db.engine.connect() as conn:
        identity = (
            await conn.execute(select(oidc_identities).where(oidc_identities.c.subject == sub))
        ).one()
    assert identity.user_id == user.id and identity.issuer == idp.issuer
    assert identity.last_login_at is not None
    assert {"sso.linked", "login.succeeded"} <= set(await actions(platform, clinic_a.tenant.id))


async def test_a_web_sign_in_sets_host_cookies_and_redirects(platform, idp, clinic_a):
    user = await member(platform, clinic_a)
    sub = subject()
    assert (await link(platform, idp, clinic_a, user, Login(sub))).status_code == 200
    async with browser(platform, clinic_a.host) as http:
        start = await http.get(
            f"/api/v1/auth/sso/{clinic_a.provider_id}/start", params={"return_to": "/agenda?day=1"}
        )
        flow_cookie = start.headers["set-cookie"]
        assert flow_cookie.startswith("__Host-dp_sso=")
        assert all(
            p in flow_cookie.lower() for p in ("secure", "httponly", "samesite=lax", "path=/")
        )
        done = await to_callback(http, idp, start, Login(sub))
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/agenda?day=1"
        cookies = done.headers.get_list("set-cookie")
        access = next(c for c in cookies if c.startswith("__Host-dp_access="))
        assert all(p in access.lower() for p in ("secure", "httponly", "samesite=lax", "path=/"))
        assert "domain=" not in access.lower()
        csrf = next(c for c in cookies if c.startswith("__Host-dp_csrf="))
        assert "httponly" not in csrf.lower()
        me = await http.get(ME)  # the cookie jar carries the session
    assert me.status_code == 200, me.text
    assert me.json()["user"]["id"] == str(user.id)


async def test_an_admin_signing_in_with_the_provider_still_owes_a_second_factor(
    platform, idp, clinic_a
):
    admin = await member(platform, clinic_a, roles=["admin"])
    sub = subject()
    assert (await link(platform, idp, clinic_a, admin, Login(sub))).status_code in (200, 401)
    signed = await sign_in(platform, idp, clinic_a, Login(sub))
    assert_problem(signed, 401, "mfa-enrolment-required")
    assert signed.json()["mfa_token"].startswith("dpmfa_")
    assert "access_token" not in signed.text


async def test_a_web_sign_in_that_owes_a_second_factor_hands_it_to_the_page(
    platform, idp, clinic_a
):
    admin = await member(platform, clinic_a, roles=["admin"])
    sub = subject()
    await link(platform, idp, clinic_a, admin, Login(sub))
    async with browser(platform, clinic_a.host) as http:
        start = await http.get(
            f"/api/v1/auth/sso/{clinic_a.provider_id}/start", params={"return_to": "/login"}
        )
        done = await to_callback(http, idp, start, Login(sub))
    assert done.status_code == 303, done.text
    path, _, fragment = done.headers["location"].partition("#")
    assert path == "/login"
    handed = parse_qs(fragment)
    assert handed["mfa"] == ["mfa-enrolment-required"]
    assert handed["mfa_token"][0].startswith("dpmfa_")
    assert not [c for c in done.headers.get_list("set-cookie") if c.startswith("__Host-dp_access")]


# Hostile cases -----------------------------------------------------------------------


async def test_an_unknown_identity_is_refused_never_created(platform, idp, clinic_a):
    sub = subject()
    refused = await sign_in(platform, idp, clinic_a, Login(sub, "new@example.es"))
    assert_problem(refused, 403, "sso-identity-unknown")
    assert "link" in refused.json()["detail"]
    async with platform.db.engine.connect() as conn:
        found = await conn.scalar(
            select(oidc_identities.c.user_id).where(oidc_identities.c.subject == sub)
        )
    assert found is None
    assert "sso.unknown_identity" in await actions(platform, clinic_a.tenant.id)


async def test_the_same_email_with_another_subject_is_not_the_same_person(platform, idp, clinic_a):
    user = await member(platform, clinic_a)
    email = f"shared-{secrets.token_hex(3)}@example.es"
    assert (await link(platform, idp, clinic_a, user, Login(subject(), email))).status_code == 200
    # Someone else at the provider with the same address (and even the user's own e-mail).
    for address in (email, user.email):
        impostor = await sign_in(platform, idp, clinic_a, Login(subject(), address))
        assert_problem(impostor, 403, "sso-identity-unknown")


async def test_an_identity_linked_to_one_account_cannot_be_linked_to_another(
    platform, idp, clinic_a
):
    first, second = await member(platform, clinic_a), await member(platform, clinic_a)
    sub = subject()
    assert (await link(platform, idp, clinic_a, first, Login(sub))).status_code == 200
    assert_problem(await link(platform, idp, clinic_a, second, Login(sub)), 409)


async def test_a_wrong_or_missing_state_is_refused(platform, idp, clinic_a):
    user = await member(platform, clinic_a)
    sub = subject()
    await link(platform, idp, clinic_a, user, Login(sub))
    async with browser(platform, clinic_a.host) as http:
        start = await http.get(f"/api/v1/auth/sso/{clinic_a.provider_id}/start")
        idp.next_login = Login(sub)
        async with httpx.AsyncClient() as outside:
            back = (await outside.get(start.headers["location"])).headers["location"]
        query = parse_qs(urlsplit(back).query)
        code = query["code"][0]
        callback = "/api/v1/auth/sso/callback"
        for bad in ("x" + query["state"][0], "é" + query["state"][0][1:], ""):
            wrong = await http.get(callback, params={"code": code, "state": bad})
            assert_problem(wrong, 401, "sso-failed")
            assert "state" in wrong.json()["detail"]
    # The right state, but from a browser that did not start this sign-in (no flow cookie).
    async with browser(platform, clinic_a.host) as other_browser:
        stolen = await other_browser.get(
            callback, params={"code": code, "state": query["state"][0]}
        )
    assert_problem(stolen, 401, "sso-failed")


@pytest.mark.parametrize(
    ("claims", "forge", "reason"),
    [
        ({"nonce": "not-the-one-we-sent"}, False, "nonce"),
        ({"nonce": "ñ-not-ascii"}, False, "nonce"),
        ({"aud": "another-application"}, False, "audience"),
        ({"aud": ["another-application", "CLIENT"]}, False, "azp"),
        ({"iss": "https://impostor.example.es"}, False, "issuer"),
        ({"exp": 1_000_000, "iat": 999_000}, False, "lifetime"),
        ({}, True, "signature"),
    ],
    ids=[
        "wrong-nonce",
        "non-ascii-nonce",
        "other-audience",
        "multi-audience-without-azp",
        "other-issuer",
        "expired",
        "forged",
    ],
)
async def test_hostile_id_tokens_are_refused(platform, idp, clinic_a, claims, forge, reason):
    user = await member(platform, clinic_a)
    sub = subject()
    await link(platform, idp, clinic_a, user, Login(sub))
    if claims.get("aud") and isinstance(claims["aud"], list):
        claims = {"aud": [a.replace("CLIENT", clinic_a.client_id) for a in claims["aud"]]}
    refused = await sign_in(platform, idp, clinic_a, Login(sub, claims=claims, forge=forge))
    assert_problem(refused, 401, "sso-failed")
    assert reason in refused.json()["detail"]
    assert "access_token" not in refused.text


async def test_a_provider_of_clinic_a_never_signs_into_clinic_b(platform, idp, clinic_a, clinic_b):
    user = await member(platform, clinic_a)
    sub = subject()
    await link(platform, idp, clinic_a, user, Login(sub))
    # A's provider started on B's host: B has no such provider.
    async with browser(platform, clinic_b.host) as http:
        started = await http.get(f"/api/v1/auth/sso/{clinic_a.provider_id}/start")
    assert_problem(started, 404)
    # Started on A's host, the provider's answer delivered to B's host (same browser).
    async with browser(platform, clinic_a.host) as http:
        start = await http.get(f"/api/v1/auth/sso/{clinic_a.provider_id}/start")
        idp.next_login = Login(sub)
        async with httpx.AsyncClient() as outside:
            back = (await outside.get(start.headers["location"])).headers["location"]
        flow = http.cookies["__Host-dp_sso"]
    async with browser(platform, clinic_b.host) as http:
        http.cookies.set("__Host-dp_sso", flow)
        elsewhere = await http.get(f"/api/v1/auth/sso/callback?{urlsplit(back).query}")
    assert_problem(elsewhere, 403)
    # B's provider (same issuer, B's client) for a member of A only: not a member of B.
    through_b = await sign_in(platform, idp, clinic_b, Login(sub))
    assert_problem(through_b, 403, "not-a-member")
    assert "access_token" not in through_b.text


async def test_allowed_domains_restrict_who_signs_in(platform, idp):
    clinic = await configure(platform, idp, "sso-dom", allowed_domains=["Clinic.example.es"])
    user = await member(platform, clinic)
    sub = subject()
    ok = await link(platform, idp, clinic, user, Login(sub, "ana@clinic.example.es"))
    assert ok.status_code == 200, ok.text
    other = await sign_in(platform, idp, clinic, Login(sub, "ana@elsewhere.example.es"))
    assert_problem(other, 403)
    unverified = await sign_in(
        platform, idp, clinic, Login(sub, "ana@clinic.example.es", claims={"email_verified": False})
    )
    assert_problem(unverified, 403)


async def test_return_to_must_be_a_path_of_this_site(platform, clinic_a):
    async with browser(platform, clinic_a.host) as http:
        for target in ("https://evil.example", "//evil.example", "/\\evil.example", "agenda"):
            response = await http.get(
                f"/api/v1/auth/sso/{clinic_a.provider_id}/start", params={"return_to": target}
            )
            assert_problem(response, 422)


async def test_a_removed_provider_signs_nobody_in(platform, idp):
    clinic = await configure(platform, idp, "sso-rm")
    user = await member(platform, clinic)
    sub = subject()
    await link(platform, idp, clinic, user, Login(sub))
    async with browser(platform, clinic.host) as http:
        start = await http.get(f"/api/v1/auth/sso/{clinic.provider_id}/start")
        removed = await http.delete(f"{PROVIDERS}/{clinic.provider_id}", headers=clinic.admin)
        assert removed.status_code == 204
        idp.next_login = Login(sub)
        async with httpx.AsyncClient() as outside:
            back = (await outside.get(start.headers["location"])).headers["location"]
        assert_problem(await http.get(back), 404)


async def test_a_disabled_account_is_not_signed_in_by_its_provider(platform, idp, clinic_a):
    from dentalpin.platform._tables import users

    user = await member(platform, clinic_a)
    sub = subject()
    assert (await link(platform, idp, clinic_a, user, Login(sub))).status_code == 200
    async with platform.db.engine.begin() as conn:
        await conn.execute(users.update().where(users.c.id == user.id).values(disabled=True))
    refused = await sign_in(platform, idp, clinic_a, Login(sub))
    assert_problem(refused, 401, "sso-failed")
    assert "disabled" in refused.json()["detail"]


async def test_a_provider_that_stops_answering_mid_sign_in_is_a_503_not_a_crash(platform):
    """The token endpoint cannot be reached after the browser came back with its code
    (the discovery document is cached): the sign-in answers 503, so the user retries."""
    gone = Running()
    try:
        clinic = await configure(platform, gone.provider, "sso-gone")
        user = await member(platform, clinic)
        sub = subject()
        await link(platform, gone.provider, clinic, user, Login(sub))
        async with browser(platform, clinic.host) as http:
            start = await http.get(f"/api/v1/auth/sso/{clinic.provider_id}/start")
            gone.provider.next_login = Login(sub)
            async with httpx.AsyncClient() as outside:
                back = (await outside.get(start.headers["location"])).headers["location"]
            gone.stop()
            answer = await http.get(back)
    finally:
        gone.stop()
    assert_problem(answer, 503, "unavailable")
    assert "cannot be reached" in answer.json()["detail"]
