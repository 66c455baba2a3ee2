"""Fixtures of the monitoring tests; the servers themselves are in monitoring_parts.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from monitoring_parts import pushgateway_server, running


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway for one test; yields its base URL."""
    server = pushgateway_server(tmp_path)
    with running(server):
        yield server.ready_url.removesuffix("/-/ready")


@pytest.fixture
def structlog_reset() -> Iterator[None]:
    """Restore structlog's defaults and context after a test that configures logging."""
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
