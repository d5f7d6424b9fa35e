"""benchmarks/weight_structure.py: the target statistics on hand-computed batches."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "weight_structure.py"
sys.path.insert(0, str(SCRIPT.parent))  # as `python benchmarks/x.py` has it: sibling imports
_spec = importlib.util.spec_from_file_location("weight_structure", SCRIPT)
weight_structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(weight_structure)


def test_orthogonal_rows_give_flat_targets_and_no_lift():
    # cos 0 off the diagonal -> paper weight 1/2; a row's targets: 1/2.5 on the pair, 0.2 x 3.
    stats = weight_structure.batch_statistics(np.eye(4), {"y": np.array([0, 0, 1, 1])}, "paper")
    assert stats["cos"] == pytest.approx(0.0)
    assert stats["weight"] == pytest.approx(0.5)
    assert stats["true_pair_mass"] == pytest.approx(0.4)
    assert stats["effective_positives"] == pytest.approx(1 / (0.4**2 + 3 * 0.2**2))
    assert stats["entropy_over_ln_b"] == pytest.approx(
        -(0.4 * np.log(0.4) + 3 * 0.2 * np.log(0.2)) / np.log(4)
    )
    assert stats["y lift"] == pytest.approx(1.0)


def test_label_clusters_get_lift():
    # Rows a, a, b, b with a _|_ b: the same-label neighbour weighs 1, the others 1/2, so
    # it gets half the off-diagonal mass against a base rate of 1/3.
    frozen = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    stats = weight_structure.batch_statistics(frozen, {"y": np.array([0, 0, 1, 1])}, "paper")
    assert stats["y lift"] == pytest.approx(1.5)
    assert stats["true_pair_mass"] == pytest.approx(1 / 3)
