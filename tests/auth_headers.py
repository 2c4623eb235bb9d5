"""The suite's admin token, and the header that sends it from a test's own HTTP client.

Every test database holds it and ``LAYERWATCH_TOKEN`` is set to it during
every test (see ``tests/conftest.py``).
"""

from __future__ import annotations

from layerwatch_server.auth.credentials import new_secret

SUITE_TOKEN = new_secret()
"""A fresh secret per test session."""


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {SUITE_TOKEN}"}
