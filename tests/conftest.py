"""Settings every test shares."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_digest_cache(tmp_path_factory):
    """Checkpoint digests persisted by the tests go to a temp dir, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRANSFERBENCH_DIGEST_CACHE", str(tmp_path_factory.mktemp("digests") / "sha256.json"))
    yield
    mp.undo()
