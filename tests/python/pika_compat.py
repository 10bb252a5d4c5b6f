"""Wire compatibility with plain pika clients, as the original lab's Part 2 wrote them.

mode "produce": declare the task queue the pika way (durable=True, no arguments; with a
fifth argument "quorum", arguments={"x-queue-type": "quorum"}, as a pika user of a quorum
queue writes it), publish plain UTF-8 bodies with no properties, and read the consumer's
JSON result documents from a queue bound to the results exchange.

mode "consume": take the messages labmq-produce published, as a plain pika consumer would,
and print what it sees (one JSON line per message) for the Rust test to check.
"""
import json
import sys
import time

import pika


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


def produce(url, queue, results_exchange, queue_type):
    connection = connect(url)
    channel = connection.channel()
    arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
    channel.queue_declare(queue=queue, durable=True, arguments=arguments)
    channel.exchange_declare(exchange=results_exchange, exchange_type="fanout", durable=True)
    results = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(queue=results, exchange=results_exchange)
    bodies = ["fact:6", "freq:abracadabra", "user42", "upper:привет"]
    for body in bodies:
        channel.basic_publish(exchange="", routing_key=queue, body=body.encode("utf-8"))
    print("ready", flush=True)
    seen = {}
    deadline = time.time() + 60
    while len(seen) < len(bodies) and time.time() < deadline:
        method, _properties, body = channel.basic_get(queue=results, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        document = json.loads(body)
        seen[document["task"]] = document
    connection.close()
    print(json.dumps(seen, ensure_ascii=False), flush=True)


def consume(url, queue, count):
    connection = connect(url)
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    got = 0
    deadline = time.time() + 60
    while got < count and time.time() < deadline:
        method, properties, body = channel.basic_get(queue=queue, auto_ack=False)
        if method is None:
            time.sleep(0.05)
            continue
        print(json.dumps({
            "body": body.decode("utf-8"),
            "content_type": properties.content_type,
            "delivery_mode": properties.delivery_mode,
            "message_id": properties.message_id,
        }, ensure_ascii=False), flush=True)
        channel.basic_ack(method.delivery_tag)
        got += 1
    connection.close()


if __name__ == "__main__":
    mode, url, queue = sys.argv[1:4]
    if mode == "produce":
        produce(url, queue, sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "classic")
    else:
        consume(url, queue, int(sys.argv[4]))
