"""The latency proxy of the S3 phases, in a process of its own, with a request counter.

``python s3_proxy_child.py TESTS_DIR UPSTREAM LATENCY_S SERVED_DIR`` starts the
``FaultProxy`` of ``tests/s3_proxy.py`` in front of the S3 server at ``UPSTREAM``, adding
``LATENCY_S`` to every request, and a small control server; it prints the proxy's endpoint
and the control endpoint, one per line, and runs until its standard input closes.

``GET <control>/counts`` answers, as JSON, the requests the proxy received since the
previous such call: whole-object GETs, ranged GETs, other requests, how many objects the
GETs touched, and the bytes they asked for (a ranged GET's range, clipped to the object;
a whole GET's object size, read from ``SERVED_DIR``, the folder the server serves).
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def summarize(requests: list[Any], served: Path) -> dict[str, int]:
    counts = {"get_whole": 0, "get_ranged": 0, "other": 0, "bytes": 0, "objects": 0}
    objects = set()
    for request in requests:
        path = served / unquote(request.path.lstrip("/"))
        if request.method != "GET" or not path.is_file():  # HEAD, listings, bucket queries
            counts["other"] += 1
            continue
        size = path.stat().st_size
        objects.add(path)
        found = RANGE.fullmatch(request.headers.get("range", "").strip())
        if found:
            first = int(found[1])
            last = min(int(found[2]) if found[2] else size - 1, size - 1)
            counts["get_ranged"] += 1
            counts["bytes"] += max(0, last - first + 1)
        else:
            counts["get_whole"] += 1
            counts["bytes"] += size
    counts["objects"] = len(objects)
    return counts


def main(argv: list[str]) -> int:
    tests, upstream, latency, served = argv[1], argv[2], float(argv[3]), Path(argv[4])
    sys.path.insert(0, tests)
    from s3_proxy import FaultProxy  # noqa: PLC0415 - the tests folder is on the path now

    proxy = FaultProxy.for_endpoint(upstream, latency=latency)
    endpoint = proxy.start()
    lock = threading.Lock()

    class Control(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                requests = proxy.requests
                proxy.reset_counts()
            body = json.dumps(summarize(requests, served)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    print(endpoint, flush=True)
    print(f"http://127.0.0.1:{control.server_address[1]}", flush=True)
    sys.stdin.read()
    control.shutdown()
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
