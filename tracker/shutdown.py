"""A stop that ends in time: once a process begins to stop (SIGTERM, Ctrl-C), it exits within
``TRACKER_SHUTDOWN_GRACE_SECONDS`` even if Kafka or ClickHouse never answer its last flush.

Nothing acknowledged is lost by ending early: a collector answers 2xx only after Kafka's
acknowledgement, and a worker commits offsets only after ClickHouse holds the batch, so whatever
was cut short is read again on the next start.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["ShutdownDeadline"]

log = logging.getLogger(__name__)


class ShutdownDeadline:
    """Armed when a stop begins; if the process is still running ``grace`` seconds later, it
    ends with ``exit_code``, the code an orderly stop returns too."""

    def __init__(self, grace: float, exit_code: int = 0) -> None:
        self._grace = grace
        self._exit_code = exit_code
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(self._grace, self._expire)
            self._timer.daemon = True  # an orderly exit before the deadline does not wait for it
            self._timer.start()
        log.info("stopping", extra={"grace_seconds": self._grace})

    def _expire(self) -> None:
        log.warning(
            "shutdown grace period ran out; exiting now, uncommitted work is replayed on the "
            "next start",
            extra={"grace_seconds": self._grace},
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(self._exit_code)
