"""Runs execbox's Lambda handler as the Lambda runtime would, for tests/cloud/handler_env.py: one JSON line
in per invocation ({"event": ..., "remaining_ms": ...}), the handler's answer out as one line. The context
object is the runtime's interface (get_remaining_time_in_millis), here with a fixed deadline."""

from __future__ import annotations

import json
import sys
import time

from execbox.providers.cloud.handler.aws_lambda import lambda_handler


class Context:
    def __init__(self, remaining_ms: int) -> None:
        self.deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


for line in sys.stdin:
    ask = json.loads(line)
    answer = lambda_handler(ask["event"], Context(ask.get("remaining_ms", 60_000)))
    print(json.dumps(answer), flush=True)
