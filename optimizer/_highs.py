"""A HiGHS instance that prints nothing: no banner, no solver log.

highspy prints its banner ("Running HiGHS 1.16.0 ... Copyright ...") to the process's standard
output from the C++ side the first time a ``Highs`` is constructed, before any option can be set
(measured with highspy 1.16; earlier releases printed it at the first ``run`` unless
``output_flag`` was off). Standard output belongs to sitectl (``--log-format json`` lines, the
demo's live line), so the first construction runs with file descriptor 1 pointed at
``/dev/null``; every instance then gets ``output_flag`` off before it holds a model.

This is the one place in ``optimizer`` that touches a file descriptor, and `_banner_muted` is its
one module-level state: both mirror HiGHS's own once-per-process banner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator

import highspy

__all__ = ["new_highs"]

_lock = threading.Lock()
_banner_muted = False


def new_highs() -> highspy.Highs:
    """A fresh ``highspy.Highs`` with its console output off (thread-safe)."""
    global _banner_muted
    with _lock:
        if _banner_muted:
            highs = highspy.Highs()
        else:
            with _stdout_muted():
                highs = highspy.Highs()
            _banner_muted = True
    highs.setOptionValue("output_flag", False)
    return highs


@contextlib.contextmanager
def _stdout_muted() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for the duration, then restore it."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()  # what Python buffered so far goes to the real stdout
    try:
        saved = os.dup(1)
    except OSError:  # no standard output at all: nothing to protect
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            try:
                yield
            finally:
                _flush_c_stdio()  # a banner still in C's stdout buffer must not leak out later
                os.dup2(saved, 1)
        finally:
            os.close(devnull)
    finally:
        os.close(saved)


def _flush_c_stdio() -> None:
    # fflush(NULL) flushes every C stdio stream; not available everywhere (e.g. Windows).
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)
