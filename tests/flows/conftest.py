"""Flow tests share one throwaway Prefect backend for the whole session."""

import pytest


@pytest.fixture(scope="session")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
