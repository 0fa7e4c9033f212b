"""One pooled estimator for many racks gives what a pool per rack gives, in any batching."""

from __future__ import annotations

import numpy as np

from streams.codec import GpuFrame, decode_gpu_frame, encode_frame, gpu_batch
from streams.modelpool import RackModels
from streams.rackmodel import RackModel
from tests.streams.frames import gpu_columns

T0 = 1_795_000_000_000


def _frames(rack: str, n: int, steps: int, seed: int) -> list[GpuFrame]:
    rng = np.random.default_rng(seed)
    r, c, cool = 0.02, 500.0, 45.0
    a = np.exp(-1.0 / (r * c))
    die = np.full(n, cool)
    out = []
    for k in range(steps):
        power = rng.uniform(300, 1800, n)
        die = cool + a * (die - cool) + (1 - a) * r * power
        cols = gpu_columns(n, seed)
        cols["power_w"] = power.astype(np.float32)
        cols["temp_gpu_c"] = np.round(die, 1).astype(np.float32)
        data = encode_frame(gpu_batch(T0 + 1000 * k, rack, cols))
        out.append(decode_gpu_frame(data, key=rack.encode(), now_ms=None))
    return out


def _same_model(a: RackModel, b: RackModel) -> None:
    sa, sb = a.estimator.snapshot(), b.estimator.snapshot()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    np.testing.assert_array_equal(a.last_ts_ms, b.last_ts_ms)
    np.testing.assert_array_equal(a.temp_gpu_c, b.temp_gpu_c)
    assert a.coolant_c == b.coolant_c


def test_pool_matches_one_model_per_rack_in_any_batching() -> None:
    racks = {f"R{i}": _frames(f"R{i}", 4 + i, 30, seed=i) for i in range(5)}
    alone = {r: RackModels() for r in racks}  # one rack each, one frame at a time
    pool = RackModels()
    # batches mixing racks, with several frames of one rack in one batch (a backlog)
    order = [(r, k) for k in range(30) for r in racks]
    for start in range(0, len(order), 13):
        batch = [(racks[r][k], 46.0) for r, k in order[start : start + 13]]
        pool.update(batch)
        for r, k in order[start : start + 13]:
            alone[r].update([(racks[r][k], 46.0)])
    for r, one in alone.items():
        _same_model(pool.get(r), one.get(r))
        assert pool.summary(r) == one.summary(r)
        assert pool.view(r) == one.view(r)
    got = pool.residual_batch(["R2"])
    want = alone["R2"].residual_batch(["R2"])
    assert got.equals(want)


def test_put_get_drop_and_compaction_keep_every_rack() -> None:
    pool = RackModels()
    frames = {f"R{i:03d}": _frames(f"R{i:03d}", 72, 3, seed=i) for i in range(40)}
    for k in range(3):
        pool.update([(f[k], 40.0) for f in frames.values()])
    before = {r: pool.get(r) for r in frames}
    for r in list(frames)[:30]:
        pool.drop(r)  # most racks leave: the pool compacts
    assert pool.used < 20 * 72 and len(pool) == 10
    for r in list(frames)[30:]:
        _same_model(pool.get(r), before[r])
    packed = pool.checkpoints([*frames, "gone"])
    assert set(packed) == set(list(frames)[30:])
    for r, data in packed.items():
        assert data == pool.get(r).to_bytes()
    restored = RackModels()
    for r in frames:
        restored.put(r, RackModel.from_bytes(before[r].to_bytes()))
    for r in frames:
        _same_model(restored.get(r), before[r])


def test_a_rack_growing_more_gpus_keeps_its_fit() -> None:
    pool = RackModels()
    small = _frames("R1", 4, 5, seed=1)
    pool.update([(f, 40.0) for f in small])
    fit_before = pool.get("R1").estimator.r_k_w
    pool.update([(_frames("R1", 8, 1, seed=2)[0], 40.0)])
    assert pool.slots["R1"].size == 8
    # the first GPUs kept their regression (one more step on top), the new ones started
    assert pool.get("R1").estimator.n_updates[:4].min() >= 4
    assert np.isfinite(fit_before).all()


def test_empty_residuals() -> None:
    assert RackModels().residual_batch(["nope"]).num_rows == 0


def test_restore_keeps_the_longer_history_per_gpu() -> None:
    # a fitted rack (40 updates) checkpointed; after a restart a few frames arrive before
    # the checkpoint is restored and start a fresh fit from the priors
    frames = _frames("R1", 6, 60, seed=4)
    fitted = RackModels()
    fitted.update([(f, 45.0) for f in frames[:41]])
    ckpt = fitted.get("R1").to_bytes()
    young = RackModels()
    young.update([(f, 45.0) for f in frames[50:55]])
    assert young.restore("R1", RackModel.from_bytes(ckpt))
    got = young.get("R1")
    np.testing.assert_array_equal(got.estimator.n_updates, np.full(6, 40))
    _same_model(got, RackModel.from_bytes(ckpt))
    # the other way round: a stale checkpoint never rolls a longer fit back
    assert not fitted.restore("R1", RackModel.from_bytes(_young_ckpt(frames)))
    assert fitted.get("R1").to_bytes() == ckpt
    # a rack not held is simply taken
    empty = RackModels()
    assert empty.restore("R1", RackModel.from_bytes(ckpt))
    _same_model(empty.get("R1"), RackModel.from_bytes(ckpt))


def _young_ckpt(frames: list[GpuFrame]) -> bytes:
    pool = RackModels()
    pool.update([(f, 45.0) for f in frames[:3]])
    return pool.get("R1").to_bytes()


def test_restore_merges_gpu_by_gpu_and_grows_the_rack() -> None:
    small = _frames("R1", 4, 30, seed=5)  # checkpoint of 4 GPUs, 29 updates each
    ckpt = RackModels()
    ckpt.update([(f, 45.0) for f in small])
    held = RackModels()
    held.update([(f, 45.0) for f in _frames("R1", 8, 5, seed=6)])  # 8 GPUs, 4 updates
    held.restore("R1", ckpt.get("R1"))
    counts = held.get("R1").estimator.n_updates
    np.testing.assert_array_equal(counts, [29, 29, 29, 29, 4, 4, 4, 4])


def test_samples_already_taken_are_not_fed_again() -> None:
    # a restarted worker re-reads frames older than its restored model: they must not
    # count twice nor make a step of negative length
    frames = _frames("R1", 5, 40, seed=7)
    once = RackModels()
    once.update([(f, 45.0) for f in frames[:30]])
    twice = RackModels()
    twice.update([(f, 45.0) for f in frames[:30]])
    twice.update([(f, 45.0) for f in frames[20:30]])  # the replay
    _same_model(twice.get("R1"), once.get("R1"))
    for pool in (once, twice):
        pool.update([(f, 45.0) for f in frames[30:]])
    _same_model(twice.get("R1"), once.get("R1"))
    assert twice.get("R1").estimator.n_updates.tolist() == [39] * 5


def test_a_corrupt_checkpoint_is_refused_with_a_reason() -> None:
    import pytest

    from streams.rackmodel import CheckpointError

    good = RackModels()
    good.update([(f, 45.0) for f in _frames("R1", 3, 3, seed=8)])
    data = good.get("R1").to_bytes()
    for bad in (b"", b"garbage", data[:-7], b"PK\x03\x04broken zip"):
        with pytest.raises(CheckpointError):
            RackModel.from_bytes(bad)


def test_a_gap_of_many_steps_only_seeds_and_a_new_rate_is_followed() -> None:
    frames = _frames("R1", 3, 160, seed=9)
    pool = RackModels()
    pool.update([(f, 45.0) for f in frames[:30]])
    before = pool.get("R1").estimator.snapshot()
    pool.update([(frames[60], 45.0)])  # 31 s after the last sample: a restart's gap
    after = pool.get("R1").estimator.snapshot()
    np.testing.assert_array_equal(after["stats"], before["stats"])
    np.testing.assert_array_equal(after["n_updates"], before["n_updates"])
    pool.update([(frames[61], 45.0)])  # the next 1 s step fits again
    assert pool.get("R1").estimator.n_updates.tolist() == [30] * 3
    # a source that goes from 1 s to 10 s steps: one sample seeds, then 10 s steps fit
    for k in (71, 81, 91):
        pool.update([(frames[k], 45.0)])
    assert pool.get("R1").estimator.n_updates.tolist() == [32] * 3
    # a restored checkpoint knows its usual step (10 s now): 28 s is a step, 68 s a gap
    for k, updates in ((119, 33), (159, 32)):
        restored = RackModels()
        restored.put("R1", RackModel.from_bytes(pool.get("R1").to_bytes()))
        restored.update([(frames[k], 45.0)])
        assert restored.get("R1").estimator.n_updates.tolist() == [updates] * 3
