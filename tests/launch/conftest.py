"""`ray_head`: a real Ray head of this module's own (`ray start --head --block`, bound to 127.0.0.1), for
`ray job submit`. Teardown ends exactly the processes this head started (tests/helpers.py `ray_head`)."""

from __future__ import annotations

import pytest

from tests.helpers import ray_head as start_ray_head


@pytest.fixture(scope="module")
def ray_head():
    """Yield the dashboard URL (the Jobs API address) of a fresh local Ray head on 127.0.0.1."""
    with start_ray_head(num_cpus=4) as head:
        yield head["dashboard"]
