"""Shared helpers for the models/ toolchain tests (no torch needed)."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
TINY = FIXTURES / "electra-tiny-zh"
HEADS = ("discriminator", "classifier", "tagger", "encoder")

sys.path.insert(0, str(MODELS))


def require_fixtures() -> Path:
    """The shared fixtures live beside the repo (../shared); CI always has them."""
    missing = [h for h in HEADS if not (TINY / h / "model.fp32.onnx").is_file()]
    if missing:
        pytest.fail(
            f"shared fixtures not found: expected {TINY}/<head>/model.fp32.onnx for {missing}. "
            "These tests read ../shared/fixtures beside the repository (CI provides it).",
            pytrace=False,
        )
    return TINY


@pytest.fixture(scope="session")
def tiny() -> Path:
    return require_fixtures()
