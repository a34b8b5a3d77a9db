"""The one deterministic fake world behind the dev stack: what ClaimX knows of an assignment.

The ClaimX simulator serves it and the publisher writes events consistent with it, so a test can
predict an enrichment result from an assignment_id alone. Ids at or above UNKNOWN_ASSIGNMENT_FLOOR
do not exist in ClaimX (the simulator answers 404).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

ITEL_TASK_ID = 32513
ITEL_TASK_NAME = "iTel Cabinet Repair Form"
FIRST_ASSIGNMENT_ID = 1_000_000
UNKNOWN_ASSIGNMENT_FLOOR = 9_000_000
_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)

_DAMAGE_TYPES = ["water", "impact", "fire", "wear", "vandalism"]
_LOCATIONS = ["kitchen", "bathroom", "laundry", "garage", "office"]
_MATERIALS = ["oak", "maple", "mdf", "laminate", "cherry"]
_NOTES = [
    "Door hinge replaced, alignment checked.",
    "Water damage on base panel; photos attached.",
    "Customer reports drawer slide failure.",
    "Countertop seam lifted; cabinet box intact.",
    "Full face frame replacement recommended.",
]


def _digest(assignment_id: int, salt: str) -> int:
    raw = hashlib.blake2b(f"{salt}:{assignment_id}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big")


def is_known_assignment(assignment_id: int) -> bool:
    return FIRST_ASSIGNMENT_ID <= assignment_id < UNKNOWN_ASSIGNMENT_FLOOR


def project_id_for(assignment_id: int) -> str:
    return str(100_000 + _digest(assignment_id, "project") % 900_000)


def cabinet_id_for(assignment_id: int) -> str:
    return f"CAB-{_digest(assignment_id, 'cabinet') % 1_000_000:06d}"


def technician_notes_for(assignment_id: int) -> str:
    return _NOTES[_digest(assignment_id, "notes") % len(_NOTES)]


def technician_user_id_for(assignment_id: int) -> int:
    return 20_000 + _digest(assignment_id, "technician") % 5_000


def claimx_task(assignment_id: int) -> dict:
    """The full task document ClaimX returns for GET /api/v1/tasks/{assignment_id}."""
    d = _digest(assignment_id, "task")
    created = _EPOCH + timedelta(minutes=d % (60 * 24 * 300))
    photos = 1 + d % 4
    return {
        "assignment_id": assignment_id,
        "task_id": ITEL_TASK_ID,
        "task_name": ITEL_TASK_NAME,
        "project_id": project_id_for(assignment_id),
        "status": "completed" if d % 3 == 0 else "in_progress",
        "assigned_to_user_id": technician_user_id_for(assignment_id),
        "assigned_by_user_id": 10_000 + d % 500,
        "custom_fields": {
            "cabinet_id": cabinet_id_for(assignment_id),
            "damage_type": _DAMAGE_TYPES[d % len(_DAMAGE_TYPES)],
            "cabinet_location": _LOCATIONS[(d >> 8) % len(_LOCATIONS)],
            "cabinet_material": _MATERIALS[(d >> 16) % len(_MATERIALS)],
            "linear_feet_affected": round(1 + (d >> 24) % 200 / 10, 1),
            "replacement_required": bool((d >> 32) % 2),
            "photos_taken": photos,
        },
        "attachments": [
            {
                "attachment_id": f"ATT-{assignment_id}-{i}",
                "file_name": f"cabinet_{i}.jpg",
                "content_type": "image/jpeg",
                "url": f"https://files.claimx.example/{assignment_id}/cabinet_{i}.jpg",
            }
            for i in range(1, photos + 1)
        ],
        "notes": technician_notes_for(assignment_id),
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "updated_at": (created + timedelta(hours=1 + d % 72)).isoformat().replace("+00:00", "Z"),
    }
