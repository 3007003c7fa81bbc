"""Field devices: Modbus transport, register decoding and device profiles kept as data.

This package knows nothing of OCPP or of the controller; ``sitectl`` uses it, never the reverse.

Modules, from the wire up:

- ``devices.api``: capabilities (``Meter.power_kw()`` ...) as small protocols, and the frozen
  specs ``TcpTransport``, ``SerialTransport``, ``DeviceSpec`` that the site config produces.
- ``devices.modbus``: ``Link``, one pymodbus client per TCP endpoint or serial bus, with
  timeouts, retries, reconnect backoff and exact failure causes.
- ``devices.registers``: decoding and encoding of register words (no I/O).
- ``devices.profile``: profile YAML (``devices/profiles/*.yaml``) validated into ``Profile``.
- ``devices.digital``: digital I/O profiles (``devices/profiles/io/*.yaml``, ``modbus-di``):
  named inputs on coils, discrete inputs or register bits.
- ``devices.sunspec``: SunSpec marker and model-chain discovery.
- ``devices.frozen``: stuck-value rules (a meter or gateway serving the same values while
  current flows), pure, fed one sample per poll.
- ``devices.meter``: ``Reading``, ``Quality``, plausibility, ``ProfileMeter`` and ``MeterPool``
  (which polls the I/O modules too).
- ``devices.inputs``: ``IoReading`` and ``IoDevice``, an I/O module's inputs on, off or unknown.
- ``devices.probe``: the installer's ``sitectl probe``.
- ``devices.sim``, ``devices.sim_io``: simulated meters and I/O modules on real pymodbus servers
  (tests, bench, demo).
"""
