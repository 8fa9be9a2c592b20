"""A small real OpenID provider for the tests: discovery, JWKS, authorize, token.

It runs under uvicorn on a free loopback port, in a thread of its own. `authorize` signs in
whoever `provider.next_login` names (no login page); `token` checks the client's secret
(HTTP Basic), the code (single use, same client and redirect URI) and PKCE (S256), and
signs an RS256 ID token. Tests bend it to be hostile through `next_login`'s `claims`
(merged into the ID token: another `aud`, a wrong `nonce`...) and `forge` (sign with a key
that is not in the JWKS).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from fastapi import FastAPI, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse
from joserfc import jwt
from joserfc.jwk import RSAKey


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Login:
    subject: str
    email: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    forge: bool = False


@dataclass
class Provider:
    issuer: str
    clients: dict[str, str] = field(default_factory=dict)
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, {"kid": "idp-1"}))
    next_login: Login | None = None
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def client(self) -> tuple[str, str]:
        client_id, secret = f"client-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
        self.clients[client_id] = secret
        return client_id, secret

    def id_token(self, grant: dict[str, Any]) -> str:
        login: Login = grant["login"]
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": login.subject,
            "aud": grant["client_id"],
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            **({"email": login.email, "email_verified": True} if login.email else {}),
            **login.claims,
        }
        key = RSAKey.generate_key(2048, {"kid": "idp-1"}) if login.forge else self.key
        return jwt.encode({"alg": "RS256", "kid": "idp-1"}, claims, key)


def build_app(provider: Provider) -> FastAPI:
    app = FastAPI()

    @app.get("/.well-known/openid-configuration")
    async def discovery() -> dict[str, Any]:
        base = provider.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "email", "profile"],
        }

    @app.get("/jwks")
    async def jwks() -> dict[str, Any]:
        return {"keys": [provider.key.as_dict(private=False, kid="idp-1", alg="RS256")]}

    @app.get("/authorize")
    async def authorize(request: Request) -> Any:
        params = dict(request.query_params)
        provider.authorize_requests.append(params)
        if params.get("client_id") not in provider.clients or provider.next_login is None:
            return JSONResponse({"error": "unauthorized_client"}, status_code=400)
        code = secrets.token_urlsafe(16)
        provider.codes[code] = {
            "client_id": params["client_id"],
            "redirect_uri": params["redirect_uri"],
            "nonce": params.get("nonce"),
            "challenge": params.get("code_challenge"),
            "method": params.get("code_challenge_method"),
            "login": provider.next_login,
        }
        query = urlencode({"code": code, "state": params.get("state", "")})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    @app.post("/token")
    async def token(
        request: Request,
        grant_type: str = Form(),
        code: str = Form(),
        redirect_uri: str = Form(),
        code_verifier: str = Form(""),
    ) -> Any:
        provider.token_requests.append(dict(await request.form()))
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        client_id, _, secret = (
            base64.b64decode(value).decode().partition(":") if value else ("", "", "")
        )
        if scheme.lower() != "basic" or provider.clients.get(client_id) != secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = provider.codes.pop(code, None)
        if (
            grant is None
            or grant["client_id"] != client_id
            or grant["redirect_uri"] != redirect_uri
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(code_verifier.encode()).digest())
        if grant["method"] != "S256" or challenge.rstrip(b"=").decode() != grant["challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        return {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": provider.id_token(grant),
        }

    return app


class Running:
    """The provider served by uvicorn in a thread until `stop()`."""

    def __init__(self) -> None:
        port = free_port()
        self.provider = Provider(issuer=f"http://127.0.0.1:{port}")
        config = uvicorn.Config(
            build_app(self.provider), host="127.0.0.1", port=port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test OpenID provider did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
