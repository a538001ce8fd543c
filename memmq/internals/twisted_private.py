"""
Every private Twisted name memmq uses, in one place, each pinned by a test
so that an upgrade that changes one fails loudly here.

Names used:

- C{reactor._exitSignal}: set by the reactor's SIGINT/SIGTERM handlers;
  twistd kills its own process again with that signal once the reactor has
  stopped (L{clear_exit_signal}).
"""

from __future__ import annotations

__all__ = ["clear_exit_signal"]


def clear_exit_signal(reactor) -> None:
    """
    Forget the signal that is stopping C{reactor}, so that twistd ends the
    process with status 0 rather than by killing it again with that signal:
    a broker that shut down cleanly because it was asked to exits 0, under
    twistd as under the memmq command.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None
