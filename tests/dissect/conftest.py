"""Dissection tests: stand-ins for kernels not merged yet (see standins.py), a generated dataset."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import standins  # noqa: E402

STANDINS = standins.install()


def pytest_report_header(config):
    return f"dissect tests: plain-PyTorch stand-ins in use for {STANDINS or 'nothing (real kernels)'}"


@pytest.fixture(scope="session")
def concept_root(tmp_path_factory):
    from unitscope.data import make_concept_dataset
    return make_concept_dataset(tmp_path_factory.mktemp("concepts") / "ds", 24, size=64, seed=1)
