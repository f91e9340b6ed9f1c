"""moto in server mode, held to SQS's documented batch limit where moto is lenient.

SQS takes at most 10 entries in a `DeleteMessageBatch` and answers more with
`AWS.SimpleQueueService.TooManyEntriesInBatchRequest`
(https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_DeleteMessageBatch.html);
moto checks this for `SendMessageBatch` but deletes any number. `strict()` adds the check.
Visibility timeouts, receipt handles and `MaxNumberOfMessages` (1–10) moto already handles as
SQS does. `strict()` also makes moto's retention check of each received message read the one
attribute it needs instead of computing every queue attribute (three walks over all the queue's
messages per message received): same answer, without making a receive cost grow with the
square of the queue's length, which SQS's does not.

`MotoProcess` runs the strict server in a process of its own, as a real SQS is: its work does
not share the caller's interpreter lock (benchmarks). `python strict_moto.py` is that process:
it prints its port and serves until its stdin closes.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

_LIMIT = 10


def strict() -> None:
    """Patch moto's SQS backend (in this process) to refuse batches of more than 10 deletes."""
    from moto.core.utils import unix_time
    from moto.sqs.exceptions import TooManyEntriesInBatchRequest
    from moto.sqs.models import Message, SQSBackend

    # The ignores below: moto's models are typed loosely (a queue's attributes are set
    # dynamically) and patching its class, marked as patched, is what this function does.
    if getattr(SQSBackend.delete_message_batch, "_strict", False):
        return
    lenient = SQSBackend.delete_message_batch

    def is_message_valid_based_on_retention_period(
        self: SQSBackend, queue_name: str, message: Message
    ) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
        return retention + message.sent_timestamp / 1000 > unix_time()  # type: ignore[operator]

    def delete_message_batch(
        self: SQSBackend, queue_name: str, receipts: list[dict[str, Any]]
    ) -> tuple[list[str], list[dict[str, str]]]:
        if len(receipts) > _LIMIT:
            raise TooManyEntriesInBatchRequest(len(receipts))
        return lenient(self, queue_name, receipts)

    delete_message_batch._strict = True  # type: ignore[attr-defined]
    SQSBackend.delete_message_batch = delete_message_batch  # type: ignore[method-assign]
    SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        is_message_valid_based_on_retention_period
    )


class MotoProcess:
    """The strict moto server in a child process on 127.0.0.1 (an ephemeral port)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> str:
        self._process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._process.stdout is not None
        port = self._process.stdout.readline().strip()
        if not port.isdigit():
            self.stop()
            raise RuntimeError("the moto server did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        if self._process is not None:
            process, self._process = self._process, None
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _serve() -> None:
    from moto.server import ThreadedMotoServer

    strict()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()  # until the parent closes it
    server.stop()


if __name__ == "__main__":
    _serve()
