from __future__ import annotations

import asyncio

import pytest

from tests.operator.cluster import Cluster


@pytest.fixture()
def api(tmp_path):
    """Runs ``scenario(cluster)`` against the test API server alone (no operator process), with the test's
    client configured for it."""

    def runner(scenario):
        async def main():
            async with Cluster(tmp_path, start_operator=False) as cluster:
                await scenario(cluster)

        asyncio.run(asyncio.wait_for(main(), timeout=30))

    return runner
