"""The job hash must equal the original JavaScript worker's for every input."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from runpack import hashing
from runpack.hashing import canonical_json, job_canonical, job_hash, js_stringify, utf8_size

#: The original's hashes for every vector of the spec, kept with the tests so a
#: clone runs them anywhere; the spec's own copy, when it sits beside the project.
VECTORS = Path(__file__).resolve().parent / "data" / "hash-vectors.json"
SPEC_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "spec" / "hash-vectors.json"


def _load_vectors() -> list[dict[str, str]]:
    vectors: list[dict[str, str]] = orjson.loads(VECTORS.read_bytes())
    return vectors


def test_the_kept_vectors_are_the_specs() -> None:
    if not SPEC_VECTORS.exists():
        pytest.skip(f"no spec beside the project at {SPEC_VECTORS}")
    assert VECTORS.read_bytes() == SPEC_VECTORS.read_bytes(), "copy the spec's hash vectors"


def test_shared_hash_vectors() -> None:
    vectors = _load_vectors()
    assert vectors
    for vector in vectors:
        body = orjson.loads(vector["request_body"])
        job_type, params = body["job_type"], body["input_params"]
        assert job_canonical(job_type, params) == vector["canonical"], vector["request_body"]
        assert job_hash(job_type, params) == vector["job_hash"], vector["request_body"]


@pytest.mark.parametrize(
    ("job_type", "params_json", "canonical", "digest"),
    [
        (
            "hello_world",
            '{"processing_time":10,"name":"Alice"}',
            '{"type":"hello_world","params":{"name":"Alice","processing_time":10}}',
            "537d4d355d05cd39138a91f451faf112326d8f3d17708a015a98c3777c1f3e7b",
        ),
        (
            "x",
            '{"b":1,"10":2,"9":3,"a":1.0,"c":1e21,"d":-0,"e":"\u00e9\\u2028",'
            '"f":12345678901234567890}',
            '{"type":"x","params":{"9":3,"10":2,"a":1,"b":1,"c":1e+21,"d":0,'
            '"e":"\u00e9\u2028","f":12345678901234567000}}',
            "8289c5daa7c275ff6026c45ad21578e6e3b7b35b62bc0d3d1bbf6410dfcc30a7",
        ),
    ],
)
def test_spec_examples(job_type: str, params_json: str, canonical: str, digest: str) -> None:
    params = orjson.loads(params_json)
    assert job_canonical(job_type, params) == canonical
    assert job_hash(job_type, params) == digest


def test_top_level_is_type_then_params() -> None:
    assert job_canonical("z", {"b": 1, "a": 2}) == '{"type":"z","params":{"a":2,"b":1}}'
    assert job_canonical("t", []) == '{"type":"t","params":[]}'


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (1.5, "1.5"),
        (-1.5, "-1.5"),
        (0.1, "0.1"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (5e-7, "5e-7"),
        (1e-6, "0.000001"),
        (0.000001234, "0.000001234"),
        (1.23e22, "1.23e+22"),
        (1e20, "100000000000000000000"),
        (123e18, "123000000000000000000"),
        (2**53, "9007199254740992"),
        (2**53 + 1, "9007199254740992"),
        (-(2**53) - 1, "-9007199254740992"),
        (12345678901234567890, "12345678901234567000"),
        (123456789012345678901234567890, "1.2345678901234568e+29"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (5e-324, "5e-324"),
        (-2.5e-10, "-2.5e-10"),
        (123456.789, "123456.789"),
    ],
)
def test_number_formatting(number: float, expected: str) -> None:
    assert canonical_json(number) == expected
    assert js_stringify([number]) == f"[{expected}]"


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf"), 10**400])
def test_non_finite_numbers_rejected(number: float) -> None:
    with pytest.raises(ValueError, match=r"not valid JSON|overflows a double"):
        canonical_json(number)


def test_bool_and_null_are_not_numbers() -> None:
    assert canonical_json([True, False, None, 1, 0]) == "[true,false,null,1,0]"
    assert canonical_json({"a": True, "b": 1}) == '{"a":true,"b":1}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", '"plain"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("a/b", '"a/b"'),
        ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
        ("\x00\x01\x1f\x7f", '"\\u0000\\u0001\\u001f\x7f"'),
        ("Zo\u00eb \u65e5\u672c \U0001f600", '"Zo\u00eb \u65e5\u672c \U0001f600"'),
        ("\u2028\u2029", '"\u2028\u2029"'),
        ("\ud800 \udc00x", '"\\ud800 \\udc00x"'),  # lone surrogates, as ES2019
        ("\ud83d\ude00", '"\U0001f600"'),  # a pair held as two code points
    ],
)
def test_string_escaping(text: str, expected: str) -> None:
    assert canonical_json(text) == expected
    assert js_stringify({text: 0}) == "{" + expected + ":0}"


def test_lone_surrogate_from_stdlib_json() -> None:
    assert canonical_json(json.loads(r'"\udfff"')) == '"\\udfff"'


def test_integer_like_keys_first_in_numeric_order() -> None:
    keys = ["b", "01", "10", "-1", "4294967295", "a", "4294967294", "9", "0", "1.5", " 1", "\u0661"]
    value = dict.fromkeys(keys, 0)
    assert list(orjson.loads(canonical_json(value))) == [
        "0",
        "9",
        "10",
        "4294967294",
        " 1",
        "-1",
        "01",
        "1.5",
        "4294967295",
        "a",
        "b",
        "\u0661",
    ]
    assert list(orjson.loads(js_stringify(value))) == [
        "0",
        "9",
        "10",
        "4294967294",
        "b",
        "01",
        "-1",
        "4294967295",
        "a",
        "1.5",
        " 1",
        "\u0661",
    ]


def test_keys_sorted_by_utf16_code_units() -> None:
    # Code point order would put U+FFFF last; UTF-16 puts the emoji (a surrogate pair) first.
    value = {"\uffff": 1, "\U0001f600": 2, "\ue000": 3, "Z": 4, "a": 5, "\u00e9": 6}
    assert canonical_json(value) == '{"Z":4,"a":5,"\u00e9":6,"\U0001f600":2,"\ue000":3,"\uffff":1}'


def test_nested_objects_sorted_arrays_kept() -> None:
    value: Any = {"b": [3, {"z": 1, "a": 2}, [2, 1]], "a": {"y": None, "x": {"d": 1, "c": 2}}}
    assert canonical_json(value) == (
        '{"a":{"x":{"c":2,"d":1},"y":null},"b":[3,{"a":2,"z":1},[2,1]]}'
    )
    assert canonical_json({}) == "{}"
    assert canonical_json([]) == "[]"


def test_js_stringify_keeps_insertion_order() -> None:
    value = orjson.loads('{"b":1,"a":{"z":1,"y":2},"2":3,"1":[{"d":0,"c":0}]}')
    assert js_stringify(value) == '{"1":[{"d":0,"c":0}],"2":3,"b":1,"a":{"z":1,"y":2}}'


def test_proto_key_dropped_only_from_sorted_form() -> None:
    # The original assigned sorted[key] = ..., which sets the prototype for "__proto__".
    value = orjson.loads('{"__proto__":{"x":1},"b":{"__proto__":null,"c":1},"a":[{"__proto__":5}]}')
    assert job_canonical("t", value) == '{"type":"t","params":{"a":[{}],"b":{"c":1}}}'
    assert job_hash("t", value) == (
        "29c9b23411d38bb54c7cdd72efa342b3f9e1156659868427df38ce212054d10e"
    )
    assert js_stringify(value) == (
        '{"__proto__":{"x":1},"b":{"__proto__":null,"c":1},"a":[{"__proto__":5}]}'
    )


def test_non_json_values_rejected() -> None:
    with pytest.raises(TypeError):
        canonical_json({"a": {1, 2}})


def test_utf8_size() -> None:
    assert utf8_size("") == 0
    assert utf8_size("a\u00e9\u65e5\U0001f600") == 1 + 2 + 3 + 4


# --- the orjson fast path agrees with the JS-exact printer ------------------------------


def _slow(value: object, order: Any) -> str:
    out: list[str] = []
    hashing._dump(value, order, out)
    return "".join(out)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    """JSON values mixing what the fast path takes with what it must leave alone."""
    pick = rng.random()
    if depth < 4 and pick < 0.25:
        keys = ["a", "b", "B", "_x", "z9", "0", "1", "10", "01", "__proto__", "é", "ÿ", "\ue000"]
        keys += ["\U0001f600", "k\n", 'q"', "0x", "4294967294", "4294967295", "-1", ""]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    if depth < 4 and pick < 0.4:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    atoms: list[object] = [True, False, None, 0, -7, 2**53, -(2**53), 2**53 + 1, 2**60]
    atoms += [0.5, 1e21, 1e-7, -0.0, 3.0, 123456789.125, "", "plain", "tab\there", "\x00\x1f"]
    atoms += ["\u2028", "é", "\U0001f600", "\ud800", "\udc00x", "a\\b/c", "\x7f", 'say "hi"']
    return rng.choice(atoms)


def test_the_fast_path_prints_what_the_js_printer_prints() -> None:
    rng = random.Random(20261130)
    fast_taken = 0
    for _ in range(5000):
        value = {"p": _random_value(rng)} if rng.random() < 0.5 else _random_value(rng)
        slow_sorted = _slow(value, hashing._sorted_order)
        assert hashing.canonical_json(value) == slow_sorted, value
        assert hashing.js_stringify(value) == _slow(value, hashing._js_order), value
        for job_type in ("noop", "t\u00e9", 'q"t', "\ud800"):
            canonical = f'{{"type":{hashing._quote(job_type)},"params":{slow_sorted}}}'
            expected = hashlib.sha256(canonical.encode()).hexdigest()
            assert hashing.job_hash(job_type, value) == expected, (job_type, value)
        fast_taken += hashing._fast(value, 0) is not None
    assert 500 < fast_taken < 4500  # both paths were exercised
