"""``layerwatch token create|list|revoke`` and what ``layerwatch server`` says at start-up."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
import uvicorn

from layerwatch_server.cli import main
from layerwatch_server.config import Settings

Serve = Callable[[Settings], AbstractContextManager[str]]


def _created_secret(output: str) -> str:
    [secret] = [line for line in output.splitlines() if line.startswith("lw_")]
    return secret


def test_create_use_list_revoke(
    tmp_path: Path, serve: Serve, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'team.db'}"
    assert main(["token", "create", "ci", "--scope", "write", "--project", "vision",
                 "--expires", "30d", "--database-url", url]) == 0  # fmt: skip
    secret = _created_secret(capsys.readouterr().out)
    assert main(["token", "list", "--database-url", url]) == 0
    listed = capsys.readouterr().out
    assert "ci" in listed
    assert "vision" in listed
    assert "active" in listed
    assert secret not in listed

    with serve(Settings(database_url=url)) as server:
        headers = {"Authorization": f"Bearer {secret}"}
        assert httpx.post(f"{server}/api/v1/runs", json={"project": "vision"},
                          headers=headers).status_code == 201  # fmt: skip
        assert main(["token", "revoke", "ci", "--database-url", url]) == 0
        assert httpx.get(f"{server}/api/v1/runs", headers=headers).status_code == 401

    capsys.readouterr()
    assert main(["token", "list", "--database-url", url]) == 0
    assert "revoked" in capsys.readouterr().out


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'team.db'}"
    assert main(["token", "create", "a", "--scope", "read", "--database-url", url]) == 0
    assert main(["token", "create", "a", "--scope", "read", "--database-url", url]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["token", "create", "a", "--scope", "read", "--if-missing",
                 "--database-url", url]) == 0  # fmt: skip
    assert main(["token", "create", "b", "--scope", "read", "--expires", "soon",
                 "--database-url", url]) == 2  # fmt: skip
    assert main(["token", "revoke", "nobody", "--database-url", url]) == 1
    with pytest.raises(SystemExit):
        main(["token", "create", "c", "--scope", "root", "--database-url", url])


def test_a_bootstrap_secret_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("BOOT", "lw_" + "b" * 43)
    argv = ["token", "create", "boot", "--scope", "admin", "--secret-env", "BOOT",
            "--if-missing", "--database-url", url]  # fmt: skip
    assert main(argv) == 0
    assert main(argv) == 0  # again: left as it is
    assert "b" * 43 not in capsys.readouterr().out
    monkeypatch.setenv("BOOT", "password")
    assert main([*argv[:-3], "--database-url", url]) == 1


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append(k))
    return calls


def test_a_public_bind_without_tokens_refuses_to_start(
    tmp_path: Path, no_serving: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'team.db'}"
    assert main(["server", "--host", "0.0.0.0", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "layerwatch token create" in err
    assert "--insecure" in err
    assert no_serving == []

    assert main(["server", "--host", "0.0.0.0", "--insecure", "--database-url", url]) == 0
    assert "OPEN" in capsys.readouterr().out
    assert main(["token", "create", "a", "--scope", "admin", "--database-url", url]) == 0
    capsys.readouterr()
    assert main(["server", "--host", "0.0.0.0", "--database-url", url]) == 0
    assert "authentication on" in capsys.readouterr().out
    assert len(no_serving) == 2


def test_a_loopback_bind_without_tokens_runs_open_and_says_so(
    tmp_path: Path, no_serving: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'laptop.db'}"
    assert main(["server", "--host", "127.0.0.1", "--database-url", url]) == 0
    assert "OPEN" in capsys.readouterr().out
    assert len(no_serving) == 1


def test_database_passwords_are_redacted_when_printed(
    no_serving: list[dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+psycopg://lw:hunter2@127.0.0.1:1/none"  # nothing listens there
    for host in ("127.0.0.1", "0.0.0.0"):  # the banner, and the refusal naming the database
        main(["server", "--host", host, "--database-url", url])
        out = capsys.readouterr()
        assert "127.0.0.1:1/none" in out.out + out.err
        assert "hunter2" not in out.out + out.err
