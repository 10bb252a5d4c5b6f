#!/usr/bin/env python3
"""Wire-compatibility check: a plain grpcio client, generated from
proto/message_service.proto with grpc_tools.protoc, calls every MessageService method of a
running labmq-server and checks the answers.

Usage: grpc_client_compat.py HOST:PORT [--proto-dir DIR] [--stubs-dir DIR]

Stubs are generated into a temporary directory, or into --stubs-dir unless that already
holds them (e.g. from `python3 -m grpc_tools.protoc -Iproto --python_out=DIR
--grpc_python_out=DIR proto/message_service.proto`).
Needs: pip install grpcio grpcio-tools
Exit status: 0 all checks passed, 1 a check failed, 2 usage or missing packages.
"""

import argparse
import importlib
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO_FILE = "message_service.proto"
PIP_HINT = "pip install grpcio grpcio-tools"


def need_packages():
    try:
        import grpc  # noqa: F401
        from grpc_tools import protoc  # noqa: F401
    except ImportError as error:
        print(
            f"grpc_client_compat: {error}; install the Python gRPC packages: {PIP_HINT}",
            file=sys.stderr,
        )
        sys.exit(2)


def import_stubs(out_dir):
    sys.path.insert(0, out_dir)
    pb2 = importlib.import_module("message_service_pb2")
    pb2_grpc = importlib.import_module("message_service_pb2_grpc")
    return pb2, pb2_grpc


def generate_stubs(proto_dir, out_dir):
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        print(f"grpc_client_compat: protoc failed: {' '.join(args)}", file=sys.stderr)
        sys.exit(2)
    return import_stubs(out_dir)


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def equal(self, what, got, expected):
        if got == expected:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}: got {got!r}, expected {expected!r}", file=sys.stderr)

    def true(self, what, condition, detail=""):
        if condition:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what} {detail}", file=sys.stderr)


def run_checks(target, pb2, pb2_grpc):
    import grpc

    checks = Checks()
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # Loopback only: never route through an http_proxy from the environment.
        ("grpc.enable_http_proxy", 0),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=15)
        except grpc.FutureTimeoutError:
            print(f"grpc_client_compat: cannot connect to {target}", file=sys.stderr)
            sys.exit(1)
        stub = pb2_grpc.MessageServiceStub(channel)
        timeout = 60

        reply = stub.ProcessMessage(pb2.MessageRequest(text="привет"), timeout=timeout)
        checks.equal("ProcessMessage(привет)", reply.processed_text, "Processed by server: ПРИВЕТ")
        reply = stub.ProcessMessage(pb2.MessageRequest(text="hello"), timeout=timeout)
        checks.equal("ProcessMessage(hello)", reply.processed_text, "Processed by server: HELLO")

        for user_id, group in [("user0", "A"), ("user1", "B"), ("user2", "A"), ("user3", "B")]:
            reply = stub.AssignAB(pb2.ABRequest(user_id=user_id), timeout=timeout)
            checks.equal(f"AssignAB({user_id})", reply.group, group)

        for n, digits in [(0, "1"), (6, "720"), (20, "2432902008176640000")]:
            reply = stub.Factorial(pb2.FactorialRequest(n=n), timeout=timeout)
            checks.equal(f"Factorial({n})", reply.result, digits)
        reply = stub.Factorial(pb2.FactorialRequest(n=100000), timeout=timeout)
        checks.equal("len(Factorial(100000))", len(reply.result), 456574)
        checks.true(
            "Factorial(100000) prefix",
            reply.result.startswith("28242294079603478742"),
            reply.result[:20],
        )

        for text, letter, count in [("abracadabra", "a", 5), ("Привет, мир", "р", 2)]:
            reply = stub.MostFrequentLetter(pb2.TextRequest(text=text), timeout=timeout)
            checks.equal(f"MostFrequentLetter({text!r})", (reply.letter, reply.count), (letter, count))

        # Errors travel as gRPC status codes a Python client can branch on.
        for what, call in [
            ("Factorial(-1)", lambda: stub.Factorial(pb2.FactorialRequest(n=-1), timeout=timeout)),
            ("AssignAB('')", lambda: stub.AssignAB(pb2.ABRequest(user_id=""), timeout=timeout)),
            (
                "MostFrequentLetter('123')",
                lambda: stub.MostFrequentLetter(pb2.TextRequest(text="123"), timeout=timeout),
            ),
        ]:
            try:
                call()
                checks.true(f"{what} is refused", False, "but it succeeded")
            except grpc.RpcError as error:
                checks.equal(f"{what} status", error.code(), grpc.StatusCode.INVALID_ARGUMENT)

        # Several tasks in one call: each answered as its own call would be, in order,
        # a refused task as its status code (3 = INVALID_ARGUMENT) without failing the rest.
        batch = stub.ComputeBatch(
            pb2.BatchRequest(
                tasks=[
                    pb2.BatchTask(factorial=pb2.FactorialRequest(n=6)),
                    pb2.BatchTask(assign_ab=pb2.ABRequest(user_id="user1")),
                    pb2.BatchTask(process_message=pb2.MessageRequest(text="hello")),
                    pb2.BatchTask(most_frequent_letter=pb2.TextRequest(text="abracadabra")),
                    pb2.BatchTask(factorial=pb2.FactorialRequest(n=-1)),
                ]
            ),
            timeout=timeout,
        )
        outcomes = [result.WhichOneof("outcome") for result in batch.results]
        checks.equal(
            "ComputeBatch outcomes",
            outcomes,
            ["factorial", "assign_ab", "process_message", "most_frequent_letter", "error"],
        )
        if len(batch.results) == 5:
            checks.equal("ComputeBatch Factorial(6)", batch.results[0].factorial.result, "720")
            checks.equal("ComputeBatch AssignAB(user1)", batch.results[1].assign_ab.group, "B")
            checks.equal(
                "ComputeBatch ProcessMessage(hello)",
                batch.results[2].process_message.processed_text,
                "Processed by server: HELLO",
            )
            checks.equal(
                "ComputeBatch MostFrequentLetter(abracadabra)",
                (batch.results[3].most_frequent_letter.letter, batch.results[3].most_frequent_letter.count),
                ("a", 5),
            )
            checks.equal(
                "ComputeBatch Factorial(-1) code",
                batch.results[4].error.code,
                grpc.StatusCode.INVALID_ARGUMENT.value[0],
            )
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="labmq-server address, HOST:PORT")
    parser.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR)
    parser.add_argument("--stubs-dir", help="write stubs here instead of a temporary directory")
    args = parser.parse_args()
    need_packages()

    if args.stubs_dir:
        os.makedirs(args.stubs_dir, exist_ok=True)
        if os.path.exists(os.path.join(args.stubs_dir, "message_service_pb2_grpc.py")):
            pb2, pb2_grpc = import_stubs(args.stubs_dir)
        else:
            pb2, pb2_grpc = generate_stubs(args.proto_dir, args.stubs_dir)
        checks = run_checks(args.target, pb2, pb2_grpc)
    else:
        with tempfile.TemporaryDirectory(prefix="labmq-pystubs-") as stubs:
            pb2, pb2_grpc = generate_stubs(args.proto_dir, stubs)
            checks = run_checks(args.target, pb2, pb2_grpc)

    total = checks.passed + checks.failed
    if checks.failed:
        print(f"grpc_client_compat: {checks.failed} of {total} checks FAILED against {args.target}")
    else:
        print(f"grpc_client_compat: all {total} checks OK against {args.target}")
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
