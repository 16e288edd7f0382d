"""Dissection tests: a small generated concept dataset shared by the tests; the tests' own helper
modules (cli_models) importable from spawned processes and the CLI."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def concept_root(tmp_path_factory):
    from unitscope.data import make_concept_dataset
    return make_concept_dataset(tmp_path_factory.mktemp("concepts") / "ds", 24, size=64, seed=1)
