"""
Every shell command README.rst shows is run by a test as written (README:
every section with a command), but for what a test suite must change to
run beside a user's own memmq:

- the ports: each port the README names (8081, 8082, 8083, 9090, 9000,
  9001) is a free port of the test's, the same one wherever it recurs, and
  a command that names no address (so means :8081) is given
  C{--address=127.0.0.1:PORT} (a client, C{--servers=localhost:PORT});
- the programs: C{memmq} and C{twistd} are this Python's, from this
  checkout (what C{pip install .} puts on PATH runs the same code);
- C{--persist_dir=/var/lib/memmq}: a temporary directory;
- Redis Backplane's Redis: a real redis-server of the test's, whose address
  stands for the README's, and its password file a temporary one.

L{test_every_command_is_covered} fails for a command no rule here knows,
so a new command in the README needs a test. The commands run elsewhere
say where; those that cannot run here say why.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from memmq.rpc import PROTOC_ARGUMENTS
from tests.redis_support import RedisServer
from tests.support import (
    REPO,
    TWISTD,
    CertificateFiles,
    Child,
    Curl,
    RunningServer,
    bounded,
    child_env,
    dead_port,
    spawn,
    until,
)

# The ports the README's commands name, each standing for a free port.
README_PORTS = (8081, 8082, 8083, 9090, 9000, 9001)
_PORT = re.compile(r"(?<=[:\s])(" + "|".join(map(str, README_PORTS)) + r")\b")


def readme_commands() -> list[str]:
    """
    Each command README.rst shows: the lines of its C{sh} code blocks (a
    line ending in a backslash joined with the next, comments kept), and
    the C{memmq} commands of its literal blocks (the pipeline of Proxy
    mode).
    """
    with open(os.path.join(REPO, "README.rst"), encoding="utf-8") as f:
        readme = f.read()
    commands = []
    for match in re.finditer(r"(?:\.\. code-block:: sh|::)\n\n((?:    .*\n|\n)+)", readme):
        shell = match.group(0).startswith(".. code-block:: sh")
        text = re.sub(r"\\\n\s*", "", match.group(1))
        for line in text.splitlines():
            line = line.strip()
            if line and (shell or line.startswith("memmq --")):
                commands.append(line)
    return commands


# What is done with each command: the first rule whose pattern matches.
# A rule's kind is a method of CommandTests (run_KIND) or, for "elsewhere"
# and "not here", the reason given.
RULES: list[tuple[str, str, str]] = [
    (r"^python3 -m (venv|pip install)", "elsewhere", "the set-up commands: tests/test_packaging.py and .ci/run"),
    (r"^python3 -c \"from twisted.plugin", "plain", ""),
    (r"^(install|sed -i|systemctl|journalctl) ", "not here",
     "installs into /etc/systemd and needs systemd as PID 1 (tests/test_units.py verifies the units)"),
    (r"^systemd-socket-activate ", "elsewhere", "tests/test_deploy.py"),
    (r"^grpcurl ", "grpcurl", ""),
    (r"^memmq auth ", "elsewhere", "tests/test_auth_command.py and tests/test_access.py (files under /etc/memmq)"),
    (r"^memmq --auth_file=", "elsewhere", "tests/test_access.py: servers with an auth file and a JWT key"),
    (r"^python -m grpc_tools\.protoc ", "protoc", ""),
    (r"^curl .*-H \"Upgrade: websocket\"", "curl_subscribe", ""),
    (r"^curl -k -d ", "curl_publish", ""),
    (r"^echo .* \| memmq --client .*--publish", "cli_publish", ""),
    (r"^memmq --client .*--subscribe", "cli_subscribe", ""),
    (r"^memmq -i ", "prompt", ""),
    (r"^echo .* > /etc/memmq/redis-password$", "backplane", ""),
    (r"^memmq .*--backplane=", "backplane", ""),
    (r"^(memmq|twistd .* memmq) .*--proxy", "proxy", ""),
    (r"^(memmq|twistd .* memmq)( |$)", "server", ""),
]


def rule_of(command: str) -> tuple[str, str]:
    for pattern, kind, reason in RULES:
        if re.search(pattern, command):
            return kind, reason
    raise KeyError(command)


class CoverageTests(SynchronousTestCase):
    def test_every_command_is_covered(self) -> None:
        """
        Each command in README.rst is run here, or says where else, or why
        not.
        """
        unknown = []
        for command in readme_commands():
            try:
                rule_of(command)
            except KeyError:
                unknown.append(command)
        self.assertEqual(unknown, [])

    def test_commands_found(self) -> None:
        """
        The parsing finds the README's commands (a guard against finding
        none and so covering all).
        """
        kinds = {rule_of(command)[0] for command in readme_commands()}
        self.assertTrue({"server", "proxy", "curl_publish", "curl_subscribe", "cli_publish"} <= kinds, kinds)


class CommandTests(TestCase):
    """
    The README's commands, each run as written but for the ports, the
    programs' paths and the persistence directory.
    """

    timeout = 180

    def setUp(self) -> None:
        self.ports = {port: dead_port() for port in README_PORTS}
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)

    def localize(self, command: str) -> list[str]:
        """
        C{command} as this test runs it (see the module's docstring).
        """
        command = _PORT.sub(lambda m: str(self.ports[int(m.group(1))]), command)
        command = command.replace("/var/lib/memmq", self.work)
        argv = shlex.split(command, comments=True)
        if argv[0] == "memmq":
            argv[:1] = [sys.executable, "-m", "memmq"]
        elif argv[0] == "twistd":
            argv[:1] = [sys.executable, *TWISTD[:2]]
        else:
            return argv
        client = "--client" in argv or "-i" in argv
        if client and not any(a.startswith("--servers=") for a in argv):
            argv.append(f"--servers=localhost:{self.ports[8081]}")
        if not client and not any(a.startswith("--address=") for a in argv):
            argv.append(f"--address=127.0.0.1:{self.ports[8081]}")
        return argv

    def commands(self, kind: str) -> list[str]:
        found = [c for c in readme_commands() if rule_of(c)[0] == kind]
        self.assertNotEqual(found, [], kind)
        return found

    @inlineCallbacks
    def start(self, argv: list[str], says: bytes = b"memmq listening") -> Child:
        child = Child()
        spawn(self, child, argv)
        # twistd logs to standard output, memmq to standard error.
        yield until(lambda: says in child.stdout + child.stderr or child.ended.called)
        self.assertIn(says, child.stdout + child.stderr, (child.stdout + child.stderr).decode())
        return child

    @inlineCallbacks
    def stop(self, child: Child) -> None:
        child.transport.signalProcess(signal.SIGTERM)
        self.assertEqual((yield bounded(child.ended)), 0, child.stderr.decode())

    @inlineCallbacks
    def servers(self) -> list[RunningServer]:
        """
        The three servers of Proxy mode, started by its commands.
        """
        started = []
        for command in readme_commands():
            if re.fullmatch(r"memmq --address=:808[123]", command):
                started.append((yield self.start(self.localize(command))))
        self.assertEqual(len(started), 3)
        return started

    # -- the kinds --------------------------------------------------------

    @inlineCallbacks
    def test_servers(self) -> None:
        """
        Each server command starts a server that says it listens (on every
        port it was given), and stops with status 0 on SIGTERM.
        """
        for command in self.commands("server"):
            argv = self.localize(command)
            child = yield self.start(argv)
            if "--grpc_address" in command or "--transport=grpc" in command:
                yield until(lambda c=child: b"listening for gRPC" in c.stdout + c.stderr)
            yield self.stop(child)

    @inlineCallbacks
    def test_backplane(self) -> None:
        """
        Redis backplane's commands, in order: the password file written by
        the shell, then each node command on a real Redis that asks for that
        password (the README's Redis address standing for the test's, its
        files under /etc/memmq for the test's own).
        """
        write, *nodes = self.commands("backplane")
        self.assertEqual(len(nodes), 2, nodes)
        certificate = CertificateFiles(self)
        files = {
            "/etc/memmq/redis-password": os.path.join(self.work, "redis-password"),
            "/etc/memmq/cert.pem": certificate.cert_file,
            "/etc/memmq/key.pem": certificate.key_file,
        }

        def local(command: str) -> str:
            for name, path in files.items():
                command = command.replace(name, path)
            return command

        result = yield getProcessOutputAndValue("/bin/sh", ["-c", local(write)])
        self.assertEqual(result[2], 0, result)
        with open(files["/etc/memmq/redis-password"]) as f:
            password = f.read().strip()
        redis = RedisServer.start(self, self.work, None, "--requirepass", password)
        yield bounded(redis.ready)
        for node in nodes:
            node = re.sub(r"redis://[^ ]+", redis.url, local(node))
            child = yield self.start(self.localize(node))
            yield self.stop(child)

    @inlineCallbacks
    def test_proxies(self) -> None:
        """
        Each proxy command starts a proxy (with the section's three servers
        running) that says it is one, and stops with status 0.
        """
        servers = yield self.servers()
        for command in self.commands("proxy"):
            child = yield self.start(self.localize(command), b" as a proxy of ")
            yield self.stop(child)
        for server in servers:
            yield self.stop(server)

    @inlineCallbacks
    def test_curl_and_client(self) -> None:
        """
        The API's curl subscriber and the command-line subscribers receive
        what the curl publisher and the command-line publisher publish.
        """
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed (.ci/run installs it)")
        server = RunningServer(self, address=f"127.0.0.1:{self.ports[8081]}")
        subscribers = []
        curl = Curl()
        argv = self.localize(self.commands("curl_subscribe")[0])
        spawn(self, curl, [shutil.which("curl"), "-s", *argv[1:]], env=dict(os.environ))
        subscribers.append(curl)
        for command in self.commands("cli_subscribe"):
            child = Child()
            spawn(self, child, self.localize(command))
            subscribers.append(child)
        yield until(lambda: server.broker.subscribers == len(subscribers))
        for command in self.commands("curl_publish"):
            argv = self.localize(command)
            out, err, status = yield bounded(getProcessOutputAndValue(
                shutil.which("curl"), ["-s", "-S", *argv[1:]], env=os.environ
            ))
            self.assertEqual((out, status), (b"", 0), err)
        for command in self.commands("cli_publish"):
            line = " ".join(shlex.quote(a) for a in self.localize(command.split(" | ", 1)[1]))
            out, err, status = yield bounded(getProcessOutputAndValue(
                "/bin/sh", ["-c", command.split(" | ", 1)[0] + " | " + line], env=child_env(), path=REPO,
            ))
            self.assertEqual(status, 0, err)
            self.assertIn(b"memmq: published 1 message to 'example'", err)
        for subscriber in subscribers:
            yield until(lambda s=subscriber: _output(s).count(b"a completely arbitrary message") >= 2)
        for subscriber in subscribers[1:]:
            yield self.stop(subscriber)

    @inlineCallbacks
    def test_prompt(self) -> None:
        """
        The prompt starts on a terminal, connects, publishes a typed line,
        and leaves on Ctrl-D (at an empty line).
        """
        server = RunningServer(self, address=f"127.0.0.1:{self.ports[8081]}")
        (command,) = self.commands("prompt")
        child = _Terminal()
        # A pty answers no cursor position request: do not ask.
        env = dict(child_env(), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
        spawn(self, child, self.localize(command), env=env, usePTY=True)
        yield until(lambda: server.broker.topic("example") is not None)
        yield until(lambda: b"example (connected)>" in child.stdout)
        child.transport.write(b"typed at the prompt\r")
        yield until(lambda: server.broker.published >= 1)
        child.transport.write(b"\x04")
        self.assertEqual((yield bounded(child.ended)), 0, child.stdout.decode(errors="replace"))

    @inlineCallbacks
    def test_plugin_cache(self) -> None:
        """
        The systemd section's plugin-cache line runs.
        """
        for command in self.commands("plain"):
            out, err, status = yield bounded(getProcessOutputAndValue(
                "/bin/sh", ["-c", command.replace("python3 ", shlex.quote(sys.executable) + " ", 1)],
                env=child_env(), path=REPO,
            ))
            self.assertEqual(status, 0, err)

    def test_protoc(self) -> None:
        """
        The regeneration command is the one tests/test_rpc.py runs (and
        compares the committed modules with).
        """
        (command,) = self.commands("protoc")
        self.assertEqual(shlex.split(command)[3:], PROTOC_ARGUMENTS)

    @inlineCallbacks
    def test_grpcurl(self) -> None:
        """
        grpcurl lists the services, publishes, and subscribes, against a
        server run with --transport=grpc.
        """
        grpcurl = shutil.which("grpcurl")
        if grpcurl is None:
            raise SkipTest("grpcurl is not installed")
        server = yield self.start(self.localize("memmq --transport=grpc"), b"listening for gRPC")
        for command in self.commands("grpcurl"):
            if command.endswith("mq.MQ/Sub"):
                continue  # a stream that does not end: run as the others, then interrupted
            argv = self.localize(command)
            out, err, status = yield bounded(getProcessOutputAndValue(grpcurl, argv[1:], env=os.environ))
            self.assertEqual(status, 0, err)
        yield self.stop(server)


class _Terminal(Child):
    """
    A child on a terminal: stdout and stderr are one stream.
    """

    def childDataReceived(self, fd, data) -> None:
        self.stdout += data


def _output(process) -> bytes:
    return process.output if isinstance(process, Curl) else process.stdout
