"""Register decoding: types, orders, sentinels, scale factors and read planning (no I/O)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.registers import (
    Block,
    DecodeError,
    DType,
    Order,
    Quantity,
    Register,
    Table,
    decode_map,
    decode_value,
    decode_words,
    encode_value,
    encode_words,
    is_sentinel,
    plan_blocks,
)

INT_RANGES = {
    DType.U16: (0, 2**16 - 1),
    DType.I16: (-(2**15), 2**15 - 1),
    DType.U32: (0, 2**32 - 1),
    DType.I32: (-(2**31), 2**31 - 1),
    DType.U64: (0, 2**64 - 1),
    DType.I64: (-(2**63), 2**63 - 1),
}
ORDERS = [(w, b) for w in Order for b in Order]


@pytest.mark.parametrize(
    ("words", "dtype", "word_order", "byte_order", "expected"),
    [
        # IEEE-754: 230.0 = 0x43660000 (high word first, as Eastron/Janitza/Siemens send it)
        ([0x4366, 0x0000], DType.F32, Order.BIG, Order.BIG, 230.0),
        ([0x0000, 0x4366], DType.F32, Order.LITTLE, Order.BIG, 230.0),
        ([0x6643, 0x0000], DType.F32, Order.BIG, Order.LITTLE, 230.0),
        # Carlo Gavazzi INT32, LSW first: 2300 = 0x000008FC
        ([0x08FC, 0x0000], DType.I32, Order.LITTLE, Order.BIG, 2300),
        ([0xFFFF, 0xFFFF], DType.I32, Order.BIG, Order.BIG, -1),
        # Schneider INT64 energy: 123456789 Wh = 0x075BCD15
        ([0, 0, 0x075B, 0xCD15], DType.I64, Order.BIG, Order.BIG, 123456789),
        # Siemens float64 energy: 1e6 = 0x412E848000000000
        ([0x412E, 0x8480, 0, 0], DType.F64, Order.BIG, Order.BIG, 1e6),
        ([0x8000], DType.I16, Order.BIG, Order.BIG, -32768),
        ([0xFFFE], DType.SUNSSF, Order.BIG, Order.BIG, -2),
    ],
)
def test_golden_words(
    words: list[int], dtype: DType, word_order: Order, byte_order: Order, expected: float
) -> None:
    assert decode_words(words, dtype, word_order, byte_order) == expected
    assert encode_words(expected, dtype, word_order, byte_order) == words


@pytest.mark.parametrize("dtype", list(INT_RANGES))
@pytest.mark.parametrize(("word_order", "byte_order"), ORDERS)
@given(data=st.data())
def test_int_round_trip(dtype: DType, word_order: Order, byte_order: Order, data) -> None:
    lo, hi = INT_RANGES[dtype]
    value = data.draw(st.integers(lo, hi))
    words = encode_words(value, dtype, word_order, byte_order)
    assert len(words) == dtype.width
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_words(words, dtype, word_order, byte_order) == value


@pytest.mark.parametrize(("word_order", "byte_order"), ORDERS)
@given(value=st.floats(allow_nan=False, width=32))
def test_f32_round_trip(word_order: Order, byte_order: Order, value: float) -> None:
    words = encode_words(value, DType.F32, word_order, byte_order)
    assert decode_words(words, DType.F32, word_order, byte_order) == value


@given(value=st.floats(allow_nan=False))
def test_f64_round_trip(value: float) -> None:
    assert decode_words(encode_words(value, DType.F64), DType.F64) == value


def test_value_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not fit i16"):
        encode_words(40000, DType.I16)
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode_words([1], DType.F32)


def _reg(dtype: DType, **kw) -> Register:
    fields = {
        "index": 0,
        "quantity": Quantity.POWER_TOTAL,
        "id": None,
        "label": "W",
        "table": Table.HOLDING,
        "address": 100,
        "number": 101,
        "dtype": dtype,
        "unit": "W",
    } | kw
    return Register(**fields)


def test_sunspec_sentinels_are_missing_not_zero() -> None:
    for dtype, words in [
        (DType.I16, [0x8000]),
        (DType.U16, [0xFFFF]),
        (DType.ACC32, [0, 0]),
        (DType.U32, [0xFFFF, 0xFFFF]),
        (DType.F32, [0x7FC0, 0x0000]),
    ]:
        reg = _reg(dtype, sentinels=True)
        assert decode_value(reg, words) is None, dtype
        assert encode_value(reg, None) == words or dtype is DType.F32
    # Without the SunSpec rule the same words are numbers.
    assert decode_value(_reg(DType.I16), [0x8000]) == pytest.approx(-32.768)
    assert is_sentinel(math.nan, DType.F64)


def test_units_and_scale() -> None:
    reg = _reg(DType.I32, scale=0.1, unit="W")  # EM24: W raw /10
    assert decode_value(reg, encode_words(123456, DType.I32)) == pytest.approx(12.3456)
    reg = _reg(DType.F32, quantity=Quantity.ENERGY_IMPORT, unit="Wh")
    assert decode_value(reg, encode_words(2500.0, DType.F32)) == pytest.approx(2.5)
    assert encode_value(reg, 2.5) == encode_words(2500.0, DType.F32)


def test_scale_factor_register() -> None:
    w = _reg(DType.I16, scale_factor="W_SF", address=0, number=0)
    sf = _reg(
        DType.SUNSSF, quantity=None, id="W_SF", label="W_SF", address=1, number=1, sentinels=True
    )
    raw = {(Table.HOLDING, 0): 1234, (Table.HOLDING, 1): 0xFFFF}  # 1234 × 10^-1 W
    decoded = decode_map([w, sf], raw)
    assert decoded.values[Quantity.POWER_TOTAL] == pytest.approx(0.1234)
    raw[(Table.HOLDING, 1)] = 0x8000  # scale factor not implemented
    decoded = decode_map([w, sf], raw)
    assert decoded.values[Quantity.POWER_TOTAL] is None
    assert "W_SF not implemented" in decoded.missing[Quantity.POWER_TOTAL]
    raw[(Table.HOLDING, 1)] = 0x7FFF  # garbage
    with pytest.raises(DecodeError, match="register 1: scale factor W_SF = 32767"):
        decode_map([w, sf], raw)


def test_missing_word_names_the_register() -> None:
    with pytest.raises(DecodeError, match="at register 101"):
        decode_map([_reg(DType.F32)], {})


def test_plan_blocks_merges_contiguous_and_splits() -> None:
    regs = [_reg(DType.F32, address=a, number=a) for a in (0, 2, 4, 10)]
    assert plan_blocks(regs) == (Block(Table.HOLDING, 0, 6), Block(Table.HOLDING, 10, 2))
    assert plan_blocks(regs, max_gap=4) == (Block(Table.HOLDING, 0, 12),)
    # Never more than 125 registers in one read.
    many = [_reg(DType.F32, address=2 * i, number=2 * i) for i in range(100)]
    blocks = plan_blocks(many)
    assert [b.count for b in blocks] == [124, 76]
    # Tables are read separately.
    mixed = [_reg(DType.U16, address=0), _reg(DType.U16, address=1, table=Table.INPUT)]
    assert plan_blocks(mixed, max_gap=10) == (
        Block(Table.HOLDING, 0, 1),
        Block(Table.INPUT, 1, 1),
    )
