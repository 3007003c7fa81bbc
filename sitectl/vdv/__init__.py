"""VDV 463: the depot management system's interface to the charging management (issue #19.3).

`protocol` is the sans-I/O message handling (frames in, frames out), `server` the WebSocket
endpoint; the public schemas it follows are vendored in ``schemas/`` (see its README).
"""
