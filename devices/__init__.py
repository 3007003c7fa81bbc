"""Field devices: Modbus transport, register decoding and device profiles kept as data.

This package knows nothing of OCPP or of the controller; ``sitectl`` uses it, never the reverse.
"""
