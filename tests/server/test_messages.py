"""`fl_userdp.messages`: the weights and the update travel as one flat array and come back bit for bit."""
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fl_userdp.messages import flat_record, split_record


def test_one_flat_array_round_trips_every_bit():
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 1, 2)]
    for dtype in (np.float32, np.float64):
        arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
        rec = flat_record(arrays)
        assert list(rec.keys()) == ["flat"]
        back = split_record(rec, shapes)
        assert [b.shape for b in back] == shapes
        for a, b in zip(arrays, back):
            assert b.dtype == dtype and a.tobytes() == b.tobytes()
    total = rng.standard_normal(12 + 5 + 4)
    assert np.concatenate([b.ravel() for b in split_record(flat_record(total), shapes)]).tobytes() == total.tobytes()


def test_a_record_of_another_shape_is_refused():
    shapes = [(2, 2), (3,)]
    with pytest.raises(ValueError, match="expected a flat array of 7 values, got shape"):
        split_record(flat_record(np.zeros(6)), shapes)
    with pytest.raises(ValueError, match="expected one array 'flat'"):
        split_record(ArrayRecord({"0000": Array(np.zeros(4)), "0001": Array(np.zeros(3))}), shapes)


def test_mixed_float_dtypes_come_back_as_they_were():
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((3, 2)).astype(np.float16), rng.standard_normal(4).astype(np.float32),
              rng.standard_normal(2)]
    shapes, dtypes = [a.shape for a in arrays], [a.dtype for a in arrays]
    rec = flat_record(arrays)
    assert rec["flat"].numpy().dtype == np.float64                     # the widest, exact for the others
    back = split_record(rec, shapes, dtypes)
    assert [b.dtype for b in back] == dtypes and all(a.tobytes() == b.tobytes() for a, b in zip(arrays, back))
