"""Custom domains verified by a DNS TXT record, asked of a real local nameserver (dnslib):
not routed until verified, claims of other clinics, hostile names, the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import socket
from pathlib import Path

import httpx
import pytest
from dnslib import QTYPE, RR, TXT
from dnslib.server import BaseResolver, DNSServer

from dentalpin.app import create_app
from dentalpin.tenants import create_tenant
from tests.conftest import unique_slug
from tests.platform.identity import (
    add_member,
    bearer,
    clinic_with_admin,
    host_of,
    make_user,
    random_ip,
    session,
)
from tests.test_cli import Cli

DOMAINS = "/api/v1/domains"
STATUS = "/api/v1/recall/status"


class Zone(BaseResolver):
    """Answers TXT questions from `records` (name -> values); NXDOMAIN for anything else."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.questions: list[str] = []

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        self.questions.append(name)
        values = self.records.get(name)
        if values is None:
            reply.header.rcode = 3  # NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for value in values:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(value), ttl=60))
        return reply


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dns_zone():
    zone = Zone()
    port = free_udp_port()
    server = DNSServer(zone, port=port, address="127.0.0.1")
    server.start_thread()
    zone.nameserver = f"127.0.0.1:{port}"
    yield zone
    server.stop()


@pytest.fixture(scope="module")
def dns_platform(platform, dns_zone):
    """The shared platform, asking the test's nameserver."""
    settings = platform.settings.model_copy(
        update={"dns_nameservers": [dns_zone.nameserver], "dns_timeout_s": 2.0}
    )
    return dataclasses.replace(platform, settings=settings)


def http(platform, host: str = "localhost") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=create_app(platform), raise_app_exceptions=False, client=(random_ip(), 4321)
    )
    return httpx.AsyncClient(transport=transport, base_url=f"https://{host}")


def domain() -> str:
    return f"clinica-{secrets.token_hex(3)}.example.es"


def assert_problem(response: httpx.Response, status: int, kind: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if kind:
        assert response.json()["type"].endswith("/" + kind), response.text


async def test_a_domain_serves_its_clinic_only_once_its_txt_record_is_verified(
    dns_platform, dns_zone
):
    tenant, admin = await clinic_with_admin(dns_platform, "dom")
    name = domain()
    async with http(dns_platform, host_of(tenant)) as api:
        added = await api.post(DOMAINS, json={"hostname": name.upper() + "."}, headers=admin)
        assert added.status_code == 201, added.text
        body = added.json()
        assert body["hostname"] == name and body["verified"] is False
        record = body["txt_record"]
        assert record["name"] == f"_dentalpin.{name}" and record["type"] == "TXT"
        async with http(dns_platform, name) as on_domain:
            assert_problem(await on_domain.get(STATUS), 404)  # claimed, not verified

        # Nothing published yet; then a wrong value.
        missing = await api.post(f"{DOMAINS}/{name}/verify", headers=admin)
        assert_problem(missing, 409, "domain-not-verified")
        assert record["value"] in missing.json()["detail"]
        dns_zone.records[record["name"]] = ["dentalpin-verification=not-it", "v=spf1 -all"]
        assert_problem(await api.post(f"{DOMAINS}/{name}/verify", headers=admin), 409)
        async with http(dns_platform, name) as on_domain:
            assert_problem(await on_domain.get(STATUS), 404)

        dns_zone.records[record["name"]].append(record["value"])
        verified = await api.post(f"{DOMAINS}/{name}/verify", headers=admin)
        assert verified.status_code == 200, verified.text
        assert verified.json()["verified"] is True and verified.json()["verified_at"]
        assert f"_dentalpin.{name}" in dns_zone.questions
        async with http(dns_platform, name) as on_domain:
            served = await on_domain.get(STATUS)
        assert served.status_code == 200, served.text
        assert served.json()["tenant"] == tenant.slug

        listed = await api.get(DOMAINS, headers=admin)
        assert [d["hostname"] for d in listed.json()] == [name]
        removed = await api.delete(f"{DOMAINS}/{name}", headers=admin)
        assert removed.status_code == 204
    async with http(dns_platform, name) as on_domain:
        assert_problem(await on_domain.get(STATUS), 404)


async def test_another_clinic_can_claim_but_only_the_dns_owner_verifies(dns_platform, dns_zone):
    owner, owner_admin = await clinic_with_admin(dns_platform, "dom-own")
    squatter, squatter_admin = await clinic_with_admin(dns_platform, "dom-sq")
    name = domain()
    async with http(dns_platform) as api:
        # The squatter claims first: that does not block the owner.
        first = await api.post(DOMAINS, json={"hostname": name}, headers=squatter_admin)
        second = await api.post(DOMAINS, json={"hostname": name}, headers=owner_admin)
        assert first.status_code == second.status_code == 201
        tokens = first.json()["txt_record"]["value"], second.json()["txt_record"]["value"]
        assert tokens[0] != tokens[1]
        dns_zone.records[f"_dentalpin.{name}"] = [tokens[1]]  # the owner's DNS
        assert_problem(await api.post(f"{DOMAINS}/{name}/verify", headers=squatter_admin), 409)
        ok = await api.post(f"{DOMAINS}/{name}/verify", headers=owner_admin)
        assert ok.status_code == 200, ok.text
        # Now even the right token cannot move it; and the squatter cannot add it again.
        dns_zone.records[f"_dentalpin.{name}"] = list(tokens)
        assert_problem(await api.post(f"{DOMAINS}/{name}/verify", headers=squatter_admin), 409)
        assert_problem(
            await api.post(DOMAINS, json={"hostname": name}, headers=squatter_admin), 409
        )
        # The squatter sees and removes only its own claim, never the owner's.
        seen = await api.get(DOMAINS, headers=squatter_admin)
        assert [d["verified"] for d in seen.json()] == [False]
        assert tokens[1] not in seen.text
        assert (await api.delete(f"{DOMAINS}/{name}", headers=squatter_admin)).status_code == 204
        assert_problem(await api.delete(f"{DOMAINS}/{name}", headers=squatter_admin), 404)
        # On the owner's clinic host, the squatter's token is refused outright.
        async with http(dns_platform, host_of(owner)) as on_owner:
            assert_problem(await on_owner.get(DOMAINS, headers=squatter_admin), 403)
    async with http(dns_platform, name) as on_domain:
        assert (await on_domain.get(STATUS)).json()["tenant"] == owner.slug
    assert squatter.slug != owner.slug


@pytest.mark.parametrize(
    "hostname",
    [
        "localhost",
        "example",
        "x.localhost",
        "127.0.0.1",
        "exa mple.es",
        "-bad.example.es",
        "bad-.example.es",
        "a..example.es",
        "example.123",
        "ünicode.example.es",
        "x" * 64 + ".example.es",
    ],
)
async def test_hostile_or_platform_host_names_are_refused(dns_platform, hostname):
    _, admin = await clinic_with_admin(dns_platform, "dom-bad")
    async with http(dns_platform) as api:
        response = await api.post(DOMAINS, json={"hostname": hostname}, headers=admin)
    assert_problem(response, 422)


async def test_only_admins_manage_domains(dns_platform):
    tenant, _ = await clinic_with_admin(dns_platform, "dom-perm")
    user = await make_user(dns_platform)
    await add_member(dns_platform, tenant, user, ["dentist"])
    async with http(dns_platform) as api:
        response = await api.post(
            DOMAINS,
            json={"hostname": domain()},
            headers=bearer(await session(dns_platform, user, tenant)),
        )
    assert_problem(response, 403)


async def test_an_unreachable_nameserver_is_a_503_not_a_failure(platform):
    port = free_udp_port()  # nothing answers there
    quiet = dataclasses.replace(
        platform,
        settings=platform.settings.model_copy(
            update={"dns_nameservers": [f"127.0.0.1:{port}"], "dns_timeout_s": 0.5}
        ),
    )
    _, admin = await clinic_with_admin(quiet, "dom-dns")
    name = domain()
    async with http(quiet) as api:
        assert (await api.post(DOMAINS, json={"hostname": name}, headers=admin)).status_code == 201
        response = await api.post(f"{DOMAINS}/{name}/verify", headers=admin)
    assert_problem(response, 503)
    assert "retry" in response.json()["detail"]


async def test_the_cli_adds_verifies_lists_and_removes(dns_platform, dns_zone, tmp_path: Path):
    tenant = await create_tenant(dns_platform, unique_slug("dom-cli"), modules=["recall"])
    cli = Cli(dns_platform, tmp_path)
    cli.env["DENTALPIN_DNS_NAMESERVERS"] = json.dumps([dns_zone.nameserver])
    name = domain()
    added = cli("domains", "add", tenant.slug, name, "--json").json()
    assert added["txt_record"]["name"] == f"_dentalpin.{name}"
    refused = cli("domains", "verify", tenant.slug, name, code=1)
    assert "no TXT record" in refused.output
    assert "Traceback" not in refused.output
    dns_zone.records[f"_dentalpin.{name}"] = [added["txt_record"]["value"]]
    assert "now serves" in cli("domains", "verify", tenant.slug, name).output
    listed = cli("domains", "list", tenant.slug, "--json").json()
    assert [(d["hostname"], d["verified"]) for d in listed] == [(name, True)]
    cli("domains", "remove", tenant.slug, name)
    assert cli("domains", "list", tenant.slug, "--json").json() == []
    assert "not a host name" in cli("domains", "add", tenant.slug, "localhost", code=1).output
    assert cli("domains", "remove", tenant.slug, name, code=1).code == 1


async def verified_domain(platform, zone):
    """A clinic with an admin, and a custom domain verified for it."""
    tenant = await create_tenant(platform, unique_slug("dom-re"), modules=["recall"])
    admin_user = await make_user(platform)
    await add_member(platform, tenant, admin_user, ["admin"])
    admin = bearer(await session(platform, admin_user, tenant))
    name = domain()
    async with http(platform) as api:
        added = (await api.post(DOMAINS, json={"hostname": name}, headers=admin)).json()
        zone.records[f"_dentalpin.{name}"] = [added["txt_record"]["value"]]
        verified = await api.post(f"{DOMAINS}/{name}/verify", headers=admin)
    assert verified.json()["verified"] is True and verified.json()["checked_at"]
    return tenant, admin, admin_user, name, added["txt_record"]["value"]


async def make_due(platform, name: str) -> None:
    from sqlalchemy import text

    async with platform.db.engine.begin() as conn:
        await conn.execute(
            text(
                "update platform.domains set checked_at = now() - interval '2 days' "
                "where hostname = :h"
            ),
            {"h": name},
        )


async def notices(platform, email: str) -> list[str]:
    from sqlalchemy import text

    from dentalpin.platform._mail_queue import _unseal

    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "select * from platform.mail_queue where to_address = :e and kind = "
                "'domain_check' order by created_at"
            ),
            {"e": email},
        )
        # Sent messages lose their bodies: what is left says they went.
        return [r.state if r.sealed is None else _unseal(platform.settings, r).text for r in rows]


async def test_a_domain_whose_record_is_gone_stops_serving_after_misses_in_a_row(
    dns_platform, dns_zone
):
    from dentalpin.platform._domains import domain_counts, recheck_domains

    tenant, admin, admin_user, name, token = await verified_domain(dns_platform, dns_zone)
    assert name not in (await recheck_domains(dns_platform)).confirmed  # checked just now
    del dns_zone.records[f"_dentalpin.{name}"]  # the domain lapsed, or its DNS moved
    limit = dns_platform.settings.domain_recheck_failures
    assert limit == 3
    for miss in range(1, limit):
        await make_due(dns_platform, name)
        report = await recheck_domains(dns_platform)
        assert name in report.failing and name not in report.unverified, miss
        async with http(dns_platform, name) as on_domain:
            assert (await on_domain.get(STATUS)).status_code != 404  # still served
    async with http(dns_platform) as api:
        (shown,) = (await api.get(DOMAINS, headers=admin)).json()
    assert shown["verified"] is True and shown["failed_checks"] == limit - 1
    assert "no TXT record" in shown["last_check_error"]
    async with dns_platform.db.engine.connect() as conn:
        assert (await domain_counts(conn))["failing"] >= 1  # what /metrics exposes
    assert await notices(dns_platform, admin_user.email) == ["sent"]  # told at the first miss

    await make_due(dns_platform, name)
    assert name in (await recheck_domains(dns_platform)).unverified
    async with http(dns_platform, name) as on_domain:
        assert_problem(await on_domain.get(STATUS), 404)
    assert await notices(dns_platform, admin_user.email) == ["sent", "sent"]
    assert ("domain.unverified", name) in await domain_audit(dns_platform, tenant)

    # Published again, the admin verifies again: served, with a clean slate.
    dns_zone.records[f"_dentalpin.{name}"] = [token]
    async with http(dns_platform) as api:
        again = await api.post(f"{DOMAINS}/{name}/verify", headers=admin)
    assert again.json()["verified"] is True and again.json()["failed_checks"] == 0
    async with http(dns_platform, name) as on_domain:
        assert (await on_domain.get(STATUS)).status_code != 404


async def test_a_record_back_before_the_limit_resets_the_count(dns_platform, dns_zone):
    from dentalpin.platform._domains import recheck_domains

    tenant, admin, _, name, token = await verified_domain(dns_platform, dns_zone)
    dns_zone.records[f"_dentalpin.{name}"] = ["v=spf1 -all"]  # someone edited the zone
    await make_due(dns_platform, name)
    assert name in (await recheck_domains(dns_platform)).failing
    dns_zone.records[f"_dentalpin.{name}"] = [token]
    await make_due(dns_platform, name)
    assert name in (await recheck_domains(dns_platform)).confirmed
    async with http(dns_platform) as api:
        (shown,) = (await api.get(DOMAINS, headers=admin)).json()
    assert shown["failed_checks"] == 0 and shown["last_check_error"] is None
    assert ("domain.check_failed", name) in await domain_audit(dns_platform, tenant)


async def test_a_silent_nameserver_is_no_miss_and_the_name_stays_due(dns_platform, dns_zone):
    from dentalpin.platform._domains import recheck_domains

    _, admin, _, name, _ = await verified_domain(dns_platform, dns_zone)
    await make_due(dns_platform, name)
    quiet = dataclasses.replace(
        dns_platform,
        settings=dns_platform.settings.model_copy(
            update={"dns_nameservers": [f"127.0.0.1:{free_udp_port()}"], "dns_timeout_s": 0.3}
        ),
    )
    assert name in (await recheck_domains(quiet)).unanswered
    async with http(dns_platform) as api:
        (shown,) = (await api.get(DOMAINS, headers=admin)).json()
    assert shown["verified"] is True and shown["failed_checks"] == 0
    assert "retry" in shown["last_check_error"]
    assert name in (await recheck_domains(dns_platform)).confirmed  # still due: asked again


async def test_a_pass_takes_every_batch_but_stops_when_dns_is_silent(
    dns_platform, dns_zone, monkeypatch
):
    from dentalpin.platform import _domains

    monkeypatch.setattr(_domains, "RECHECK_BATCH", 1)
    names = [(await verified_domain(dns_platform, dns_zone))[3] for _ in range(2)]
    for name in names:
        await make_due(dns_platform, name)
    report = await _domains.recheck_domains(dns_platform)
    assert set(names) <= set(report.confirmed)  # batch after batch, in one pass
    for name in names:
        await make_due(dns_platform, name)
    quiet = dataclasses.replace(
        dns_platform,
        settings=dns_platform.settings.model_copy(
            update={"dns_nameservers": [f"127.0.0.1:{free_udp_port()}"], "dns_timeout_s": 0.3}
        ),
    )
    silent = await asyncio.wait_for(_domains.recheck_domains(quiet), 30)
    assert len(silent.unanswered) == 1  # not the same name claimed over and over


async def test_the_cli_rechecks_now_and_beat_schedules_it(dns_platform, dns_zone, tmp_path: Path):
    from dentalpin.platform._celery import DOMAINS_RECHECK_TASK, make_celery

    tenant, _, _, name, _ = await verified_domain(dns_platform, dns_zone)
    cli = Cli(dns_platform, tmp_path)
    cli.env["DENTALPIN_DNS_NAMESERVERS"] = json.dumps([dns_zone.nameserver])
    assert name not in cli("domains", "recheck", "--json").json()["confirmed"]  # not due
    assert name in cli("domains", "recheck", "--all", "--json").json()["confirmed"]
    del dns_zone.records[f"_dentalpin.{name}"]
    missing = cli("domains", "recheck", "--all")
    assert f"missing: {name} (still served)" in missing.output
    listed = cli("domains", "list", tenant.slug, "--json").json()
    assert listed[0]["failed_checks"] == 1
    entry = make_celery(current=False).conf.beat_schedule["domains-recheck"]
    assert entry["task"] == DOMAINS_RECHECK_TASK and entry["options"]["queue"] == "periodic"


async def domain_audit(platform, tenant) -> list[tuple[str, str]]:
    from sqlalchemy import text

    async with platform.db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "select action, target from platform.audit_log where tenant_id = :t "
                "and action like 'domain.%' order by id"
            ),
            {"t": tenant.id},
        )
        return [(r.action, r.target) for r in rows]


async def test_revision_0007_downgrades_keeping_one_claim_per_name_and_upgrades_again(
    fresh_platform,
):
    from sqlalchemy import text

    from dentalpin.tenants import migrate_platform
    from dentalpin.tenants._fleet import platform_head
    from tests.platform.revisions import downgrade_platform

    platform = fresh_platform
    a = await create_tenant(platform, unique_slug("dg-a"))
    b = await create_tenant(platform, unique_slug("dg-b"))
    name, other = domain(), domain()
    async with platform.db.engine.begin() as conn:
        for tenant, hostname, verified in ((a, name, False), (b, name, True), (a, other, False)):
            await conn.execute(
                text(
                    "insert into platform.domains (hostname, tenant_id, verified, verification_token)"
                    " values (:h, :t, :v, 'x')"
                ),
                {"h": hostname, "t": tenant.id, "v": verified},
            )

    async with platform.db.engine.connect() as conn:
        await downgrade_platform(conn, "0006_invitations")  # to just before 0007
        await conn.commit()
        kept = (
            await conn.execute(
                text("select hostname, tenant_id from platform.domains order by hostname")
            )
        ).all()
        tables = set(
            (
                await conn.execute(
                    text("select tablename from pg_tables where schemaname = 'platform'")
                )
            ).scalars()
        )
    # The verified claim wins; the name only one clinic claimed stays.
    assert sorted(kept) == sorted([(name, b.id), (other, a.id)])
    assert not {"oidc_providers", "oidc_identities"} & tables
    assert await migrate_platform(platform) == platform_head()
