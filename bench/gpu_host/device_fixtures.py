"""tests/conftest.py's tiny_bert fixture alone (the device host lacks the service's packages that
the full conftest imports: celery, sqlalchemy)."""

import pytest

from models.tiny import build_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
