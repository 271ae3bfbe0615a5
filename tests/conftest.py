import pytest
from harness import WorldPool


@pytest.fixture(scope="session")
def worlds():
    pool = WorldPool()
    yield pool
    pool.close()
