"""The security matrix: every route x every kind of caller, on SQLite and PostgreSQL.

Callers: no token, a bad one, an expired one, a revoked one, read, write and
admin tokens for every project, and a write token for another project. The
routes come from the app itself (`route_scopes`), so a new route joins the
matrix without being listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest
from batches import body, new_id, sample_batch
from route_table import PUBLIC, route_scopes
from sqlalchemy import Engine, update

from layerwatch_server.config import Settings
from layerwatch_server.db import make_sessionmakers, managed_session
from layerwatch_server.main import create_app
from layerwatch_server.models import SqlApiToken, utcnow
from layerwatch_server.store.tokens import create_token, revoke_token

ROUTES = sorted(
    (method, path)
    for (method, path), scope in route_scopes(create_app(Settings(), migrate=False)).items()
    if path not in PUBLIC
)
DENIED = ("none", "bad", "expired", "revoked", "malformed")


@dataclass
class World:
    """A project with a run in it, and a token of every kind (name -> Authorization value)."""

    project: str
    run_id: str
    headers: dict[str, dict[str, str]]


def _token(engine: Engine, scope: str, projects: list[str] | None = None) -> tuple[str, str]:
    _, write = make_sessionmakers(engine)
    name = new_id("tok")
    with managed_session(write) as session:
        made = create_token(session, name=name, scope=scope, projects=projects)  # type: ignore[arg-type]
    return name, made.secret


@pytest.fixture(scope="module")
def world(engine: Engine, api: httpx.Client) -> World:
    project, run_id = new_id("p"), new_id("r")
    api.post("/runs", json={"id": run_id, "project": project}).raise_for_status()
    api.post(f"/runs/{run_id}/batches", content=body(sample_batch())).raise_for_status()
    secrets = {
        "read": _token(engine, "read")[1],
        "write": _token(engine, "write")[1],
        "admin": _token(engine, "admin")[1],
        "other project": _token(engine, "admin", [new_id("p")])[1],
    }
    expired_name, secrets["expired"] = _token(engine, "admin")
    revoked_name, secrets["revoked"] = _token(engine, "admin")
    _, write = make_sessionmakers(engine)
    with managed_session(write) as session:
        session.execute(
            update(SqlApiToken)
            .where(SqlApiToken.name == expired_name)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        revoke_token(session, revoked_name)
    headers = {name: {"Authorization": f"Bearer {secret}"} for name, secret in secrets.items()}
    headers["none"] = {}
    headers["bad"] = {"Authorization": "Bearer lw_" + "A" * 43}
    headers["malformed"] = {"Authorization": "Basic dXNlcjpwYXNz"}
    return World(project=project, run_id=run_id, headers=headers)


def _request(client: httpx.Client, method: str, path: str, world: World) -> httpx.Response:
    url = (
        path.replace("{run_id}", world.run_id)
        .replace("{project}", world.project)
        .replace("{step}", "0")
        .replace("{name}", new_id("nobody"))
    )
    content: bytes | None = None
    if (method, path) == ("POST", "/api/v1/runs"):
        content = json.dumps({"project": world.project}).encode()
    elif path.endswith("/batches"):
        content = body(sample_batch())
    elif method == "PATCH":
        content = b'{"status": "running"}'
    elif path == "/api/v1/tokens" and method == "POST":
        content = json.dumps({"name": new_id("made"), "scope": "read"}).encode()
    elif method == "POST":
        content = b"{}"
    return client.request(
        method, url, content=content, headers={"Content-Type": "application/json"}
    )


def expected(caller: str, method: str, path: str) -> str:
    """What the caller gets: "401", "403", "404" (as if absent) or "allowed"."""
    if caller in DENIED:
        return "401"
    if path.startswith("/api/v1/tokens"):
        return "allowed" if caller in ("admin",) else "403"
    if caller == "read" and method != "GET":
        return "403"
    if caller == "other project":
        if (method, path) == ("POST", "/api/v1/runs"):
            return "403"
        if "{run_id}" in path or "{project}" in path:
            return "404"
    return "allowed"


def outcome(response: httpx.Response) -> str:
    if response.status_code == 303 and response.headers["location"].startswith("/login?"):
        return "401"  # a dashboard page's refusal: to the login form
    if response.status_code in (401, 403):
        return str(response.status_code)
    code = response.json().get("code") if response.status_code == 404 else None
    if code in ("run_not_found", "project_not_found"):
        return "404"
    return "allowed"


@pytest.mark.parametrize("caller", [*DENIED, "read", "write", "admin", "other project"])
def test_security_matrix(caller: str, world: World, live_server: str) -> None:
    wrong = []
    with httpx.Client(base_url=live_server, headers=world.headers[caller], timeout=30) as client:
        for method, path in ROUTES:
            response = _request(client, method, path, world)
            if outcome(response) != expected(caller, method, path):
                wrong.append((method, path, response.status_code, response.text[:120]))
            if response.status_code >= 500:
                wrong.append((method, path, response.status_code, "a 5xx"))
    assert wrong == []


def test_every_refused_identity_gets_the_same_401(world: World, live_server: str) -> None:
    answers = set()
    with httpx.Client(base_url=live_server, timeout=10) as client:
        for caller in DENIED:
            response = client.get("/api/v1/runs", headers=world.headers[caller])
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="layerwatch"'
            answers.add((response.text, response.headers["WWW-Authenticate"]))
    assert len(answers) == 1
    assert json.loads(answers.pop()[0])["code"] == "unauthorized"


@pytest.mark.parametrize("caller", DENIED)
def test_a_body_that_is_not_json_is_still_refused_for_want_of_a_token(
    caller: str, world: World, live_server: str
) -> None:
    with httpx.Client(base_url=f"{live_server}/api/v1", headers=world.headers[caller]) as client:
        for method, path in (("POST", "/runs"), ("PATCH", f"/runs/{world.run_id}"),
                             ("POST", "/tokens")):  # fmt: skip
            response = client.request(
                method, path, content=b"{", headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="layerwatch"'
    with httpx.Client(base_url=f"{live_server}/api/v1", headers=world.headers["write"]) as client:
        assert client.post("/runs", content=b"{").status_code == 422


def test_another_projects_run_looks_like_no_run(world: World, live_server: str) -> None:
    with httpx.Client(base_url=f"{live_server}/api/v1", timeout=10) as client:
        hidden = client.get(f"/runs/{world.run_id}", headers=world.headers["other project"])
        absent = client.get("/runs/no-such-run", headers=world.headers["other project"])
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["code"] == absent.json()["code"] == "run_not_found"
    assert hidden.json()["detail"].replace(world.run_id, "X") == absent.json()["detail"].replace(
        "no-such-run", "X"
    )


def test_listings_show_only_the_tokens_projects(
    engine: Engine, api: httpx.Client, live_server: str
) -> None:
    mine, theirs = new_id("p"), new_id("p")
    my_run = api.post("/runs", json={"project": mine}).json()["id"]
    their_run = api.post("/runs", json={"project": theirs}).json()["id"]
    _, secret = _token(engine, "write", [mine])
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=f"{live_server}/api/v1", headers=headers, timeout=30) as client:
        assert [p["name"] for p in client.get("/projects").json()["data"]] == [mine]
        assert {r["id"] for r in client.get("/runs").json()["data"]} == {my_run}
        assert client.get("/runs", params={"project": theirs}).json()["code"] == (
            "project_not_found"
        )
        assert client.get(f"/projects/{theirs}/runs").status_code == 404
        # overlays and exports of a run it cannot see: as if the run did not exist
        overlay = client.get(
            f"/runs/{my_run}/plots/series.json", params={"tensor": "fc1", "compare": their_run}
        )
        assert (overlay.status_code, overlay.json()["code"]) == (404, "run_not_found")
        assert their_run in overlay.json()["detail"]
        assert client.get(f"/runs/{their_run}/export.csv").status_code == 404
        assert client.get(f"/runs/{their_run}/export.npz").status_code == 404
        # writing into it, or creating runs in a project it does not cover
        assert client.post(f"/runs/{their_run}/heartbeat").status_code == 404
        assert client.post("/runs", json={"project": theirs}).status_code == 403
        taken = client.post("/runs", json={"id": their_run, "project": mine})
        assert taken.status_code == 409
        assert theirs not in taken.text
        assert client.post("/runs", json={"project": mine}).status_code == 201


def test_admin_endpoints_create_list_and_revoke(api: httpx.Client, live_server: str) -> None:
    name = new_id("ci")
    made = api.post("/tokens", json={"name": name, "scope": "write", "projects": ["a"]})
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert secret.startswith("lw_")
    listed = {t["name"]: t for t in api.get("/tokens").json()["data"]}
    assert listed[name]["projects"] == ["a"]
    assert "secret" not in listed[name]
    assert secret not in api.get("/tokens").text
    with httpx.Client(
        base_url=f"{live_server}/api/v1", headers={"Authorization": f"Bearer {secret}"}
    ) as client:
        assert client.get("/projects").status_code == 200
        assert api.delete(f"/tokens/{name}").json()["revoked_at"] is not None
        assert client.get("/projects").status_code == 401
    assert api.post("/tokens", json={"name": name, "scope": "read"}).status_code == 409
    assert api.delete("/tokens/no-such-token").json()["code"] == "token_not_found"


def test_last_used_is_noted(engine: Engine, live_server: str) -> None:
    name, secret = _token(engine, "read")
    with httpx.Client(base_url=f"{live_server}/api/v1") as client:
        client.get("/projects", headers={"Authorization": f"Bearer {secret}"}).raise_for_status()
    read, _ = make_sessionmakers(engine)
    with managed_session(read) as session:
        token = session.query(SqlApiToken).filter_by(name=name).one()
        assert token.last_used_at is not None
        assert secret not in repr(token.__dict__)
