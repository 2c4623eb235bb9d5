"""Safe defaults: open only on loopback without tokens, Host allowlist, CORS, rate limit."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from auth_headers import SUITE_TOKEN
from layerwatch_server.auth.credentials import hash_secret, is_well_formed, new_secret
from layerwatch_server.auth.hosts import host_allowed, is_loopback
from layerwatch_server.auth.rate_limit import TokenBuckets, retry_after_seconds
from layerwatch_server.config import Settings

Serve = Callable[[Settings], AbstractContextManager[str]]


def _fresh(tmp_path: Path, **settings: object) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'fresh.db'}", **settings)  # type: ignore[arg-type]


def test_secrets_are_256_bits_with_a_prefix_and_stored_as_hashes() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert secret.startswith("lw_")
        assert len(secret) == 3 + 43  # 32 random bytes in URL-safe base64
        assert is_well_formed(secret)
        assert len(hash_secret(secret)) == 64
        assert secret not in hash_secret(secret)
    assert not is_well_formed("lw_short")
    assert not is_well_formed("xx_" + "A" * 43)


def test_open_on_loopback_until_the_first_token(serve: Serve, tmp_path: Path) -> None:
    with (
        serve(_fresh(tmp_path, allow_open=True)) as url,
        httpx.Client(base_url=f"{url}/api/v1", timeout=10) as api,
    ):
        assert api.post("/runs", json={"project": "laptop"}).status_code == 201
        made = api.post("/tokens", json={"name": "first", "scope": "admin"})
        assert made.status_code == 201
        # from now on, closed: the token is needed
        assert api.get("/runs").status_code == 401
        headers = {"Authorization": f"Bearer {made.json()['secret']}"}
        assert api.get("/runs", headers=headers).status_code == 200


def test_closed_without_tokens_unless_allowed_to_be_open(serve: Serve, tmp_path: Path) -> None:
    with serve(_fresh(tmp_path)) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        refused = httpx.get(f"{url}/api/v1/runs")
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthorized"
        assert (
            httpx.post(f"{url}/api/v1/tokens", json={"name": "x", "scope": "admin"}).status_code
            == 401
        )


def test_hosts_outside_the_allowlist_get_400(serve: Serve, database_url: str) -> None:
    settings = Settings(database_url=database_url, allowed_hosts=["localhost", "127.0.0.1"])
    with serve(settings) as url:
        rebound = httpx.get(f"{url}/api/v1/runs", headers={"Host": "evil.example"})
        assert rebound.status_code == 400
        assert rebound.json()["code"] == "invalid_host"
        assert httpx.get(f"{url}/healthz", headers={"Host": "10.0.0.7"}).status_code == 200
        assert httpx.get(f"{url}/api/v1/runs").status_code == 401  # allowed host: on to auth


def test_host_patterns() -> None:
    assert host_allowed("localhost:8000", ["localhost"])
    assert host_allowed("[::1]:8000", ["::1"])
    assert host_allowed("lw.team.example", ["*.team.example"])
    assert not host_allowed("team.example.evil", ["*.team.example"])
    assert not host_allowed("evil.example", ["localhost", "127.0.0.1", "::1"])
    assert host_allowed("anything", ["*"])
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.1.2.3")


def test_cors_is_off_by_default(live_server: str) -> None:
    preflight = httpx.options(
        f"{live_server}/api/v1/runs",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_only_listed_origins_never_credentials(serve: Serve, database_url: str) -> None:
    settings = Settings(database_url=database_url, cors_origins=["https://lw.team.example"])
    with serve(settings) as url:
        preflight = {"Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"}  # fmt: skip
        good = httpx.options(
            f"{url}/api/v1/runs", headers={"Origin": "https://lw.team.example", **preflight}
        )
        assert good.headers["access-control-allow-origin"] == "https://lw.team.example"
        assert "access-control-allow-credentials" not in good.headers
        bad = httpx.options(
            f"{url}/api/v1/runs", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in bad.headers


def test_writes_past_the_rate_get_429_with_retry_after(serve: Serve, database_url: str) -> None:
    settings = Settings(database_url=database_url, ingest_rate_limit=0.5, ingest_burst=2)
    headers = {"Authorization": f"Bearer {SUITE_TOKEN}"}
    with (
        serve(settings) as url,
        httpx.Client(base_url=f"{url}/api/v1", timeout=10, headers=headers) as api,
    ):
        statuses = [api.post("/runs", json={"project": "limited"}) for _ in range(3)]
        assert [r.status_code for r in statuses] == [201, 201, 429]
        assert statuses[2].json()["code"] == "rate_limited"
        assert int(statuses[2].headers["Retry-After"]) >= 1
        assert api.get("/runs").status_code == 200  # reads are not limited


def test_token_buckets() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.acquire(1) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.acquire(1) == pytest.approx(0.5)
    assert buckets.acquire(2) == 0.0  # another token has its own bucket
    now[0] = 0.5
    assert buckets.acquire(1) == 0.0
    assert retry_after_seconds(0.01) == 1
    assert retry_after_seconds(2.5) == 3
