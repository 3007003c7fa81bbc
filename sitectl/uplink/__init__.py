"""The MQTT uplink: what the cloud sees of the depot, kept through outages, and its commands.

- `messages`: topics and payloads built from SiteState (pure); JSON Schemas in ``schemas/``.
- `outbox`: the on-disk queue with ``seq`` numbering and the drop policy.
- `client`: paho-mqtt in its own thread, events handed to asyncio.
- `commands`: validated operator commands, reusable by the local HTTP API.
- `publisher`: SiteState changes and the periodic tick as messages.
- `replies`: a command message in, its reply out (through `guard` and `commands`).
- `uplink`: the `Uplink` component that ties them together and owns the connection.
"""

from sitectl.uplink.commands import handle_command
from sitectl.uplink.uplink import Uplink

__all__ = ["Uplink", "handle_command"]
