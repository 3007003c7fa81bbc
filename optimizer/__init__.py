"""Power allocation for a charging depot: pure computation, no I/O, no asyncio.

``sitectl`` calls it; it imports neither ``sitectl`` nor ``devices``.
"""
