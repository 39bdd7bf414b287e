"""``python -m kubetune.trainer.rendezvous TORCHRUN-ARGS``: torchrun, once its ``--master-addr`` resolves.

A pod of a group that trains together reaches pod 0 by its stable DNS name (``JOB-0.SERVICE``, from the Indexed
Job's hostname and the headless Service), which exists only once pod 0 does and its endpoint is published. torchrun
would fail at once on a name that does not resolve yet; this waits for it (up to 600 s), then hands the same
arguments to torchrun's own entry point, unchanged.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Sequence

TIMEOUT_SECONDS = 600.0


def wait_for_host(host: str, timeout: float = TIMEOUT_SECONDS, log: Callable[[str], None] | None = None) -> None:
    """Return once ``host`` resolves; raise TimeoutError naming it after ``timeout`` seconds."""
    deadline, said = time.monotonic() + timeout, False
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except socket.gaierror:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the rendezvous host {host} did not resolve in {timeout:.0f} s: is pod 0 of the group running, "
                    "and its headless Service there?"
                ) from None
            if not said:
                (log or _say)(f"waiting for the rendezvous host {host} to resolve")
                said = True
            time.sleep(1.0)


def _say(message: str) -> None:
    print(message, flush=True)


def main(argv: Sequence[str]) -> None:
    args = list(argv)
    if "--master-addr" in args:
        wait_for_host(args[args.index("--master-addr") + 1])
    from torch.distributed.run import main as torchrun

    torchrun(args)


if __name__ == "__main__":
    main(sys.argv[1:])
