import os

# gRPC's fork handlers crash a child forked (by spawnProcess, to exec a
# command) while gRPC's threads run in this process; the tests spawn many.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
