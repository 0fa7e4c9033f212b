"""One contract for every registered detector (after river's estimator checks)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models.base import Detector, squash
from models.registry import DETECTORS, make_detector
from streams.arraypack import pack_arrays, unpack_arrays
from tests.models.traces import Trace, make_trace, roc_auc
from twin.errors import ConfigError

NAMES = sorted(DETECTORS)


def _run(det: Detector, tr: Trace, rows: slice = slice(None)) -> np.ndarray:
    out = []
    for i in range(len(tr.ts_s))[rows]:
        aux = tr.aux[i] if tr.aux is not None and det.aux != "no" else None
        out.append(det.update(tr.ts_s[i], tr.x[i], aux=aux, group=tr.group))
    return np.array(out)


def _trace_for(det: Detector) -> Trace:
    tr = make_trace(det.kind)
    if tr.aux is None and det.aux == "required":
        raise AssertionError(f"{det.name}: its trace has no companion series")
    return tr


@pytest.mark.parametrize("name", NAMES)
def test_fault_trace_scores_auc_well_above_chance(name: str) -> None:
    det = make_detector(name)
    tr = _trace_for(det)
    scores = _run(det, tr)
    auc = roc_auc(scores[tr.scored], tr.label[tr.scored])
    assert auc >= 0.9, f"{name} on a {det.kind} trace: AUC {auc:.3f}"
    # Quiet where nothing is wrong: the healthy series score below 0.5 almost always.
    healthy = tr.scored & ~tr.label.any(axis=0)[None, :]
    assert (scores[healthy] >= 0.5).mean() < 0.002


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_restore_continues_bit_for_bit(name: str) -> None:
    det = make_detector(name)
    tr = _trace_for(det)
    _run(det, tr, slice(0, 1000))
    snap = det.snapshot()
    assert all(isinstance(v, np.ndarray) for v in snap.values())
    again = det.clone()
    again.restore(unpack_arrays(pack_arrays(snap)))  # as a Faust table value would
    assert again.n_series == det.n_series
    a = _run(det, tr, slice(1000, None))
    b = _run(again, tr, slice(1000, None))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_same_parameters_same_scores(name: str) -> None:
    det = make_detector(name)
    tr = _trace_for(det)
    other = type(det)(**det.params())  # constructor args are stored under their own names
    assert other.params() == det.params()
    assert np.array_equal(_run(det, tr), _run(other, tr))


@pytest.mark.parametrize("name", NAMES)
def test_score_does_not_learn(name: str) -> None:
    det = make_detector(name)
    tr = _trace_for(det)
    _run(det, tr, slice(0, 600))
    before = det.snapshot()
    aux = tr.aux[600] if tr.aux is not None and det.aux != "no" else None
    s = det.score(tr.ts_s[600], tr.x[600], aux=aux, group=tr.group)
    after = det.snapshot()
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)
    assert np.array_equal(s, det.update(tr.ts_s[600], tr.x[600], aux=aux, group=tr.group))


@pytest.mark.parametrize("name", NAMES)
def test_nan_missing_late_and_constant_series(name: str) -> None:
    det = make_detector(name)
    tr = _trace_for(det)
    rng = np.random.default_rng(5)
    x = tr.x.copy()
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 3] = np.nan  # a series that never reports
    x[:, 5] = x[0, 5]  # a constant series
    x[100, 6] = np.inf
    aux = tr.aux.copy() if tr.aux is not None else None
    if aux is not None:
        aux[rng.random(aux.shape) < 0.1] = np.nan
        aux[:, 5] = aux[0, 5]  # constant with a constant companion
    # Irregular time: gaps of up to an hour.
    ts = tr.ts_s[0] + np.cumsum(rng.choice([1.0, 1.0, 1.0, 7.0, 3600.0], len(tr.ts_s)))
    out = []
    for i in range(len(ts)):
        m = 10 if i < 700 else x.shape[1]  # series 10.. appear late
        a = aux[i, :m] if aux is not None and det.aux != "no" else None
        s = det.update(ts[i], x[i, :m], aux=a, group=tr.group[:m])
        assert s.shape == (m,)
        out.append(np.pad(s, (0, x.shape[1] - m)))
    scores = np.array(out)
    assert np.isfinite(scores).all()
    assert ((scores >= 0.0) & (scores <= 1.0)).all()
    assert (scores[:, 3] == 0.0).all()
    if name in ("gpu_residual", "r_trend"):
        assert (scores[:, 5] < 0.5).all()  # its group's common part is its neighbours'
    else:
        assert (scores[:, 5] == 0.0).all()
    assert det.n_series == x.shape[1]
    # a sample not after the series' previous one is refused, not learnt
    assert (
        det.update(ts[0], x[-1], group=tr.group, aux=aux[-1] if aux is not None else None) == 0.0
    ).all()


@pytest.mark.parametrize("name", NAMES)
def test_index_addresses_a_subset_like_a_full_call(name: str) -> None:
    # Calls per rack (as an agent gets them) score as one call over all series; the
    # series of each call are in shuffled order.
    det = make_detector(name)
    tr = _trace_for(det)
    whole = det.clone()
    racks = [np.array([7, 2, 0, 4, 1, 3, 5, 6]), np.array([15, 9, 11, 8, 10, 12, 13, 14])]
    for i in range(800):
        aux = tr.aux[i] if tr.aux is not None and det.aux != "no" else None
        full = whole.update(tr.ts_s[i], tr.x[i], aux=aux, group=tr.group)
        for ix in racks:
            part = det.update(
                tr.ts_s[i],
                tr.x[i, ix],
                aux=None if aux is None else aux[ix],
                group=tr.group[ix],
                index=ix,
            )
            assert np.array_equal(full[ix], part)


@pytest.mark.parametrize("name", NAMES)
def test_restore_refuses_a_foreign_snapshot(name: str) -> None:
    det = make_detector(name, 4)
    snap = det.snapshot()
    key = next(iter(snap))
    with pytest.raises(ConfigError):
        det.restore({k: v for k, v in snap.items() if k != key})
    if name != "combined":
        bad = dict(snap)
        bad[key] = np.zeros(3)
        with pytest.raises(ConfigError):
            det.restore(bad)


def test_unknown_detector_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="valid: balance, combined, coolant_ref_drift, drift"):
        make_detector("isolation_forest")


def test_resistance_trend_tells_one_gpu_from_its_rack() -> None:
    det = make_detector("r_trend")
    tr = make_trace("r_trend")
    own, common = [], []
    for i in range(len(tr.ts_s)):
        det.update(tr.ts_s[i], tr.x[i], group=tr.group)
        own.append(det.last_own)  # type: ignore[attr-defined]
        common.append(det.last_common)  # type: ignore[attr-defined]
    o, c = np.array(own), np.array(common)
    assert o[1250, 0] > 0.5 and c[1250, 0] < 0.1  # fouling: GPU 0 alone
    assert (c[1700, 8:] > 0.5).all() and (o[1700, 8:] < 0.1).all()  # the whole rack


@given(
    hnp.arrays(np.float64, 6, elements=st.floats(allow_nan=True, allow_infinity=True)),
    st.sampled_from(NAMES),
)
@settings(max_examples=60, deadline=None)
def test_any_values_give_scores_in_unit_interval(values: np.ndarray, name: str) -> None:
    det = make_detector(name)
    rng = np.random.default_rng(0)
    for t in range(40):
        x = 1.0 + rng.normal(0.0, 0.1, 6) if t < 39 else values
        s = det.update(float(t), x, aux=np.abs(x) + 1.0 if det.aux != "no" else None)
        assert np.isfinite(s).all() and ((s >= 0.0) & (s <= 1.0)).all()


@given(st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=2, max_size=20))
def test_squash_is_monotone_in_unit_interval_and_half_at_threshold(stats: list[float]) -> None:
    s = np.sort(np.array(stats))
    q = squash(s, 3.0)
    assert ((q >= 0.0) & (q <= 1.0)).all() and (np.diff(q) >= 0.0).all()
    assert squash(np.array([3.0]), 3.0)[0] == pytest.approx(0.5)
    assert squash(np.array([np.nan, -1.0]), 3.0).tolist() == [0.0, 0.0]
