#!/usr/bin/env python3
"""grpcio-reflection's Python client against a running labmq-server: it speaks
grpc.reflection.v1alpha (as older grpcurl builds and many GUI clients do). Lists the
services, loads message.MessageService's descriptors through reflection alone (no .proto
file, no generated stubs), and calls Factorial with a message class built from them.

Usage: reflection_compat.py HOST:PORT
Needs: pip install grpcio grpcio-reflection
Exit status: 0 all checks passed, 1 a check failed, 2 usage or missing packages.
"""

import sys

PIP_HINT = "pip install grpcio grpcio-reflection"

try:
    import grpc
    from google.protobuf.descriptor_pool import DescriptorPool
    from google.protobuf.message_factory import GetMessageClass
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
except ImportError as error:
    print(f"reflection_compat: {error}; install: {PIP_HINT}", file=sys.stderr)
    sys.exit(2)


def check(condition, what):
    if not condition:
        print(f"reflection_compat: FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    with grpc.insecure_channel(sys.argv[1]) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        check("message.MessageService" in services, f"v1alpha lists message.MessageService ({sorted(services)})")
        check("grpc.health.v1.Health" in services, "v1alpha lists grpc.health.v1.Health")
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("message.MessageService")
        methods = sorted(method.name for method in service.methods)
        check(
            methods == ["AssignAB", "ComputeBatch", "Factorial", "MostFrequentLetter", "ProcessMessage"],
            f"v1alpha describes every method ({methods})",
        )
        factorial = service.methods_by_name["Factorial"]
        request_class = GetMessageClass(factorial.input_type)
        response_class = GetMessageClass(factorial.output_type)
        call = channel.unary_unary(
            "/message.MessageService/Factorial",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        answer = call(request_class(n=10), timeout=30)
        check(answer.result == "3628800", f"Factorial(10) through reflected types = {answer.result}")
    print("reflection checks OK")


if __name__ == "__main__":
    main()
