"""A loopback webhook that records every alert POSTed to /alerts, for tests and for trying the
alerts by hand: `python -m itel_dagster.devstack.simulators.alert_receiver --port 8083`, then
ALERT_WEBHOOK_URL=http://127.0.0.1:8083/alerts. GET /_admin/alerts lists what arrived.

Faults (status codes, timeouts, refusals) come from the shared simulator server.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from itel_dagster.devstack.simulators.http_server import (
    Request,
    Response,
    SimulatorServer,
    error_response,
)

ALERTS_ROUTE = "/alerts"


class AlertReceiver(SimulatorServer):
    name = "alert-receiver"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, echo: bool = False) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._received: list[Any] = []
        self._echo = echo
        self.add_route("POST", ALERTS_ROUTE, self._receive)
        self.add_route("GET", "/_admin/alerts", lambda _: Response(200, self.received()),
                       admin=True)

    @property
    def webhook_url(self) -> str:
        return f"{self.url}{ALERTS_ROUTE}"

    def _receive(self, request: Request) -> Response:
        try:
            alert = request.json()
        except ValueError:
            return error_response(400, "invalid_json", "the body must be JSON")
        with self._lock:
            self._received.append(alert)
        if self._echo:
            print(json.dumps(alert, indent=2), flush=True)
        return Response(200, {"ok": True})

    def received(self) -> list[Any]:
        with self._lock:
            return list(self._received)

    def reset_state(self) -> None:
        super().reset_state()
        with self._lock:
            self._received.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8083)
    args = parser.parse_args()
    with AlertReceiver(args.host, args.port, echo=True) as receiver:
        print(f"ALERT_WEBHOOK_URL={receiver.webhook_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
