"""Orbax checkpoints: round trip, other mesh, keep-N, damaged files, preemption flag."""

import os
import pathlib
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from cwcl_jax import checkpointing, sharding


def _state(scale: float = 1.0):
    return {
        "params": {"w": jnp.arange(64.0).reshape(8, 8) * scale, "b": jnp.ones((8,)) * scale},
        "step": jnp.int32(3),
        "half": jnp.full((4, 2), scale, jnp.bfloat16),
    }


def _placed(state, mesh, rules=((".*", "fsdp"),)):
    shardings = sharding.tree_shardings(state, mesh, rules)
    return jax.device_put(state, shardings), shardings


def _assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_onto_a_different_mesh(tmp_path):
    saved, _ = _placed(_state(), sharding.create_mesh({"data": -1}))
    ck = checkpointing.Checkpointer(tmp_path)
    ck.save(5, saved, {"epoch": 1, "position": 40}, {"batch_size": 16, "mesh": {"data": -1}})
    ck.wait()
    assert ck.latest_step() == 5
    # Restore with fsdp=4 shardings: values identical, placement as requested.
    target, target_shardings = _placed(_state(0.0), sharding.create_mesh({"data": 2, "fsdp": 4}))
    abstract = sharding.abstract_with_shardings(target, target_shardings)
    step, state, data_state = checkpointing.Checkpointer(tmp_path).restore_latest(abstract)
    assert step == 5 and data_state == {"epoch": 1, "position": 40}
    _assert_tree_equal(state, saved)
    assert state["params"]["w"].sharding == target_shardings["params"]["w"]
    assert state["params"]["w"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")


def test_relative_directory_saves_and_restores(tmp_path, monkeypatch):
    # `--workdir runs/demo` gives a relative path; Orbax needs absolute ones.
    monkeypatch.chdir(tmp_path)
    saved, shardings = _placed(_state(), sharding.create_mesh({"data": -1}))
    ck = checkpointing.Checkpointer(os.path.join("runs", "ckpt"))
    ck.save(2, saved, {"position": 2}, {})
    ck.wait()
    assert (tmp_path / "runs" / "ckpt" / "2").is_dir()
    abstract = sharding.abstract_with_shardings(saved, shardings)
    step, state, _ = checkpointing.Checkpointer("runs/ckpt").restore_latest(abstract)
    assert step == 2
    _assert_tree_equal(state, saved)


def test_keeps_last_n_and_empty_dir_restores_none(tmp_path):
    mesh = sharding.create_mesh({"data": -1})
    state, shardings = _placed(_state(), mesh)
    ck = checkpointing.Checkpointer(tmp_path / "ckpt", keep=2)
    abstract = sharding.abstract_with_shardings(state, shardings)
    assert ck.restore_latest(abstract) is None
    for step in (1, 2, 3):
        ck.save(step, state, {"position": step}, {})
    ck.wait()
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [2, 3]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        checkpointing.Checkpointer(tmp_path / "other", keep=0)


def _damage_array_files(step_dir: pathlib.Path) -> None:
    """Flip bytes in the middle of every array data file of the state item."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, "expected OCDBT data files"
    for path in files:
        raw = bytearray(path.read_bytes())
        for i in range(len(raw) // 2, len(raw) // 2 + 8):
            raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage",
    [
        _damage_array_files,
        lambda d: [p.unlink() for p in (d / "state").rglob("manifest.ocdbt")],
        lambda d: (d / "meta" / "metadata").write_text("{not json"),
    ],
    ids=["flipped-bytes", "missing-manifest", "broken-meta"],
)
def test_damaged_latest_falls_back_with_warning(tmp_path, damage):
    mesh = sharding.create_mesh({"data": -1})
    ck = checkpointing.Checkpointer(tmp_path)
    first, shardings = _placed(_state(1.0), mesh)
    ck.save(1, first, {"position": 1}, {})
    second, _ = _placed(_state(2.0), mesh)
    ck.save(2, second, {"position": 2}, {})
    ck.wait()
    damage(tmp_path / "2")
    warnings = []
    absl_logging.get_absl_logger().addFilter(lambda r: warnings.append(r.getMessage()) or True)
    abstract = sharding.abstract_with_shardings(first, shardings)
    step, state, data_state = checkpointing.Checkpointer(tmp_path).restore_latest(abstract)
    assert step == 1 and data_state == {"position": 1}
    _assert_tree_equal(state, first)
    assert any("2 is damaged" in w and "falling back" in w for w in warnings)
    # The damaged step is moved aside so the resumed run can save step 2 again.
    assert (tmp_path / "damaged_2").is_dir() and not (tmp_path / "2").exists()


def test_all_damaged_raises_naming_directory(tmp_path):
    mesh = sharding.create_mesh({"data": -1})
    state, shardings = _placed(_state(), mesh)
    ck = checkpointing.Checkpointer(tmp_path)
    ck.save(1, state, {}, {})
    ck.wait()
    _damage_array_files(tmp_path / "1")
    abstract = sharding.abstract_with_shardings(state, shardings)
    with pytest.raises(checkpointing.CheckpointError, match=f"No intact checkpoint in {tmp_path}"):
        checkpointing.Checkpointer(tmp_path).restore_latest(abstract)


def test_fingerprint_is_mesh_independent_and_sensitive():
    state = _state()
    on_data, _ = _placed(state, sharding.create_mesh({"data": -1}))
    on_fsdp, _ = _placed(state, sharding.create_mesh({"fsdp": -1}))
    reference = checkpointing.fingerprint(state)
    assert checkpointing.fingerprint(on_data) == reference == checkpointing.fingerprint(on_fsdp)
    flipped = np.asarray(state["params"]["w"]).copy()
    flipped.view(np.uint32)[3, 5] ^= 1  # one bit of one float
    changed = {**state, "params": {**state["params"], "w": jnp.asarray(flipped)}}
    assert checkpointing.fingerprint(changed) != reference
    swapped = np.asarray(state["params"]["w"])[::-1]  # same multiset of values, moved
    moved = {**state, "params": {**state["params"], "w": jnp.asarray(swapped)}}
    assert checkpointing.fingerprint(moved) != reference


def test_preemption_watcher_sets_flag_on_sigterm():
    watcher = checkpointing.PreemptionWatcher()
    try:
        assert not watcher.reached(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.reached(1)
    finally:
        watcher.close()
    assert signal.getsignal(signal.SIGTERM) is not None


def _saved_steps(directory: pathlib.Path, steps=(1, 2)):
    """Checkpoints of `_state(step)` at each step; returns the restore target."""
    mesh = sharding.create_mesh({"data": -1})
    ck = checkpointing.Checkpointer(directory)
    for step in steps:
        state, shardings = _placed(_state(float(step)), mesh)
        ck.save(step, state, {"position": step}, {})
    ck.wait()
    ck.close()
    return sharding.abstract_with_shardings(state, shardings)


def test_read_only_restore_of_a_given_step(tmp_path):
    abstract = _saved_steps(tmp_path)
    ck = checkpointing.Checkpointer(tmp_path, read_only=True)
    assert ck.all_steps() == [1, 2] and ck.resolve_step(None) == 2
    state, data_state = ck.restore(1, abstract)  # not the latest
    assert data_state == {"position": 1}
    _assert_tree_equal(state, _state(1.0))
    listed = r"step 7 in .*available steps: \[1, 2\]"
    with pytest.raises(checkpointing.CheckpointError, match=listed):
        ck.restore(7, abstract)


def test_read_only_missing_or_empty_directory_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    named = f"no checkpoint directory {re.escape(str(missing))}$"
    with pytest.raises(checkpointing.CheckpointError, match=named):
        checkpointing.Checkpointer(missing, read_only=True)
    assert not missing.exists()  # read-only creates nothing
    (tmp_path / "empty").mkdir()
    ck = checkpointing.Checkpointer(tmp_path / "empty", read_only=True)
    with pytest.raises(checkpointing.CheckpointError, match="empty holds no checkpoint"):
        ck.resolve_step(None)


@pytest.mark.parametrize(
    "damage",
    [_damage_array_files, lambda d: (d / "meta" / "metadata").write_text("{not json")],
    ids=["flipped-bytes", "broken-meta"],
)
def test_read_only_damaged_step_is_an_error_and_left_in_place(tmp_path, damage):
    abstract = _saved_steps(tmp_path)
    damage(tmp_path / "2")
    before = sorted(p.name for p in tmp_path.iterdir())
    ck = checkpointing.Checkpointer(tmp_path, read_only=True)
    damaged = f"checkpoint {re.escape(str(tmp_path / '2'))} is damaged"
    with pytest.raises(checkpointing.CheckpointError, match=damaged):
        ck.restore(2, abstract)
    with pytest.raises(checkpointing.CheckpointError, match="read-only; not renaming step 2"):
        ck.restore_latest(abstract)  # the training fallback refuses to rename here
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    state, _ = ck.restore(1, abstract)  # the intact step still restores
    _assert_tree_equal(state, _state(1.0))
