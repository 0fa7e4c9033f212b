from __future__ import annotations

import numpy as np

from streams.codec import (
    decode_gpu_frame,
    decode_points_frame,
    encode_frame,
    gpu_batch,
    points_batch,
)
from streams.modelpool import RackModels
from streams.rackmodel import RackModel, coolant_at_plates_c
from streams.runtime import TwinRuntime
from tests.streams.frames import gpu_columns

T0 = 1_795_000_000_000


def _frames(n_gpus: int, steps: int, r_k_w: float, c_j_k: float, coolant_c: float):  # type: ignore[no-untyped-def]
    """First-order die response to a random power schedule, NVML-like integer temperatures."""
    rng = np.random.default_rng(1)
    tau = r_k_w * c_j_k
    a = np.exp(-1.0 / tau)
    die = np.full(n_gpus, coolant_c)
    for k in range(steps):
        power = rng.uniform(300, 1800, n_gpus)
        # power is the average over the interval just ended (NVML convention)
        die = coolant_c + a * (die - coolant_c) + (1 - a) * r_k_w * power
        cols = gpu_columns(n_gpus)
        cols["power_w"] = power.astype(np.float32)
        cols["temp_gpu_c"] = np.round(die).astype(np.float32)
        batch = gpu_batch(T0 + 1000 * k, "R1", cols)
        yield decode_gpu_frame(encode_frame(batch), key=b"R1", now_ms=None)


def test_rack_model_fits_r_and_c_from_frames() -> None:
    pool = RackModels()
    for frame in _frames(8, 1200, r_k_w=0.02, c_j_k=500.0, coolant_c=46.0):
        pool.update([(frame, 46.0)])
    model = pool.get("R1")
    np.testing.assert_allclose(model.estimator.r_k_w, 0.02, rtol=0.05)
    np.testing.assert_allclose(model.estimator.c_j_k, 500.0, rtol=0.15)
    view = pool.view("R1")
    assert len(view["r_k_w"]) == 8 and all(abs(x) < 2.0 for x in view["residual_k"])
    restored = RackModel.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(restored.estimator.r_k_w, model.estimator.r_k_w)
    np.testing.assert_array_equal(restored.last_ts_ms, model.last_ts_ms)


def test_coolant_at_plates_from_manifold_points() -> None:
    assert coolant_at_plates_c({}, 5.0) is None
    assert coolant_at_plates_c({"inlet_temp_c": 45.0}, 5.0) == 45.0
    # design flow: the mean of inlet and outlet
    assert (
        coolant_at_plates_c({"inlet_temp_c": 45, "outlet_temp_c": 55, "flow_kg_s": 5.0}, 5.0)
        == 50.0
    )


def test_runtime_fits_racks_without_manifold_sensors_against_a_modelled_coolant() -> None:
    rt = TwinRuntime(partitions=8, clock_ms=lambda: T0)
    frames = list(_frames(4, 3, 0.02, 500.0, 45.0))
    rt.apply_gpu(frames[0], "g")
    # no sensors: the supply setpoint plus half the rise of the rack's heat (1.54 W per GPU
    # watt) through its design flow (twin/coolant_ref.py); the estimator fits its offset
    q_w = float(np.sum(frames[0].columns["power_w"]))
    want = rt.coolant_supply_c + 0.5 * 1.54 * q_w / (rt.rack_design_flow_kg_s * 3980.0)
    assert "R1" in rt.models and abs(rt.models.coolant_c["R1"] - want) < 1e-9
    pts = points_batch(T0, "R1", {"inlet_temp_c": 45.0, "outlet_temp_c": 55.0, "flow_kg_s": 5.02})
    rt.apply_points(decode_points_frame(encode_frame(pts), key=b"R1", now_ms=None), "t")
    rt.apply_gpu(frames[1], "g")
    rt.apply_gpu(frames[2], "g")
    assert "R1" in rt.models and rt.models.coolant_c["R1"] == 50.0
    assert set(rt.take_model_checkpoints()) == {"R1"}
    assert rt.rack_model("R1") is not None


def test_residual_rows_are_measured_minus_expected() -> None:
    pool = RackModels()
    for frame in _frames(4, 50, r_k_w=0.02, c_j_k=500.0, coolant_c=46.0):
        pool.update([(frame, 46.0)])
    batch = pool.residual_batch(["R1"])
    assert batch.num_rows == 4
    assert batch.column("entity").to_pylist() == ["R1/G00", "R1/G01", "R1/G02", "R1/G03"]
    m, e, r = (batch.column(c).to_numpy() for c in ("measured", "expected", "residual"))
    np.testing.assert_allclose(m - e, r, atol=1e-9)
    assert set(batch.column("quantity").to_pylist()) == {"temp_gpu_c"}


def test_kpi_batch_carries_the_facility_figures() -> None:
    rt = TwinRuntime(partitions=8, clock_ms=lambda: T0)
    pts = points_batch(T0, "SITE", {"it_power_w": 1e6, "facility_power_w": 1.1e6})
    rt.apply_points(decode_points_frame(encode_frame(pts), key=b"SITE", now_ms=None), "p")
    kpi = dict(
        zip(
            rt.kpi_batch().column("name").to_pylist(),
            rt.kpi_batch().column("value").to_pylist(),
            strict=True,
        )
    )
    assert kpi["pue"] == 1.1 and kpi["it_power_w"] == 1e6
