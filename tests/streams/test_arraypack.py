"""Array packs round-trip every array exactly and refuse what they did not write."""

from __future__ import annotations

import numpy as np
import pytest

from streams.arraypack import ArrayPackError, pack_arrays, unpack_arrays


def test_round_trip_shapes_and_dtypes() -> None:
    arrays = {
        "scalar": np.array(0.999),
        "text": np.array("rls"),
        "ints": np.arange(5, dtype=np.int64),
        "u8": np.arange(3, dtype=np.uint8),
        "cov": np.random.default_rng(0).normal(size=(72, 2, 2)),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "empty": np.zeros(0),
        "nan": np.array([np.nan, np.inf, -0.0]),
    }
    back = unpack_arrays(pack_arrays(arrays))
    assert back.keys() == arrays.keys()
    for k, a in arrays.items():
        assert back[k].shape == a.shape and back[k].dtype == a.dtype, k
        np.testing.assert_array_equal(back[k], a)
        assert back[k].flags.writeable


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PK\x03\x04zip", "bad magic"),
        (pack_arrays({"a": np.arange(4)})[:-3], "truncated"),
        (pack_arrays({"a": np.arange(4)}) + b"x", "trailing"),
        (b"TWA1\xff\xff\x00\x00{", "corrupt"),
    ],
)
def test_refuses_what_it_did_not_write(data: bytes, reason: str) -> None:
    with pytest.raises(ArrayPackError, match=reason):
        unpack_arrays(data)


def test_object_arrays_are_refused() -> None:
    with pytest.raises(ArrayPackError, match="object"):
        pack_arrays({"o": np.array([object()])})


def test_a_compressed_pack_reads_back_the_same_and_a_bomb_is_refused() -> None:
    import zlib

    from streams.arraypack import MAGIC_Z, MAX_UNPACKED_BYTES

    arrays = {"keys": np.frombuffer(b"R0001/inlet_temp_c\n" * 500, np.uint8), "x": np.zeros(9)}
    small = pack_arrays(arrays, compress=True)
    assert small[:4] == MAGIC_Z and len(small) < len(pack_arrays(arrays)) / 10
    back = unpack_arrays(small)
    assert all(np.array_equal(back[k], v) for k, v in arrays.items())
    with pytest.raises(ArrayPackError, match="corrupt compressed"):
        unpack_arrays(MAGIC_Z + b"not zlib")
    bomb = MAGIC_Z + zlib.compress(b"TWA1" + bytes(MAX_UNPACKED_BYTES + 1))
    assert len(bomb) < 100_000
    with pytest.raises(ArrayPackError, match="over"):
        unpack_arrays(bomb)
