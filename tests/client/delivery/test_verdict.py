"""The server's verdict in a finished run's summary line, against a real server."""

from __future__ import annotations

import logging
import math
import socket
import time

import pytest

import layerwatch
from layerwatch.delivery.verdict import Verdict, ask_verdict


def _summary(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    [line] = [r for r in caplog.records if "records sent" in r.getMessage()]
    return line


def test_a_diverging_loss_is_named_in_the_summary_line(
    live_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = layerwatch.Run(live_server, project="verdict", flush_secs=0.2)
    for step, loss in enumerate([2.3, 2.1, 2.0, math.nan, math.nan]):
        run.log({"loss": loss}, step=step)
    with caplog.at_level(logging.INFO, logger="layerwatch"):
        run.close()
    line = _summary(caplog)
    assert line.levelno == logging.WARNING
    assert line.getMessage().endswith(
        f"; the server's diagnosis found 1 error (`layerwatch check {run.id}`)"
    )


def test_a_healthy_run_says_nothing_was_found(
    live_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = layerwatch.Run(live_server, project="verdict", flush_secs=0.2)
    for step in range(40):
        run.log({"loss": 2.0 * 0.9**step}, step=step)
    with caplog.at_level(logging.INFO, logger="layerwatch"):
        run.close()
    line = _summary(caplog)
    assert line.levelno == logging.INFO
    assert line.getMessage().endswith("; the server's diagnosis found nothing wrong")


def test_no_server_no_verdict_and_no_wait() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    assert ask_verdict(f"http://127.0.0.1:{port}", "r1") is None
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize(
    ("errors", "warnings", "said"),
    [
        (0, 0, "the server's diagnosis found nothing wrong"),
        (1, 0, "the server's diagnosis found 1 error (`layerwatch check r`)"),
        (2, 3, "the server's diagnosis found 2 errors and 3 warnings (`layerwatch check r`)"),
        (0, 1, "the server's diagnosis found 1 warning (`layerwatch check r`)"),
    ],
)
def test_the_verdict_in_words(errors: int, warnings: int, said: str) -> None:
    assert str(Verdict("r", errors=errors, warnings=warnings)) == said
