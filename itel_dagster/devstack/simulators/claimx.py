"""The ClaimX simulator: GET /api/v1/tasks/{assignment_id} answers the task document of the dev
stack's fake world (claimx_world) to a bearer token. It only reads that world, never changes it.
"""

from __future__ import annotations

from functools import partial

from itel_dagster.devstack.claimx_world import claimx_task, is_known_assignment
from itel_dagster.devstack.simulators.http_server import (
    Request,
    Response,
    SimulatorServer,
    error_response,
    same_secret,
    unauthorized,
)

TASK_ROUTE = "/api/v1/tasks/{assignment_id}"


class ClaimxSimulator(SimulatorServer):
    name = "claimx"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str = "claimx-dev-token",
                 seed: int = 0) -> None:
        super().__init__(host, port, seed)
        self.token = token
        self.add_route("GET", TASK_ROUTE, self._get_task)

    def _get_task(self, request: Request) -> Response:
        if not self.accepted_bearer_token(request, partial(same_secret, expected=self.token)):
            return unauthorized("missing or wrong bearer token")
        raw_id = request.params["assignment_id"]
        # isdecimal, not int(): " 12", "+12" and "1_000" are not ids ClaimX would know.
        if not (raw_id.isascii() and raw_id.isdecimal()) or not is_known_assignment(int(raw_id)):
            return error_response(404, "not_found", f"no task for assignment_id {raw_id!r}")
        return Response(200, claimx_task(int(raw_id)))
