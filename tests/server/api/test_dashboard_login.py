"""The dashboard's login over plain HTTP: the cookie it sets, CSRF, where it sends you."""

from __future__ import annotations

import re

import httpx
import pytest

from layerwatch_server.dashboard.login import safe_next


def _form(client: httpx.Client, path: str = "/login?next=/runs/x") -> str:
    page = client.get(path)
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def test_login_sets_an_httponly_strict_cookie_and_goes_back(
    live_server: str, suite_token: str
) -> None:
    with httpx.Client(base_url=live_server) as client:
        csrf = _form(client)
        answer = client.post(
            "/login",
            data={"csrf": csrf, "token": suite_token, "next": "/runs/x"},
            headers={"Origin": live_server},
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == "/runs/x"
        cookie = answer.headers["set-cookie"]
        assert "layerwatch_token=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        # the cookie now reads the API and the pages, never writes
        assert client.get("/api/v1/runs").status_code == 200
        assert client.get("/").status_code == 200
        assert client.post("/api/v1/runs", json={"project": "p"}).status_code == 401
        out = client.post("/logout", headers={"Origin": live_server})
        assert out.status_code == 303
        assert client.get("/").status_code == 303  # to the login form again


@pytest.mark.parametrize(
    "headers", [{}, {"Origin": "http://evil.example"}], ids=["no-origin", "other-origin"]
)
def test_login_from_elsewhere_or_without_the_form_value_is_refused(
    live_server: str, suite_token: str, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=live_server) as client:
        csrf = _form(client)
        forged = client.post("/login", data={"csrf": csrf, "token": suite_token}, headers=headers)
        assert forged.status_code == 403
        assert "layerwatch_token" not in forged.headers.get("set-cookie", "")
        no_value = client.post(
            "/login", data={"csrf": "guess", "token": suite_token},
            headers={"Origin": live_server},
        )  # fmt: skip
        assert no_value.status_code == 403
        assert client.post("/logout", headers=headers).status_code == 403


def test_pages_without_a_login_go_to_the_form(live_server: str) -> None:
    answer = httpx.get(f"{live_server}/runs/abc/gallery?x=1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Fruns%2Fabc%2Fgallery%3Fx%3D1"


@pytest.mark.parametrize(
    ("target", "safe"),
    [("/runs/a", "/runs/a"), ("//evil.example", "/"), ("https://evil.example", "/"),
     ("/\\evil", "/"), (None, "/"), ("", "/")],
)  # fmt: skip
def test_next_stays_on_this_server(target: str | None, safe: str) -> None:
    assert safe_next(target) == safe
