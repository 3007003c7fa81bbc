"""sitectl: the on-premise controller of an EV charging depot.

See ``../shared/DESIGN.md`` (architecture, safety model) and ``README.md``.
"""

__version__ = "0.1.0"
