"""Loopback HTTP simulators of ClaimX and the iTel Cabinet API, with run-time fault injection.

Dev stack and tests only: the product code talks to them through its usual HTTP settings and
never imports this package.
"""

from itel_dagster.devstack.simulators.claimx import ClaimxSimulator
from itel_dagster.devstack.simulators.faults import FaultPlan, FaultPlanError
from itel_dagster.devstack.simulators.http_server import SimulatorServer
from itel_dagster.devstack.simulators.itel import ItelSimulator, token_sha256

__all__ = [
    "ClaimxSimulator",
    "FaultPlan",
    "FaultPlanError",
    "ItelSimulator",
    "SimulatorServer",
    "token_sha256",
]
