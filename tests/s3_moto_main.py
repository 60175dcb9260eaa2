"""moto's S3 server with conditional writes made atomic, as they are on AWS S3.

moto checks ``If-Match`` / ``If-None-Match`` and then stores the object in two steps on a
threaded server, so two conditional PUTs arriving together could in principle both pass
the check. AWS S3 guarantees that exactly one wins; the tests of concurrent writers rely
on that, so this entry point serialises the handlers that check a precondition before
writing, then runs moto's own server with the arguments given.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

from moto.s3.responses import S3Response
from moto.server import main

#: S3Response handlers that check a precondition, then write (PUT object, DELETE object,
#: POST on a key: complete multipart upload).
CONDITIONAL_WRITES = ("put_object", "delete_object", "_key_response_post")

_write_lock = threading.Lock()


def _serialised(handler: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _write_lock:
            return handler(*args, **kwargs)

    return run


for _name in CONDITIONAL_WRITES:
    setattr(S3Response, _name, _serialised(getattr(S3Response, _name)))

if __name__ == "__main__":
    main(sys.argv[1:])
