"""Free loopback ports that no other pytest-xdist worker of this run can be handed.

The kernel's port 0 gives a port that is free now, but it hands ports of one parity only, and a server started a
moment later may still lose it to another worker's server. Each worker instead walks its own residue class
(port modulo the worker count equals its index) below the kernel's ephemeral range, so two workers never pick
the same port, client sockets never take it, and a port a test expects to be unused stays unused by its peers.
"""
from __future__ import annotations

import itertools
import os
import random
import socket

LOW, HIGH = 20_000, 32_000
_step = itertools.count(random.randrange(HIGH - LOW))


def free_port(host: str = "127.0.0.1") -> int:
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    ports = range(LOW + index, HIGH, count)
    for _ in range(len(ports)):
        port = ports[next(_step) % len(ports)]
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {LOW}-{HIGH} for xdist worker {index} of {count}")
