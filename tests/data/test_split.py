"""data.split.plan_split against DataConfig's val_docs / val_fraction docstrings."""
import pytest

from mhc_repro.data.config import DataConfig
from mhc_repro.data.sources import Source
from mhc_repro.data.split import plan_split

IDS = [f"work{i}" for i in range(40)]


def _embedded() -> Source:
    manifest = {"source": "embedded", "fingerprint": "f", "default_val_docs": ["work0", "work1"]}
    return Source(manifest, lambda: iter(()), num_docs=len(IDS), ids=list(IDS))


def _held_out(plan) -> list[str]:
    return [d for i, d in enumerate(IDS) if plan.is_val(i, d)]


def test_embedded_pins_its_works_and_ignores_val_fraction():
    for frac in (0.05, 0.5):
        plan = plan_split(_embedded(), DataConfig(val_fraction=frac))
        assert plan.rule == "named" and _held_out(plan) == ["work0", "work1"]


@pytest.mark.parametrize("frac, k", [(0.25, 10), (0.05, 2), (0.001, 1)])  # max(1, round(frac * n))
def test_embedded_with_max_documents_uses_val_fraction(frac, k):
    plan = plan_split(_embedded(), DataConfig(max_documents=40, val_fraction=frac))
    assert plan.rule == "exact" and len(_held_out(plan)) == k
