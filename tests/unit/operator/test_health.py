"""The operator's readiness answer: ready while it leads (or waits as a standby) and reaches the API server."""

from __future__ import annotations

import pytest

from kubetune_operator.health import Readiness


@pytest.mark.parametrize(
    ("elected", "role", "contact_age", "expected"),
    [
        pytest.param(False, "starting", None, (503, "starting"), id="before-kopf-starts"),
        pytest.param(False, "running", 3600.0, (200, "running"), id="no-election-kopf-running"),
        pytest.param(True, "standby", 2.0, (200, "standby"), id="standby-reading-the-lease"),
        pytest.param(True, "leading", 2.0, (200, "leading"), id="leader-renewing"),
        pytest.param(
            True, "leading", 20.0, (503, "leading: no answer from the API server for 20 s"), id="leader-cut-off"
        ),
        pytest.param(
            True, "standby", 16.0, (503, "standby: no answer from the API server for 16 s"), id="standby-cut-off"
        ),
    ],
)
def test_readiness_answer(elected, role, contact_age, expected):
    readiness = Readiness(elected=elected, lease_seconds=15.0)
    readiness.role = role
    readiness.last_contact = None if contact_age is None else 1000.0 - contact_age
    assert readiness.answer(now=1000.0) == expected
