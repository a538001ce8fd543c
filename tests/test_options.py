"""
Tests for the command-line options: sizes, listen addresses, the server's
options and their defaults, and what the memmq command does with a bad one.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

import memmq
from memmq.options import GROUPS, MemmqOptions, format_size, parse_size
from memmq.script import Options
from memmq.server.listen import AddressError, parse_address
from memmq.tls import self_signed_certificate
from tests.support import REPO, run_memmq

OPTIONS = (
    "--address",
    "--cert_file",
    "--key_file",
    "--max_message_size",
    "--max_buffered_messages",
    "--max_buffered_bytes",
    "--access_log",
)


def _write_certificate(directory: str) -> tuple[str, str]:
    """
    Write a self-signed certificate and its key to C{directory}; return
    their paths.
    """
    certificate = self_signed_certificate("localhost")
    cert_file = os.path.join(directory, "cert.pem")
    key_file = os.path.join(directory, "key.pem")
    with open(cert_file, "wb") as f:
        f.write(certificate.chain_pem())
    with open(key_file, "wb") as f:
        f.write(certificate.key_pem())
    return cert_file, key_file


class ParseSizeTests(SynchronousTestCase):
    """
    Sizes are a number of bytes with an optional unit: K, M, G and KiB,
    MiB, GiB count in 1024s, KB, MB and GB in 1000s.
    """

    def test_sizes(self) -> None:
        """
        Plain numbers are bytes; K, M, G with or without iB count in 1024s,
        KB, MB, GB in 1000s; any case, spaces allowed around the unit.
        """
        cases = {
            "1": 1,
            "1048576": 1048576,
            "512KiB": 512 * 1024,
            "8MiB": 8 * 1024 * 1024,
            "8 MiB": 8 * 1024 * 1024,
            "1G": 1024**3,
            "2k": 2048,
            "3kb": 3000,
            "1kB": 1000,
            "10B": 10,
            " 4 MB ": 4_000_000,
            "1MB": 1_000_000,
            "2GB": 2_000_000_000,
            "1gib": 1024**3,
        }
        for text, size in cases.items():
            with self.subTest(text=text):
                self.assertEqual(parse_size(text), size)

    def test_bad_sizes(self) -> None:
        """
        Anything else raises L{ValueError} naming the text.
        """
        for text in ("", "abc", "KiB", "-1", "0", "0MiB", "-2KiB", "1.5M", "1T", "12 MiBs", "1 K B", "0x10"):
            with self.subTest(text=text):
                error = self.assertRaises(ValueError, parse_size, text)
                self.assertIn(repr(text), str(error))


    def test_reasons(self) -> None:
        """
        Zero and negative sizes and unknown units each say what is wrong.
        """
        self.assertIn("must be more than 0", str(self.assertRaises(ValueError, parse_size, "0")))
        self.assertIn("must be more than 0", str(self.assertRaises(ValueError, parse_size, "-5")))
        self.assertIn("unknown unit 'xb'", str(self.assertRaises(ValueError, parse_size, "1xb")))

    def test_format(self) -> None:
        """
        L{format_size} writes a size in the largest binary unit that divides
        it, as the help shows defaults.
        """
        cases = {8388608: "8 MiB", 1048576: "1 MiB", 512 * 1024: "512 KiB", 1024**3: "1 GiB", 1000: "1000 B"}
        for size, text in cases.items():
            with self.subTest(size=size):
                self.assertEqual(format_size(size), text)
                self.assertEqual(parse_size(text), size)


class ParseAddressTests(SynchronousTestCase):
    """
    --address is host:port, :port or [v6]:port.
    """

    def test_addresses(self) -> None:
        """
        Host and port are split; brackets around an IPv6 host are removed;
        an empty host stays empty (every interface).
        """
        cases = {
            ":8081": ("", 8081),
            "127.0.0.1:9091": ("127.0.0.1", 9091),
            "[::1]:8081": ("::1", 8081),
            "localhost:0": ("localhost", 0),
            "[::]:65535": ("::", 65535),
            "mq.example.org:443": ("mq.example.org", 443),
        }
        for text, (host, port) in cases.items():
            with self.subTest(text=text):
                address = parse_address(text)
                self.assertEqual((address.host, address.port), (host, port))

    def test_str(self) -> None:
        """
        An address prints as it is written, IPv6 hosts in brackets.
        """
        for text in (":8081", "127.0.0.1:9091", "[::1]:8081"):
            with self.subTest(text=text):
                self.assertEqual(str(parse_address(text)), text)

    def test_bad_addresses(self) -> None:
        """
        A missing port, an unbracketed IPv6 host, a port out of range or not
        a number raise L{AddressError} with one line naming the address.
        """
        for text in ("foo", "", "::1:80", "host:99999", "host:65536", "host:-1", "host:abc", "host:"):
            with self.subTest(text=text):
                error = self.assertRaises(AddressError, parse_address, text)
                self.assertIsInstance(error, ValueError)
                self.assertIn(repr(text), str(error))
                self.assertNotIn("\n", str(error))


class MemmqOptionsTests(SynchronousTestCase):
    """
    The server's options: defaults, parsed values and usage errors.
    """

    def _parse(self, *args: str) -> MemmqOptions:
        options = MemmqOptions()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """
        Without arguments: listen on :8081, 1 MiB messages, 1000 messages or
        8 MiB buffered per subscriber, no access log, a certificate to be
        generated.
        """
        options = self._parse()
        self.assertEqual(options["address"], ":8081")
        self.assertEqual((options["listen_address"].host, options["listen_address"].port), ("", 8081))
        self.assertEqual(options["max_message_size"], 1048576)
        self.assertEqual(options["max_buffered_messages"], 1000)
        self.assertEqual(options["max_buffered_bytes"], 8388608)
        self.assertFalse(options["access_log"])
        self.assertIsNone(options["cert_file"])
        self.assertIsNone(options["key_file"])
        self.assertIsNone(options["certificate"])

    def test_values(self) -> None:
        """
        Given values are parsed, sizes with their units.
        """
        options = self._parse(
            "--address", "[::1]:9091",
            "--max_message_size", "512KiB",
            "--max_buffered_messages=20",
            "--max_buffered_bytes", "2MiB",
            "--access_log",
        )
        self.assertEqual((options["listen_address"].host, options["listen_address"].port), ("::1", 9091))
        self.assertEqual(options["max_message_size"], 512 * 1024)
        self.assertEqual(options["max_buffered_messages"], 20)
        self.assertEqual(options["max_buffered_bytes"], 2 * 1024 * 1024)
        self.assertTrue(options["access_log"])

    def test_certificate_loaded(self) -> None:
        """
        --cert_file with --key_file loads the certificate at parse time.
        """
        base = self.mktemp()
        os.makedirs(base)
        cert_file, key_file = _write_certificate(base)
        options = self._parse("--cert_file", cert_file, "--key_file", key_file)
        self.assertEqual(options["certificate"].origin, f"loaded from {cert_file}")
        self.assertEqual(len(options["certificate"].chain), 1)

    def assertUsageError(self, *args: str) -> str:
        """
        Parsing C{args} raises L{usage.UsageError}; return its message.
        """
        error = self.assertRaises(usage.UsageError, MemmqOptions().parseOptions, list(args))
        message = str(error)
        self.assertTrue(message)
        self.assertNotIn("\n", message)
        return message

    def test_unknown_flag(self) -> None:
        """
        An unknown option is a usage error naming it.
        """
        self.assertIn("--bogus", self.assertUsageError("--bogus"))

    def test_stray_argument(self) -> None:
        """
        A positional argument is a usage error naming it.
        """
        self.assertIn("stray", self.assertUsageError("stray"))

    def test_cert_without_key(self) -> None:
        """
        --cert_file without --key_file, or the other way round, is a usage
        error.
        """
        base = self.mktemp()
        os.makedirs(base)
        cert_file, key_file = _write_certificate(base)
        self.assertIn("--key_file", self.assertUsageError("--cert_file", cert_file))
        self.assertIn("--cert_file", self.assertUsageError("--key_file", key_file))

    def test_unreadable_certificate(self) -> None:
        """
        A certificate file that cannot be read is a usage error naming it.
        """
        base = self.mktemp()
        os.makedirs(base)
        _, key_file = _write_certificate(base)
        absent = os.path.join(base, "absent.pem")
        self.assertIn(absent, self.assertUsageError("--cert_file", absent, "--key_file", key_file))

    def test_bad_address(self) -> None:
        """
        A bad --address is a usage error naming it.
        """
        self.assertIn("'foo'", self.assertUsageError("--address", "foo"))
        self.assertIn("::1:80", self.assertUsageError("--address", "::1:80"))

    def test_bad_numbers(self) -> None:
        """
        A negative --max_buffered_messages, or a size that is not one, is a
        usage error naming the option.
        """
        self.assertIn("--max_buffered_messages", self.assertUsageError("--max_buffered_messages", "-1"))
        self.assertIn("--max_buffered_messages", self.assertUsageError("--max_buffered_messages=many"))
        self.assertIn("--max_message_size", self.assertUsageError("--max_message_size", "5X"))
        self.assertIn("--max_buffered_bytes", self.assertUsageError("--max_buffered_bytes", "-1"))


class CommandLineTests(SynchronousTestCase):
    """
    The memmq command turns a usage error into one line on stderr and exit
    status 2; --version and --help print and exit 0.
    """

    def _exit_of(self, args: list[str]) -> tuple[SystemExit, bytes]:
        """
        Parse C{args} with L{Options} while fd 2 goes to a file; return the
        L{SystemExit} raised and what was written to fd 2.
        """
        path = self.mktemp()
        saved = os.dup(2)
        try:
            with open(path, "wb") as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    error = self.assertRaises(SystemExit, Options().parseOptions, args)
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)
        with open(path, "rb") as f:
            return error, f.read()

    def test_usage_error_exits_2(self) -> None:
        """
        L{Options.parseOptions} with a bad option raises C{SystemExit(2)}
        after writing one line to fd 2.
        """
        for args in (["--bogus"], ["--max_buffered_messages", "-1"], ["--address", "foo"], ["stray"]):
            with self.subTest(args=args):
                error, written = self._exit_of(args)
                self.assertEqual(error.code, 2)
                self.assertTrue(written.startswith(b"memmq: "), written)
                self.assertEqual(len(written.splitlines()), 1, written)
                self.assertNotIn(b"Parameter type enforcement failed", written)

    def test_good_options_parse(self) -> None:
        """
        L{Options} parses good options as L{MemmqOptions} does.
        """
        options = Options()
        options.parseOptions(["--address", "127.0.0.1:0"])
        self.assertEqual(options["listen_address"].port, 0)

    def test_bogus_option_process(self) -> None:
        """
        C{memmq --bogus} exits with status 2 and one line on stderr naming
        the option, and prints nothing on stdout.
        """
        result = run_memmq("--bogus")
        self.assertEqual(result.returncode, 2, result.stderr)
        lines = result.stderr.decode("utf-8").splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("memmq: "), lines[0])
        self.assertIn("--bogus", lines[0])
        self.assertEqual(result.stdout, b"")

    def test_nonsense_sizes_process(self) -> None:
        """
        Every size option refuses 0, a negative size and an unknown unit:
        one line on stderr saying which option and why, exit status 2.
        """
        for name in ("max_message_size", "max_buffered_bytes"):
            for value, reason in (("0", "a size must be more than 0"), ("-1KiB", "a size must be more than 0"),
                                  ("1xb", "unknown unit 'xb'")):
                with self.subTest(option=name, value=value):
                    result = run_memmq(f"--{name}={value}")
                    self.assertEqual(result.returncode, 2, result.stderr)
                    self.assertEqual(
                        result.stderr.decode().splitlines(),
                        [f"memmq: --{name}: {value!r}: {reason}"
                         + (" (use B, KiB, MiB, GiB, KB, MB or GB)" if "unit" in reason else "")
                         + " (see memmq --help)"],
                    )

    def test_sizes_with_units(self) -> None:
        """
        Every size option takes units: 1MB is 1,000,000 bytes, 1kb 1000, 1MiB
        1,048,576.
        """
        options = MemmqOptions()
        options.parseOptions(["--max_message_size=1MB", "--max_buffered_bytes=1kb"])
        self.assertEqual((options["max_message_size"], options["max_buffered_bytes"]), (1_000_000, 1000))
        options = MemmqOptions()
        options.parseOptions(["--max_message_size=1MiB", "--max_buffered_bytes=2 m"])
        self.assertEqual((options["max_message_size"], options["max_buffered_bytes"]), (1048576, 2 * 1048576))

    def test_version(self) -> None:
        """
        C{memmq --version} prints "memmq VERSION" and exits 0.
        """
        result = run_memmq("--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode("utf-8").strip(), f"memmq {memmq.__version__}")
        self.assertEqual(result.stderr, b"")

    def test_help(self) -> None:
        """
        C{memmq --help} lists every option and exits 0.
        """
        result = run_memmq("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        text = result.stdout.decode("utf-8")
        for option in OPTIONS:
            with self.subTest(option=option):
                self.assertIn(option, text)


class ClientOptionsTests(SynchronousTestCase):
    """
    The command-line client's options and the combinations SPEC section 2
    refuses.
    """

    def _parse(self, *args: str) -> MemmqOptions:
        options = MemmqOptions()
        options.parseOptions(list(args))
        return options

    def _refused(self, *args: str) -> str:
        return str(self.assertRaises(usage.UsageError, MemmqOptions().parseOptions, list(args)))

    def test_client_defaults(self) -> None:
        """
        A client talks to localhost:8081, every server, names as given, one retry.
        """
        options = self._parse("--client", "--topic=t", "--publish")
        self.assertEqual(options["server_list"], ["localhost:8081"])
        self.assertEqual((options["select"], options["resolver"], options["retries"]), ("all", "ip", 1))
        self.assertIsNone(options["ca_file"])

    def test_client_values(self) -> None:
        """
        --servers is split on commas; --select, --resolver, --retries are kept.
        """
        options = self._parse(
            "--client", "--topic=t", "--subscribe", "--servers=a:1, b:2,https://c:3",
            "--select=shard", "--resolver=dns", "--retries=4",
        )
        self.assertEqual(options["server_list"], ["a:1", "b:2", "https://c:3"])
        self.assertEqual((options["select"], options["resolver"], options["retries"]), ("shard", "dns", 4))

    def test_interactive(self) -> None:
        """
        -i takes a topic and the client options.
        """
        options = self._parse("-i", "--topic=chat", "--servers=x:1")
        self.assertTrue(options["interactive"])
        self.assertEqual(options["server_list"], ["x:1"])

    def test_refused_combinations(self) -> None:
        """
        Each invalid combination is refused with a line that says what is wrong.
        """
        cases = [
            (("--client", "--publish"), "--client needs --topic"),
            (("--client", "--topic=t"), "--client needs --publish or --subscribe (or both)"),
            (("-i",), "-i needs --topic"),
            (("--client", "-i", "--topic=t", "--publish"), "--client and -i do not go together"),
            (("--publish",), "--publish and --subscribe go with --client"),
            (("--topic=t",), "--topic goes with --client or -i"),
            (("--servers=a:1",), "--servers goes with --client, -i or --proxy"),
            (("--proxy",), "--proxy needs --servers"),
            (("--proxy", "--client", "--servers=a:1"), "--proxy does not go with --client"),
            (("--proxy", "-i", "--servers=a:1"), "--proxy does not go with -i"),
            (("--proxy", "--servers=a:1", "--topic=t"), "--topic goes with --client or -i"),
            (("--proxy", "--servers=a:1", "--dns_server=127.0.0.1:53"), "--dns_server goes with --resolver=dns"),
            (("--proxy", "--servers=a:1", "--resolver=dns", "--dns_server=x"), "is not host:port"),
            (("--proxy", "--servers=a:1", "--resolver=dns", "--resolve_interval=0"), "must be more than 0"),
            (("--client", "--topic=t", "--publish", "--select=some"), "unknown --select 'some': use all or shard"),
            (("--client", "--topic=t", "--publish", "--resolver=mdns"), "unknown --resolver 'mdns': use ip or dns"),
            (("--client", "--topic=", "--publish"), "--topic is empty: name a topic, as --topic=NAME"),
            (("--client", "--topic=t", "--publish", "--servers=ftp://x"), "is not host:port or an http(s) URL"),
            (("--client", "--topic=t", "--publish", "--retries=-1"), "cannot be negative"),
            (("--client", "--topic=t", "--publish", "--ca_file=/nonexistent.pem"), "/nonexistent.pem"),
            (("--client", "--topic=t", "--publish", "--output_format=json"),
             "--output_format goes with --client --subscribe"),
            (("--client", "--topic=t", "--subscribe", "--output_format=xml"),
             "unknown --output_format 'xml': use raw, json or line"),
            (("--upstream_transport=grpc",), "--upstream_transport goes with --proxy"),
        ]
        for args, reason in cases:
            with self.subTest(args=args):
                self.assertIn(reason, self._refused(*args))


class LightImportTests(SynchronousTestCase):
    """
    Parsing options loads nothing heavy: the defaults live in a leaf module.
    """

    def test_import_loads_no_front_end(self) -> None:
        """
        C{import memmq.options}, in a fresh interpreter, loads no twisted.web,
        autobahn, grpc or prometheus_client module.
        """
        heavy = ("twisted.web", "autobahn", "grpc", "prometheus_client")
        result = subprocess.run(
            [sys.executable, "-c", "import sys, memmq.options; print('\\n'.join(sorted(sys.modules)))"],
            check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
            capture_output=True, timeout=30,
        )
        loaded = result.stdout.decode().split()
        self.assertIn("memmq.options", loaded)
        self.assertEqual([m for m in loaded if m.split(".")[0] in heavy or m.startswith(heavy)], [])

    def test_port_written_once(self) -> None:
        """
        The default port, 8081, is a value in memmq.defaults alone: no other
        module's code holds it (docstrings and messages may show it).
        """
        import ast

        holders = []
        for directory, _, files in os.walk(os.path.join(REPO, "memmq")):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8") as f:
                        tree = ast.parse(f.read())
                    if any(isinstance(node, ast.Constant) and node.value == 8081 for node in ast.walk(tree)):
                        holders.append(os.path.relpath(path, REPO))
        self.assertEqual(holders, [os.path.join("memmq", "defaults.py")])


class HelpTests(SynchronousTestCase):
    """
    C{--help} lists the options group by group, sizes as a person writes
    them, and says what each size unit means.
    """

    def test_grouped(self) -> None:
        """
        Every option is in exactly one group, and the help shows each group's
        title followed by its own options.
        """
        names = [name for group in GROUPS for name in group.names()]
        self.assertEqual(sorted(names), sorted(set(MemmqOptions().synonyms.values())))
        text = MemmqOptions().getUsage(width=100)
        titles = [text.index(f"\n{group.title}" + (f" ({group.note})" if group.note else "") + ":\n")
                  for group in GROUPS]
        self.assertEqual(titles, sorted(titles))
        for group, start, end in zip(GROUPS, titles, titles[1:] + [len(text)], strict=True):
            for name in group.names():
                with self.subTest(option=name):
                    self.assertIn(f"--{name}", text[start:end])

    def test_sizes_readable(self) -> None:
        """
        Size defaults show as 1 MiB and 8 MiB, not in bytes, and the units are
        explained.
        """
        text = " ".join(MemmqOptions().getUsage(width=100).split())
        self.assertIn("[default: 1 MiB]", text)
        self.assertIn("[default: 8 MiB]", text)
        self.assertNotIn("8388608", text)
        self.assertIn("KiB = 1024", text)
        self.assertIn("MB = 1000^2", text)


class DocumentedInStepTests(SynchronousTestCase):
    """
    README.rst's Options section and the man page's OPTIONS list the
    options in the groups --help shows, under the same titles, in the same
    order.
    """

    def _sections(self, text: str, heading) -> dict[str, str]:
        """
        C{text} cut at each group's heading (found by C{heading(title)}):
        title -> the text up to the next group's heading.
        """
        starts = [text.index(heading(group.title)) for group in GROUPS]
        self.assertEqual(starts, sorted(starts))
        ends = starts[1:] + [len(text)]
        return {group.title: text[start:end] for group, start, end in zip(GROUPS, starts, ends, strict=True)}

    def _read(self, *path: str) -> str:
        with open(os.path.join(REPO, *path), encoding="utf-8") as f:
            return f.read()

    def test_readme(self) -> None:
        """
        Each option is in README.rst's subsection of Options named after
        its group.
        """
        readme = self._read("README.rst")
        options = readme[readme.index("Options\n=======\n"):]
        sections = self._sections(options, lambda title: f"\n{title}\n{'-' * len(title)}\n")
        for group in GROUPS:
            for name in group.names():
                with self.subTest(option=name):
                    self.assertIn(f"``--{name}", sections[group.title])

    def test_man_page(self) -> None:
        """
        Each option is in the man page's .SS subsection of OPTIONS named
        after its group.
        """
        man = self._read("man", "memmq.1")
        options = man[man.index(".SH OPTIONS\n"):]
        options = options[:options.index("\n.SH ", 1)]
        sections = self._sections(options, lambda title: f'.SS "{title}"\n')
        for group in GROUPS:
            for name in group.names():
                with self.subTest(option=name):
                    self.assertIn(f"\\-\\-{name}", sections[group.title])
