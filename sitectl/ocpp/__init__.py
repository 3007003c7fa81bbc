"""OCPP local controller: the charger-facing server, upstream connections and the router.

`router` decides where every frame goes (sans-I/O); `link` moves frames between a charger's two
sockets; `server` accepts chargers; `upstream` connects to the CSMS on each charger's behalf.
"""
