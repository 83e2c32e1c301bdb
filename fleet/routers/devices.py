"""Devices, enrollment tokens and enrollment (which carries its one-time token instead of an API token)."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.contracts.rest import (
    DeviceOut,
    DevicePage,
    DevicePatch,
    EnrollBody,
    Enrollment,
    EnrollmentTokenBody,
    EnrollmentTokenOut,
)
from edgefleet.fleet import devices
from edgefleet.fleet.routers.deps import ADMIN, DEFAULT_PAGE, OPERATOR, READ, FleetDep, Limit

router = APIRouter(prefix="/api/v1")


@router.get("/devices", dependencies=[READ], response_model=DevicePage)
def list_devices(
    fleet: FleetDep,
    group: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: str | None = None,
) -> DevicePage:
    return devices.list_devices(fleet, group, tag, status, limit, cursor)


@router.get("/devices/{device_id}", dependencies=[READ], response_model=DeviceOut)
def get_device(fleet: FleetDep, device_id: str) -> DeviceOut:
    return devices.get_device(fleet, device_id)


@router.patch("/devices/{device_id}", dependencies=[OPERATOR], response_model=DeviceOut)
def patch_device(fleet: FleetDep, device_id: str, body: DevicePatch) -> DeviceOut:
    return devices.update_device(fleet, device_id, body.group, body.add_tags, body.remove_tags)


@router.post("/devices/{device_id}/revoke", dependencies=[ADMIN], response_model=DeviceOut)
def revoke_device(fleet: FleetDep, device_id: str) -> DeviceOut:
    """Take the device's broker rights for good; its history stays and its id cannot enroll again."""
    return devices.revoke_device(fleet, device_id)


@router.post("/enrollment-tokens", dependencies=[ADMIN], status_code=201, response_model=EnrollmentTokenOut)
def enrollment_token(fleet: FleetDep, body: EnrollmentTokenBody) -> EnrollmentTokenOut:
    token = devices.create_enrollment_token(fleet, body.device_id, body.target, body.group, body.tags)
    return EnrollmentTokenOut(device_id=body.device_id, token=token)


@router.post("/enroll", response_model=Enrollment)
def enroll(fleet: FleetDep, body: EnrollBody) -> Enrollment:
    return devices.enroll(fleet, body.token, body.device_id, body.csr)
