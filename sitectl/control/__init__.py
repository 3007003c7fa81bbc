"""The control loop: from meter readings and sessions to charger limits, safely.

`meters` decides when a circuit's meter may be trusted, `snapshot` builds the optimizer's problem
from the site state (conservatively), `dispatch` sends the limits (decreases first), and `loop`
runs it all every period and on events.
"""
