"""Values on the wire (JSON with pickled leaves) and code checked without being run."""

from __future__ import annotations

import base64
import json
import math
import pickle
from enum import Enum
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from lattice.exceptions import InvalidCodeError
from lattice.serialization import (
    PICKLE_KEY,
    decode_code,
    decode_value,
    dumps_b64,
    encode_value,
    loads_b64,
)


class Colour(str, Enum):
    RED = "red"


def roundtrip(value: Any) -> Any:
    """Encode, pass through real JSON text, decode."""
    return decode_value(json.loads(json.dumps(encode_value(value), allow_nan=False)))


@pytest.mark.parametrize(
    "value",
    [
        (1, 2, "three"),
        {1, 2, 3},
        frozenset({"a"}),
        b"\x00\xffbytes",
        {1: "int key", (2, 3): "tuple key"},
        {"a": 1, PICKLE_KEY: "a user key that looks like ours"},
        Colour.RED,
        math.inf,
        [1, (2, 3), {"b": {4, 5}}, None, True, 1.5, "s"],
        {"outer": {"inner": [b"x", {"t": (1,)}], "n": -0.0}},
    ],
    ids=repr,
)
def test_values_json_cannot_hold_round_trip_with_their_types(value: Any) -> None:
    back = roundtrip(value)

    assert back == value
    assert type(back) is type(value)


def test_nan_round_trips() -> None:
    back = roundtrip({"score": math.nan, "ok": 1.0})

    assert math.isnan(back["score"]) and back["ok"] == 1.0


def test_numpy_arrays_round_trip_with_dtype_and_shape() -> None:
    value = {"emb": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": [np.int64(7)]}

    back = roundtrip(value)

    np.testing.assert_array_equal(back["emb"], value["emb"])
    assert back["emb"].dtype == np.float32 and back["emb"].shape == (2, 3)
    assert back["ids"] == [7] and type(back["ids"][0]) is np.int64


def test_json_native_values_stay_plain_json() -> None:
    value = {"a": [1, "x", None, True, 2.5], "b": {"c": -3}}

    assert encode_value(value) == value


def test_only_the_smallest_enclosing_leaf_is_pickled() -> None:
    encoded = encode_value({"plain": [1, 2], "tuple": (1, 2), "nested": {"bytes": b"x", "n": 1}})

    assert encoded["plain"] == [1, 2]
    assert set(encoded["tuple"]) == {PICKLE_KEY}
    assert encoded["nested"]["n"] == 1
    assert set(encoded["nested"]["bytes"]) == {PICKLE_KEY}
    assert loads_b64(encoded["tuple"][PICKLE_KEY]) == (1, 2)


def test_a_value_that_cannot_be_pickled_raises() -> None:
    import threading

    with pytest.raises(TypeError):
        encode_value({"lock": threading.Lock()})


def test_dumps_and_loads_b64() -> None:
    def f(x: int) -> int:
        return x + 1

    text = dumps_b64(f)

    assert isinstance(text, str)
    assert loads_b64(text)(1) == 2


# --- code -------------------------------------------------------------------------------------


def test_decode_code_returns_the_pickle_bytes_of_a_function() -> None:
    def f() -> int:
        return 1

    raw = cloudpickle.dumps(f)

    assert decode_code(base64.b64encode(raw).decode()) == raw


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "code_ser is not valid base64"),
        ("YWJ", "code_ser is not valid base64"),  # bad padding
        ("héllo", "code_ser is not valid base64"),
        ("", "code_ser is empty"),
        (base64.b64encode(b"hello, world").decode(), "code_ser is not a pickled function"),
        (base64.b64encode(cloudpickle.dumps(len)[:-3]).decode(), "not a pickled function"),
    ],
)
def test_decode_code_rejects_what_is_not_base64_pickle(text: str, message: str) -> None:
    with pytest.raises(InvalidCodeError, match=message):
        decode_code(text)


def test_decode_code_names_the_field_it_checks() -> None:
    with pytest.raises(InvalidCodeError, match=r"^args is not valid base64"):
        decode_code("%%%", "args")


class _Touch:
    """Unpickling this creates a file: a stand-in for any code a pickle could run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_decode_code_checks_a_pickle_without_executing_it(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    raw = pickle.dumps(_Touch(marker))

    assert decode_code(base64.b64encode(raw).decode()) == raw
    assert not marker.exists()

    # The same bytes do run code when unpickled: the check above is what kept it from running.
    pickle.loads(raw)
    assert marker.exists()
