import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for reporting_fixtures.py (test helpers)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory) -> str:
    from reporting_fixtures import build_store

    return build_store(tmp_path_factory.mktemp("mlflow"))
