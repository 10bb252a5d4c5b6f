#!/usr/bin/env python3
"""Parses a Prometheus text exposition (stdin) with the reference Python parser,
prometheus_client.parser.text_string_to_metric_families, and prints it as JSON:
{"families": {NAME: TYPE}, "samples": [{"name", "labels", "value"}]}.

A body the parser refuses makes it exit 1 with the parser's error, so a test fails on
any exposition a real Prometheus client library would not read.
Needs: pip install prometheus-client
Exit status: 0 parsed, 1 the text does not parse, 2 missing package.
"""

import json
import math
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as error:
    print(f"parse_metrics: {error}; install it: pip install prometheus-client", file=sys.stderr)
    sys.exit(2)


def main():
    text = sys.stdin.read()
    families = {}
    samples = []
    try:
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                value = sample.value
                if math.isinf(value):
                    value = "+Inf" if value > 0 else "-Inf"
                elif math.isnan(value):
                    value = "NaN"
                samples.append({"name": sample.name, "labels": sample.labels, "value": value})
    except Exception as error:  # the parser raises ValueError and others
        print(f"parse_metrics: the exposition does not parse: {error!r}", file=sys.stderr)
        sys.exit(1)
    json.dump({"families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main()
