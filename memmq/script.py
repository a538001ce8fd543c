"""
The commands around the service tree of L{memmq.tap}:

- C{memmq} (and C{python -m memmq}): L{main} runs the server in the
  foreground, logging to stderr, until SIGINT or SIGTERM; or, with
  C{--client} or C{-i}, the command-line client or the interactive prompt.
- C{twistd memmq}: L{TwistdOptions}, and the tree's L{ProcessRoot}, which
  L{memmq.tap} (the plugin's module) builds under.

What belongs to a process rather than to a service tree is here: a bad
option or a failure to start is one line on stderr and exit status 2 (not
a usage dump or a traceback), signals are handled from the moment the
server listens, and a server stopped by SIGTERM or SIGINT exits 0 under
twistd as under C{memmq} (README: Options, Delivery).
"""

from __future__ import annotations

import signal
import sys
import threading

from twisted.application.service import MultiService
from twisted.logger import Logger, LogLevel, globalLogBeginner
from twisted.python import usage

from memmq.errors import MemmqError
from memmq.internals.twisted_private import clear_exit_signal
from memmq.logs import observer, say
from memmq.options import MemmqOptions
from memmq.server.system_limits import raise_nofile_limit

_log = Logger()

__all__ = ["Options", "TwistdOptions", "ProcessRoot", "main", "serve"]


def _exit(message: str) -> SystemExit:
    """
    Say C{message} on stderr; return the exit with status 2 to raise.
    """
    say(message)
    return SystemExit(2)


class Options(MemmqOptions):
    """
    The command-line face of L{MemmqOptions}: a bad option is one line on
    stderr and exit status 2, not a usage dump or a traceback.
    """

    #: the arguments parsed, for the workers of C{--workers} to parse again
    argv: list[str] = []

    def parseOptions(self, options=None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            # Twisted prefixes a failed coercion; the reason after it is ours.
            reason = str(e).removeprefix("Parameter type enforcement failed: ")
            raise _exit(f"{reason} (see memmq --help)") from None


class TwistdOptions(Options):
    """
    The options of C{twistd memmq}: the client and the prompt are the memmq
    command's, and logging is twistd's.
    """

    def postOptions(self) -> None:
        super().postOptions()
        if self["client"] or self["interactive"]:
            raise usage.UsageError("--client and -i are for the memmq command; twistd memmq runs the server")
        if self["log_format"] != "text":
            raise usage.UsageError(
                "--log_format is for the memmq command; under twistd use --logger=memmq.logs.json_observer"
            )


class ProcessRoot(MultiService):
    """
    The root of a service tree run as a process: a failure to start that a
    user can cause (the port is in use) ends it with one line and status 2;
    SIGTERM and SIGINT stop it cleanly from the moment it listens; and it
    exits 0 once stopped by them.

    SIGHUP reloads access control's auth file and JWT key (the tree's
    C{access}) without dropping a connection.

    @ivar broker: the broker every front-end serves.
    """

    access = None

    def __init__(self, broker, reactor) -> None:
        super().__init__()
        self.broker = broker
        self._reactor = reactor

    def privilegedStartService(self) -> None:
        # A server's connections are its open files: take all the system
        # allows this process (README: Limits).
        self._nofile = raise_nofile_limit()
        try:
            super().privilegedStartService()
        except MemmqError as e:
            raise _exit(str(e)) from None

    def startService(self) -> None:
        # Between here (the services say they listen as they start, and
        # READY=1 is sent) and reactor.run(), which installs Twisted's own
        # handlers, SIGTERM would kill the process outright; ask for the
        # same clean stop instead.
        if not self._reactor.running and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._stop_once_running)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._reload)
        super().startService()
        if self._nofile is not None:
            # Said once listening: a start that fails says its one line only.
            before, after = self._nofile
            _log.info(
                "open files limit: {after}" + (" (raised from {before})" if after != before else ""),
                before=before, after=after,
            )

    _nofile: tuple[int, int] | None = None

    def _reload(self, signum, frame) -> None:
        if self.access is not None:
            self._reactor.callFromThread(self.access.reload)

    def _stop_once_running(self, signum, frame) -> None:
        self._reactor.callFromThread(self._reactor.stop)

    def stopService(self):
        # twistd ends a process stopped by SIGTERM or SIGINT by killing it
        # again with that signal once the reactor stops; a broker that
        # shut down cleanly because it was asked to exits 0.
        clear_exit_signal(self._reactor)
        return super().stopService()


def main(argv: list[str] | None = None) -> int:
    """
    Parse C{argv} (default: C{sys.argv[1:]}), serve, and return the exit
    status once the reactor has stopped.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["auth"]:
        from memmq.auth.command import main as auth

        return auth(argv[1:])
    options = Options()
    options.parseOptions(argv)

    from twisted.internet import reactor

    client = options["client"] or options["interactive"]
    # A server logs its life at info; a client's stderr is for the user,
    # so only memmq's own news and warnings from below it go there.
    quiet_below = LogLevel.warn if client else LogLevel.info
    globalLogBeginner.beginLoggingTo([observer(options["log_format"], quiet_below)], redirectStandardIO=False)
    if options["client"]:
        from memmq.cli import run

        return run(options, reactor)
    if options["interactive"]:
        from memmq.prompt import run

        return run(options, reactor)
    return serve(options, reactor)


def serve(options: MemmqOptions, reactor, worker=None) -> int:
    """
    Build the service tree of C{options} under a L{ProcessRoot}, start
    it, and run the reactor until it stops (the tree stopped first); the
    exit status.  The one start of a server process: the C{memmq} command's
    and, with its C{worker}, each C{--workers} worker's.
    """
    from memmq.tap import makeService

    service = makeService(options, reactor, root=ProcessRoot, worker=worker)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
