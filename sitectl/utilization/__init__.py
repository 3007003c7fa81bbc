"""Utilization analytics on the real store (issue #21.2).

- `store`: the tables (migration), their batched writes, rollup and expiry.
- `recorder`: the component that records status changes, measurements and sessions.
- `report`: the numbers, computed from what was recorded (CLI, API, dashboard, MQTT).
- `times`: moments as users write them, the site's nights.
- `cli`, `api`, `daily`: ``sitectl report``, ``GET /api/reports/utilization``, the daily
  MQTT message.
"""
