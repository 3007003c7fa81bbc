"""SunSpec discovery: find the ``SunS`` marker, walk the model chain, locate the meter model.

Reference §7 B1: the marker ``SunS`` (0x5375 0x6E53) sits at 40000, 50000 or 0 (holding
registers); model blocks follow as ``ID, L, <L registers>``, starting with model 1 (Common), until
an ID of 0xFFFF. Source: SolarNetwork wiki "SunSpec model discovery"; sunspec/models
``json/model_1.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.modbus import Link, ModbusError, NoResponse, ServerException
from devices.profile import SunSpecModels
from devices.registers import Table

__all__ = ["END_ID", "SUNS_MARKER", "DiscoveryError", "SunSpecModel", "discover"]

SUNS_MARKER = (0x5375, 0x6E53)
END_ID = 0xFFFF
# A real chain has a handful of models; a longer walk means we are reading garbage.
_MAX_MODELS = 64


class DiscoveryError(ModbusError):
    """No usable SunSpec meter model was found; the message says what was seen."""

    retryable = False


@dataclass(frozen=True, slots=True)
class SunSpecModel:
    """Where a model block starts: ``address`` is the protocol address of its ID register."""

    model_id: int
    address: int
    length: int


async def discover(
    link: Link,
    unit_id: int,
    models: SunSpecModels,
    *,
    timeout_s: float,
    retries: int,
    deadline: float,
) -> SunSpecModel:
    """Find the first model of ``models`` in the device's SunSpec chain.

    Raises:
        DiscoveryError: no marker, or no wanted model in the chain.
        ModbusError: the device did not answer at all (the transport's exact cause).
    """

    async def read(address: int, count: int) -> list[int]:
        return await link.read(
            Table.HOLDING,
            address,
            count,
            unit_id=unit_id,
            timeout_s=timeout_s,
            retries=retries,
            deadline=deadline,
        )

    tried: list[str] = []
    base: int | None = None
    for candidate in models.bases:
        try:
            words = await read(candidate, 2)
        except ServerException as exc:
            if exc.code in (0x0A, 0x0B):
                raise  # the gateway cannot reach the unit at all; other bases will not help
            tried.append(f"{candidate}: exception 0x{exc.code:02X}")
            continue
        except NoResponse as exc:
            # Some devices stay silent for unmapped addresses; try the next base.
            tried.append(f"{candidate}: {exc}")
            continue
        if tuple(words) == SUNS_MARKER:
            base = candidate
            break
        tried.append(f"{candidate}: {words[0]:#06x} {words[1]:#06x}")
    if base is None:
        raise DiscoveryError(f"no SunSpec marker 'SunS' found ({'; '.join(tried)})")
    wanted = set(models.model_ids)
    seen: list[int] = []
    address = base + 2
    for _ in range(_MAX_MODELS):
        model_id, length = await read(address, 2)
        if model_id == END_ID:
            break
        seen.append(model_id)
        if model_id in wanted:
            return SunSpecModel(model_id, address, length)
        address += 2 + length
    want = ", ".join(str(i) for i in sorted(wanted))
    raise DiscoveryError(f"SunSpec chain at {base} has models {seen or 'none'}, none of {want}")
