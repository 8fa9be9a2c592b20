"""Browser-facing hardening: security headers on every response, CORS only for configured
origins, and the `__Host-` cookie web session with its CSRF protection."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from pydantic import ValidationError

from dentalpin.app import create_app
from dentalpin.platform._settings import Settings
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import (
    PASSWORD,
    add_member,
    bearer,
    code,
    host_of,
    make_user,
    random_ip,
    totp_secret,
)

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/me"
LOGOUT = "/api/v1/auth/logout"
REFRESH = "/api/v1/auth/refresh"


def http_client(platform, host: str, scheme: str = "https") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=create_app(platform), raise_app_exceptions=False, client=(random_ip(), 4321)
    )
    return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://{host}")


@pytest.fixture(scope="module")
async def clinic(platform):
    return await create_tenant(platform, unique_slug("hard"), modules=["recall"])


@pytest.fixture(scope="module")
async def other_clinic(platform):
    return await create_tenant(platform, unique_slug("hard-b"), modules=["recall"])


async def receptionist(platform, clinic):
    user = await make_user(platform)
    await add_member(platform, clinic, user, ["receptionist"])
    return user


# Security headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/api/v1/nothing-here", 404),
        ("GET", ME, 401),
        ("GET", "/api/v1/recall/reminders", 401),
        ("POST", LOGIN, 422),
        ("GET", "/.well-known/jwks.json", 200),
    ],
)
async def test_every_response_carries_the_security_headers(platform, clinic, method, path, status):
    async with http_client(platform, host_of(clinic)) as http:
        response = await http.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == status, response.text
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert headers["strict-transport-security"].startswith("max-age=63072000")


async def test_hsts_only_over_https(platform):
    async with http_client(platform, "localhost", scheme="http") as http:
        plain = await http.get("/healthz")
    assert "strict-transport-security" not in plain.headers
    assert plain.headers["x-frame-options"] == "DENY"


async def test_the_api_docs_get_a_csp_that_lets_them_load_and_nothing_else(platform):
    async with http_client(platform, "localhost") as http:
        docs = await http.get("/api/docs")
    assert docs.status_code == 200
    csp = docs.headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net" in csp
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp


# CORS -------------------------------------------------------------------------------


def with_settings(platform, **changes):
    return dataclasses.replace(platform, settings=platform.settings.model_copy(update=changes))


async def test_no_cross_origin_access_by_default(platform):
    async with http_client(platform, "localhost") as http:
        preflight = await http.options(
            ME,
            headers={
                "origin": "https://app.example.es",
                "access-control-request-method": "GET",
                "access-control-request-headers": "authorization",
            },
        )
        simple = await http.get("/healthz", headers={"origin": "https://app.example.es"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


async def test_configured_origins_and_only_those_may_call_the_api(platform):
    configured = with_settings(platform, cors_origins=["https://app.example.es"])
    async with http_client(configured, "localhost") as http:

        async def preflight(origin: str) -> httpx.Response:
            return await http.options(
                ME,
                headers={
                    "origin": origin,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization, x-csrf-token",
                },
            )

        allowed = await preflight("https://app.example.es")
        refused = await preflight("https://evil.example.es")
        simple = await http.get("/healthz", headers={"origin": "https://app.example.es"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.es"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "x-csrf-token" in allowed.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert refused.headers.get("access-control-allow-origin") != "https://evil.example.es"
    assert simple.headers["access-control-allow-origin"] == "https://app.example.es"
    assert simple.headers["x-frame-options"] == "DENY"  # hardening stays outermost


@pytest.mark.parametrize(
    "origin", ["*", "https://app.example.es/path", "app.example.es", "ftp://x"]
)
def test_a_bad_origin_setting_is_refused(origin):
    with pytest.raises(ValidationError, match="is not an origin"):
        Settings(cors_origins=[origin])


# Cookie web session -------------------------------------------------------------------


async def cookie_login(http, user, clinic) -> httpx.Response:
    response = await http.post(
        LOGIN,
        json={"email": user.email, "password": PASSWORD, "tenant": clinic.slug, "cookie": True},
    )
    assert response.status_code == 200, response.text
    return response


def cookie_attributes(response: httpx.Response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c.lower() for c in response.headers.get_list("set-cookie")}


async def test_a_cookie_login_sets_host_cookies_and_keeps_tokens_from_scripts(platform, clinic):
    user = await receptionist(platform, clinic)
    async with http_client(platform, host_of(clinic)) as http:
        response = await cookie_login(http, user, clinic)
        body = response.json()
        assert body["token_type"] == "cookie" and body["csrf_token"]
        assert "access_token" not in body and "refresh_token" not in body
        assert response.headers["cache-control"] == "no-store"
        cookies = cookie_attributes(response)
        assert set(cookies) == {"__Host-dp_access", "__Host-dp_refresh", "__Host-dp_csrf"}
        for name, attributes in cookies.items():
            assert "secure" in attributes and "path=/" in attributes
            assert "samesite=lax" in attributes and "domain=" not in attributes
            assert ("httponly" in attributes) == (name != "__Host-dp_csrf")
        assert http.cookies["__Host-dp_csrf"] == body["csrf_token"]
        me = await http.get(ME)
        assert me.status_code == 200, me.text
        assert me.json()["user"]["email"] == user.email
        reminders = await http.get("/api/v1/recall/reminders")
        assert reminders.status_code == 200, reminders.text


async def test_unsafe_cookie_requests_need_the_sessions_csrf_token(platform, clinic):
    user, other = await receptionist(platform, clinic), await receptionist(platform, clinic)
    async with http_client(platform, host_of(clinic)) as elsewhere:
        foreign_csrf = (await cookie_login(elsewhere, other, clinic)).json()["csrf_token"]
    async with http_client(platform, host_of(clinic)) as http:
        csrf = (await cookie_login(http, user, clinic)).json()["csrf_token"]
        access = http.cookies["__Host-dp_access"]
        missing = await http.post(LOGOUT)
        assert missing.status_code == 403, missing.text
        assert missing.json()["type"].endswith("/csrf-failed")
        assert "X-CSRF-Token" in missing.json()["detail"]
        # Another session's token (the double-submit is bound to the session).
        wrong = await http.post(LOGOUT, headers={"x-csrf-token": foreign_csrf})
        assert wrong.status_code == 403
        # Safe methods need none.
        assert (await http.get(ME)).status_code == 200
        done = await http.post(LOGOUT, headers={"x-csrf-token": csrf})
        assert done.status_code == 204, done.text
        cleared = cookie_attributes(done)
        assert set(cleared) == {"__Host-dp_access", "__Host-dp_refresh", "__Host-dp_csrf"}
        assert all("max-age=0" in a for a in cleared.values())
    # Whoever still holds the old cookie has a session that ended server-side.
    async with http_client(platform, host_of(clinic)) as http:
        http.cookies.set("__Host-dp_access", access)
        assert (await http.get(ME)).status_code == 401


async def test_bearer_requests_need_no_csrf_token(platform, clinic):
    user = await receptionist(platform, clinic)
    async with http_client(platform, host_of(clinic)) as http:
        login = await http.post(
            LOGIN, json={"email": user.email, "password": PASSWORD, "tenant": clinic.slug}
        )
        assert login.status_code == 200
        # No cookies were set by a bearer login.
        assert not login.headers.get_list("set-cookie")
        out = await http.post(LOGOUT, headers=bearer(login.json()["access_token"]))
    assert out.status_code == 204, out.text


async def test_a_bearer_header_wins_over_a_cookie(platform, clinic):
    cookie_user, bearer_user = (
        await receptionist(platform, clinic),
        await receptionist(platform, clinic),
    )
    async with http_client(platform, host_of(clinic)) as http:
        token = (
            await http.post(
                LOGIN,
                json={"email": bearer_user.email, "password": PASSWORD, "tenant": clinic.slug},
            )
        ).json()["access_token"]
        await cookie_login(http, cookie_user, clinic)
        me = await http.get(ME, headers=bearer(token))
    assert me.json()["user"]["email"] == bearer_user.email


async def test_a_cookie_refresh_rotates_the_cookies_under_csrf_and_detects_reuse(platform, clinic):
    user = await receptionist(platform, clinic)
    async with http_client(platform, host_of(clinic)) as http:
        csrf = (await cookie_login(http, user, clinic)).json()["csrf_token"]
        old_refresh = http.cookies["__Host-dp_refresh"]
        refused = await http.post(REFRESH, json={})
        assert refused.status_code == 403, refused.text
        renewed = await http.post(REFRESH, json={}, headers={"x-csrf-token": csrf})
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["csrf_token"] == csrf  # bound to the session, which goes on
        assert http.cookies["__Host-dp_refresh"] != old_refresh
        assert (await http.get(ME)).status_code == 200
        # The spent refresh cookie replayed (a stolen copy): the whole session is revoked.
        http.cookies.set("__Host-dp_refresh", old_refresh)
        reuse = await http.post(REFRESH, json={}, headers={"x-csrf-token": csrf})
        assert reuse.status_code == 401
        assert (await http.get(ME)).status_code == 401
    async with http_client(platform, host_of(clinic)) as http:
        assert (await http.post(REFRESH, json={})).status_code == 401  # no cookie, no token


async def test_a_session_cookie_of_clinic_a_is_refused_on_clinic_bs_host(
    platform, clinic, other_clinic
):
    user = await receptionist(platform, clinic)
    async with http_client(platform, host_of(clinic)) as http:
        await cookie_login(http, user, clinic)
        access = http.cookies["__Host-dp_access"]
    async with http_client(platform, host_of(other_clinic)) as http:
        http.cookies.set("__Host-dp_access", access)
        response = await http.get("/api/v1/recall/reminders")
    assert response.status_code == 403, response.text


async def test_an_admin_finishes_a_cookie_sign_in_with_the_second_factor(platform, clinic):
    admin = await make_user(platform)
    await add_member(platform, clinic, admin, ["admin"])
    async with http_client(platform, host_of(clinic)) as http:
        first = await http.post(
            LOGIN,
            json={
                "email": admin.email,
                "password": PASSWORD,
                "tenant": clinic.slug,
                "cookie": True,
            },
        )
        assert first.status_code == 401 and not first.headers.get_list("set-cookie")
        challenge = first.json()["mfa_token"]
        enrol = await http.post("/api/v1/auth/mfa/enrol", json={"mfa_token": challenge})
        assert enrol.status_code == 200, enrol.text
        secret = await totp_secret(platform, admin.id)
        done = await http.post(
            "/api/v1/auth/mfa/enrol/confirm",
            json={"mfa_token": challenge, "code": code(secret), "cookie": True},
        )
        assert done.status_code == 200, done.text
        assert done.json()["token_type"] == "cookie" and "access_token" not in done.json()
        me = await http.get(ME)
    assert me.status_code == 200 and me.json()["mfa"] is True
