"""
The generated gRPC modules are what grpcio-tools makes of memmq/rpc/mq.proto
today, and that file is asim/mq's service, unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from memmq.rpc import PROTO, PROTOC_ARGUMENTS, mq_pb2
from tests.support import REPO

_GENERATED = ("mq_pb2.py", "mq_pb2_grpc.py", "mq_pb2.pyi")
# Lines that name the versions of the tools that generated a module.
_VERSION_LINE = re.compile(r"(?im)^.*(version|[0-9]+,\s*[0-9]+,\s*[0-9]+,).*$")


def _tools_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("grpcio-tools")
    except Exception:
        return None


class GeneratedModulesTests(SynchronousTestCase):
    def test_fresh(self) -> None:
        """
        Regenerating from mq.proto with the documented command gives the
        committed modules, byte for byte (with another grpcio-tools version
        than the one that made them, the lines naming versions aside).
        """
        tools = _tools_version()
        if tools is None:
            raise SkipTest("grpcio-tools is not installed (pip install '.[test]')")
        with tempfile.TemporaryDirectory() as tmp:
            os.makedirs(os.path.join(tmp, "memmq", "rpc"))
            shutil.copy(os.path.join(REPO, PROTO), os.path.join(tmp, PROTO))
            result = subprocess.run(
                [sys.executable, "-m", "grpc_tools.protoc", *PROTOC_ARGUMENTS],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            for name in _GENERATED:
                with open(os.path.join(tmp, "memmq", "rpc", name), encoding="utf-8") as f:
                    fresh = f.read()
                with open(os.path.join(REPO, "memmq", "rpc", name), encoding="utf-8") as f:
                    committed = f.read()
                if f"GRPC_GENERATED_VERSION = '{tools}'" not in _read_grpc_module():
                    fresh, committed = _VERSION_LINE.sub("", fresh), _VERSION_LINE.sub("", committed)
                self.assertEqual(fresh, committed, f"memmq/rpc/{name} is stale: regenerate it (see mq.proto)")

    def test_wire_names(self) -> None:
        """
        The package, service, methods and field numbers are asim/mq's.
        """
        service = mq_pb2.DESCRIPTOR.services_by_name["MQ"]
        self.assertEqual(service.full_name, "mq.MQ")
        self.assertEqual(
            {m.name: (m.input_type.full_name, m.output_type.full_name, m.server_streaming) for m in service.methods},
            {"Pub": ("mq.PubRequest", "mq.PubResponse", False), "Sub": ("mq.SubRequest", "mq.SubResponse", True)},
        )
        fields = {
            message: {f.name: (f.number, f.type) for f in mq_pb2.DESCRIPTOR.message_types_by_name[message].fields}
            for message in ("PubRequest", "PubResponse", "SubRequest", "SubResponse")
        }
        string, bytes_ = 9, 12  # FieldDescriptor.TYPE_STRING, TYPE_BYTES
        self.assertEqual(
            fields,
            {
                "PubRequest": {"topic": (1, string), "payload": (2, bytes_)},
                "PubResponse": {},
                "SubRequest": {"topic": (1, string)},
                "SubResponse": {"payload": (1, bytes_)},
            },
        )


def _read_grpc_module() -> str:
    with open(os.path.join(REPO, "memmq", "rpc", "mq_pb2_grpc.py"), encoding="utf-8") as f:
        return f.read()
