"""A simulated digital I/O module on a real pymodbus server (tests, scenarios, the demo).

A ``SimIo`` holds an I/O profile's inputs (``devices.digital``) as the module would serve them:
coils and discrete inputs as bits, register inputs as bits of their registers (or 0/1 in a
whole register). ``SimServer`` (``devices.sim``) serves it beside simulated meters, with the
same faults (``exception``, ``delay_s``, ``silent``, ``drop_next``, ``garble``)::

    io = SimIo("moxa-iologik-e1210", unit_id=3)
    async with SimServer([io]) as server:
        io.set("di0", True)                       # the next poll reads the contact closed
        io.set_word(Table.HOLDING, 40, 7)         # a register input now holds a bad value

A coil can also be written by any Modbus client (function codes 05/15): the demo's operator
toggles its §14a contact that way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from devices.digital import DigitalInput, IoProfile, load_io_profile, parse_io_profile
from devices.registers import BitTable, Table

__all__ = ["SimIo"]

_WRITE_COILS = (5, 15)
_TABLE_OF_FC: dict[int, Table | BitTable] = {
    1: BitTable.COIL,
    5: BitTable.COIL,
    15: BitTable.COIL,
    2: BitTable.DISCRETE,
    3: Table.HOLDING,
    4: Table.INPUT,
}


class SimIo:
    """A simulated I/O module: named inputs that tests (or an operator) switch.

    Args:
        profile: The I/O profile (or a shipped profile's name, or a ``modbus-di`` input list).
        unit_id: The Modbus unit id it answers to.
        states: Initial input states by name (default all off).

    Attributes:
        exception: A Modbus exception code to answer every request with, or ``None``.
        delay_s: Seconds to wait before answering (a slow or hung module).
        silent: Answer nothing at all.
        drop_next: Drop only the next this many responses.
        garble: Corrupt every response.
    """

    def __init__(
        self,
        profile: IoProfile | str | list[dict[str, Any]],
        unit_id: int = 1,
        states: Mapping[str, bool] | None = None,
    ) -> None:
        if isinstance(profile, str):
            profile = load_io_profile(profile)
        elif isinstance(profile, list):
            profile = parse_io_profile(profile, "sim")
        self.profile = profile
        self.unit_id = unit_id
        self.exception: int | None = None
        self.delay_s = 0.0
        self.silent = False
        self.drop_next = 0
        self.garble = False
        self._release = asyncio.Event()
        self._bits: dict[BitTable, dict[int, bool]] = {t: {} for t in BitTable}
        self._words: dict[Table, dict[int, int]] = {t: {} for t in Table}
        for item in profile.inputs:
            if isinstance(item.table, BitTable):
                self._bits[item.table][item.address] = False
            else:
                self._words[item.table].setdefault(item.address, 0)
        for name, value in (states or {}).items():
            self.set(name, value)

    # Public methods.

    def set(self, name: str, on: bool) -> None:
        """Switch an input: the next read serves it.

        Raises:
            KeyError: no such input.
        """
        item = self._input(name)
        if isinstance(item.table, BitTable):
            self._bits[item.table][item.address] = bool(on)
        elif item.bit is None:
            self._words[item.table][item.address] = int(bool(on))
        else:
            word = self._words[item.table][item.address]
            mask = 1 << item.bit
            self._words[item.table][item.address] = (word | mask) if on else (word & ~mask)

    def get(self, name: str) -> bool:
        """The input's present state (what a correct read returns)."""
        item = self._input(name)
        if isinstance(item.table, BitTable):
            return self._bits[item.table][item.address]
        word = self._words[item.table][item.address]
        return bool(word if item.bit is None else (word >> item.bit) & 1)

    def set_word(self, table: Table, address: int, word: int) -> None:
        """Serve a raw register value (e.g. a bad value for a 0/1 register input)."""
        self._words[table][address] = word

    def clear_faults(self) -> None:
        """Answer normally again."""
        self.exception = None
        self.delay_s = 0.0
        self.silent = False
        self.drop_next = 0
        self.garble = False

    # Internals.

    def _input(self, name: str) -> DigitalInput:
        item = self.profile.input(name)
        if item is None:
            raise KeyError(f"{self.profile.name} has no input {name!r}")
        return item

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.delay_s):
                    await self._release.wait()
        if self.exception is not None:
            return ExcCodes(self.exception)
        table = _TABLE_OF_FC.get(function_code)
        if isinstance(table, BitTable):
            if function_code in _WRITE_COILS and set_values is not None:
                for i, value in enumerate(set_values):
                    if address + i in self._bits[BitTable.COIL]:
                        self._bits[BitTable.COIL][address + i] = bool(value)
            # The block's words, bit 0 of a word first, from the states (start_address is
            # the block's first word: pymodbus packs 16 bits per word).
            for k in range(len(registers)):
                word = 0
                for bit in range(16):
                    if self._bits[table].get((start_address + k) * 16 + bit, False):
                        word |= 1 << bit
                registers[k] = word
        elif table is not None and set_values is None:
            image = self._words[table]
            for a in range(address, address + count):
                registers[a - start_address] = image.get(a, 0)
        return None

    def _sim_device(self) -> SimDevice:
        def bit_block(table: BitTable) -> list[SimData]:
            addresses = self._bits[table]
            if not addresses:
                return [SimData(0, count=16, values=False, datatype=DataType.BITS)]
            lo, hi = min(addresses) // 16 * 16, max(addresses)
            span = (hi - lo) // 16 * 16 + 16
            return [SimData(lo, values=[False] * span, datatype=DataType.BITS)]

        def word_block(table: Table) -> list[SimData]:
            image = self._words[table]
            if not image:
                # pymodbus wants every table non-empty; park one register out of the way.
                return [SimData(65000, values=[0], datatype=DataType.REGISTERS)]
            lo, hi = min(image), max(image)
            return [SimData(lo, values=[0] * (hi - lo + 1), datatype=DataType.REGISTERS)]

        return SimDevice(
            self.unit_id,
            simdata=(
                bit_block(BitTable.COIL),
                bit_block(BitTable.DISCRETE),
                word_block(Table.HOLDING),
                word_block(Table.INPUT),
            ),
            action=self._action,
        )
