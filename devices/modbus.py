"""Modbus transport: one pymodbus async client per TCP endpoint or serial bus.

A ``Link`` owns one client and puts one request on the wire at a time: several devices behind one
TCP gateway share one connection, several devices on one RS-485 bus share the bus. Requests wait
for the link in FIFO order (``asyncio.Lock`` is fair), so a device that stops answering costs the
others on *its* link at most one timeout per attempt, and nothing on other links.

Timeouts, retries and reconnects are ours, not pymodbus's: the client is created with
``retries=0``, no automatic reconnect and a long internal timeout, and every wait here is bounded
by the caller's timeout and deadline. That keeps the exact cause of a failure (connection refused,
no response, exception code, garbled frame) for the reading and for ``sitectl probe``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse

from devices.api import SerialTransport, TcpTransport, Transport
from devices.registers import BitTable, Table

__all__ = [
    "EXCEPTION_NAMES",
    "BadResponse",
    "ConnectFailed",
    "ConnectionLost",
    "Link",
    "ModbusError",
    "NoResponse",
    "ServerException",
    "reraise_lost_cancel",
]

log = logging.getLogger(__name__)

_Client = AsyncModbusTcpClient | AsyncModbusSerialClient

#: Modbus Application Protocol Specification V1.1b3, §7 "MODBUS Exception Responses".
EXCEPTION_NAMES = {
    0x01: "ILLEGAL FUNCTION",
    0x02: "ILLEGAL DATA ADDRESS",
    0x03: "ILLEGAL DATA VALUE",
    0x04: "SERVER DEVICE FAILURE",
    0x05: "ACKNOWLEDGE",
    0x06: "SERVER DEVICE BUSY",
    0x08: "MEMORY PARITY ERROR",
    0x0A: "GATEWAY PATH UNAVAILABLE",
    0x0B: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}

# Wait between retries of one request: 50 ms, doubling. Short, because every retry must fit in the
# poll's deadline (one poll period); precedent: pymodbus's reconnect_delay default of 0.1 s.
RETRY_BACKOFF_S = 0.05
# Reconnect attempts back off from 0.1 s to 5 s: a device that returns is read again within a few
# control cycles, and a dead one is not hammered with SYNs (pymodbus uses 0.1 s .. 300 s).
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
# pymodbus's own response/connect timeout; ours always fire first.
_CLIENT_TIMEOUT_S = 60.0


class ModbusError(Exception):
    """A request that yielded no registers. ``str()`` is the exact cause, for people."""

    retryable = True


class ConnectFailed(ModbusError):
    """The TCP connection or the serial port could not be opened.

    Not retried within a poll: reconnects follow the link's own backoff across polls.
    """

    retryable = False


class ConnectionLost(ModbusError):
    """The connection closed while a request was outstanding."""


class NoResponse(ModbusError):
    """No (valid) response within the timeout: device off, wrong unit id, wrong serial settings."""


class BadResponse(ModbusError):
    """Bytes arrived but did not form the expected response (CRC, framing, short read)."""


class ServerException(ModbusError):
    """The device answered with a Modbus exception response."""

    def __init__(
        self, code: int, unit_id: int, table: Table | BitTable, address: int, count: int
    ) -> None:
        self.code = code
        self.name = EXCEPTION_NAMES.get(code, "UNKNOWN EXCEPTION")
        hint = ""
        if code == 0x0B:
            hint = " (wrong unit id, or the device behind the gateway is off)"
        elif code == 0x02:
            hint = " (register map does not match the device, or wrong table/numbering)"
        what = "bits" if isinstance(table, BitTable) else "registers"
        super().__init__(
            f"Modbus exception 0x{code:02X} {self.name} from unit {unit_id} reading "
            f"{count} {table.value} {what} at {address}{hint}"
        )

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        """Only "busy"-type answers are worth asking again at once."""
        return self.code in (0x05, 0x06)


def reraise_lost_cancel() -> None:
    """Raise ``CancelledError`` if this task was cancelled but the cancellation got lost.

    pymodbus awaits ``asyncio.wait_for``, which on Python 3.11 returns the result instead of
    raising when a cancellation arrives just as the response does (bpo-42130, fixed in 3.12).
    ``Task.cancelling()`` still counts the request, so check it after every pymodbus call, or a
    cancelled poller keeps running and shutdown hangs.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _describe_os_error(exc: OSError, where: str) -> str:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return f"connection refused by {where} (nothing listens there)"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to {where}"
    return f"cannot connect to {where}: {exc.strerror or exc}"


class Link:
    """One Modbus client shared by every device on one TCP endpoint or serial port.

    Args:
        transport: Where to connect.
        reconnect_min_s: First wait after a failed connect before the next attempt.
        reconnect_max_s: Longest wait between connect attempts.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        reconnect_min_s: float = RECONNECT_MIN_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
    ) -> None:
        self.transport = transport
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._backoff_s = 0.0
        self._next_connect = 0.0
        self._connect_cause = ""
        self._rx = b""
        self._lock = asyncio.Lock()
        self._was_connected = False
        # Created on first use: pymodbus clients need a running event loop, a Link does not.
        self._client: _Client | None = None
        if isinstance(transport, TcpTransport):
            self.where = f"{transport.host}:{transport.port}"
        else:
            self.where = transport.port

    @property
    def connected(self) -> bool:
        """Whether the connection (or port) is open now."""
        return self._client is not None and self._client.connected

    def _make_client(self) -> _Client:
        common: dict[str, Any] = {
            "timeout": _CLIENT_TIMEOUT_S,
            "retries": 0,
            "reconnect_delay": 0,  # no background reconnect: we reconnect on demand
            "trace_packet": self._trace_packet,
        }
        t = self.transport
        if isinstance(t, TcpTransport):
            return AsyncModbusTcpClient(t.host, port=t.port, **common)
        return AsyncModbusSerialClient(
            t.port,
            framer=FramerType.RTU,
            baudrate=t.baudrate,
            bytesize=t.bytesize,
            parity=t.parity,
            stopbits=t.stopbits,
            **common,
        )

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus hands us the whole receive buffer; keep it to explain a timeout.
        if not sending:
            self._rx = bytes(data)
        return data

    # Public methods.

    async def read(
        self,
        table: Table | BitTable,
        address: int,
        count: int,
        *,
        unit_id: int,
        timeout_s: float,
        retries: int = 0,
        deadline: float | None = None,
    ) -> list[int]:
        """Read ``count`` registers (or bits), retrying with backoff within ``deadline``.

        Args:
            table: Holding (FC 03) or input (FC 04) registers; coils (FC 01) or discrete
                inputs (FC 02), whose bits come back as 0 and 1.
            address: 0-based protocol address of the first register or bit.
            count: Number of registers, 1..125 (bits: 1..2000).
            unit_id: Modbus unit id.
            timeout_s: Longest wait for one response.
            retries: Further attempts after the first.
            deadline: ``time.monotonic()`` value by which to give up, including waiting for the
                link; ``None`` allows ``(retries + 1) × timeout_s`` plus backoff.

        Returns:
            The register values (bits: 0 or 1 each).

        Raises:
            ModbusError: a subclass naming the exact cause of the last attempt.
        """
        if deadline is None:
            deadline = time.monotonic() + (retries + 1) * (timeout_s + RETRY_BACKOFF_S * 4)
        attempt = 0
        while True:
            try:
                return await self._read_once(table, address, count, unit_id, timeout_s, deadline)
            except ModbusError as exc:
                attempt += 1
                delay = RETRY_BACKOFF_S * 2 ** (attempt - 1)
                if not exc.retryable or attempt > retries or time.monotonic() + delay >= deadline:
                    raise
                log.debug(
                    "%s unit %d: %s; retry %d in %.2f s", self.where, unit_id, exc, attempt, delay
                )
                await asyncio.sleep(delay)

    async def close(self) -> None:
        """Close the client; a later ``read`` reconnects."""
        if self._client is not None:
            self._client.close()

    # Internals.

    async def _read_once(
        self,
        table: Table | BitTable,
        address: int,
        count: int,
        unit_id: int,
        timeout_s: float,
        deadline: float,
    ) -> list[int]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoResponse(f"poll deadline passed before unit {unit_id} could be asked")
        try:
            async with asyncio.timeout(remaining):
                await self._lock.acquire()
        except TimeoutError:
            raise NoResponse(
                f"link {self.where} busy with other devices' requests for {remaining:.2f} s"
            ) from None
        try:
            client = await self._ensure_connected(min(timeout_s, deadline - time.monotonic()))
            wait = min(timeout_s, deadline - time.monotonic())
            if wait <= 0:
                raise NoResponse(f"poll deadline passed before unit {unit_id} could be asked")
            return await self._request(client, table, address, count, unit_id, wait, timeout_s)
        finally:
            self._lock.release()

    async def _ensure_connected(self, timeout_s: float) -> _Client:
        if self._client is None:
            self._client = self._make_client()
        client = self._client
        if client.connected:
            return client
        if self._was_connected:
            self._was_connected = False
            self._connect_cause = f"connection to {self.where} lost"
        now = time.monotonic()
        if now < self._next_connect:
            raise ConnectFailed(
                f"{self._connect_cause}; next connect attempt in {self._next_connect - now:.1f} s"
            )
        if timeout_s <= 0:
            raise ConnectFailed(f"no time left in this poll to connect to {self.where}")
        ok = False
        try:
            async with asyncio.timeout(timeout_s):
                ok = await client.connect()
            reraise_lost_cancel()
        except TimeoutError:
            cause = f"connect to {self.where} timed out after {timeout_s:.2g} s"
        else:
            cause = "" if ok else await self._diagnose(timeout_s)
        if ok and client.connected:
            if self._backoff_s:
                log.info("connected to %s again", self.where)
            self._backoff_s = 0.0
            self._was_connected = True
            return client
        client.close()
        self._backoff_s = min(
            max(self._backoff_s * 2, self._reconnect_min_s), self._reconnect_max_s
        )
        self._next_connect = time.monotonic() + self._backoff_s
        self._connect_cause = cause
        raise ConnectFailed(cause)

    async def _diagnose(self, timeout_s: float) -> str:
        """Find out why pymodbus could not connect (it only returns False)."""
        t = self.transport
        if isinstance(t, SerialTransport):
            try:
                port = serial.serial_for_url(t.port, do_not_open=True)
                port.open()
                port.close()
            except (serial.SerialException, OSError) as exc:
                return f"cannot open serial port {t.port}: {exc}"
            return f"cannot open serial port {t.port}"
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(t.host, t.port)
        except TimeoutError:
            return f"connect to {self.where} timed out after {timeout_s:.2g} s"
        except OSError as exc:
            return _describe_os_error(exc, self.where)
        writer.close()
        return f"connect to {self.where} failed once and then succeeded; will retry"

    async def _request(
        self,
        client: _Client,
        table: Table | BitTable,
        address: int,
        count: int,
        unit_id: int,
        wait: float,
        timeout_s: float,
    ) -> list[int]:
        call = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            BitTable.COIL: client.read_coils,
            BitTable.DISCRETE: client.read_discrete_inputs,
        }[table]
        self._rx = b""
        try:
            async with asyncio.timeout(wait):
                response = await call(address, count=count, device_id=unit_id)
            reraise_lost_cancel()
        except TimeoutError:
            raise self._explain_silence(unit_id, wait, timeout_s) from None
        except ConnectionException as exc:
            raise ConnectionLost(f"connection to {self.where} lost: {exc}") from None
        except ModbusException as exc:
            if not client.connected:
                raise ConnectionLost(f"connection to {self.where} lost: {exc}") from None
            raise BadResponse(f"invalid response from unit {unit_id}: {exc}") from None
        if isinstance(response, ExceptionResponse) or response.isError():
            code = getattr(response, "exception_code", 0)
            raise ServerException(code, unit_id, table, address, count)
        if isinstance(table, BitTable):
            # A bit response is padded to whole bytes: fewer than asked is a short frame.
            bits = [int(bool(b)) for b in response.bits]
            if len(bits) < count:
                raise BadResponse(
                    f"unit {unit_id} returned {len(bits)} of {count} {table.value} bits at "
                    f"{address}"
                )
            return bits[:count]
        registers = list(response.registers)
        if len(registers) < count:
            raise BadResponse(
                f"unit {unit_id} returned {len(registers)} of {count} registers at {address}"
            )
        return registers[:count]

    def _explain_silence(self, unit_id: int, wait: float, timeout_s: float) -> ModbusError:
        if not self.connected:
            return ConnectionLost(
                f"connection to {self.where} closed while waiting for unit {unit_id}"
            )
        if self._rx:
            shown = self._rx[:24].hex(" ")
            return BadResponse(
                f"garbled response from {self.where} for unit {unit_id} (bad CRC, framing, or "
                f"another unit id): {len(self._rx)} bytes {shown}"
            )
        cut = "" if wait >= timeout_s else " (cut short by the poll deadline)"
        why = (
            "wrong unit id, wrong serial settings, or device off"
            if isinstance(self.transport, SerialTransport)
            else "wrong unit id behind a gateway, or device busy"
        )
        return NoResponse(
            f"timeout: no response from unit {unit_id} at {self.where} within {wait:.2g} s{cut} "
            f"({why})"
        )
