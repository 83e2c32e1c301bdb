"""Broker authorisation by mosquitto's dynamic security plugin, managed over MQTT.

Each identity (a certificate CN) gets a dynsec client of that username, without a password
(the broker authenticates it by its certificate, `use_identity_as_username`), and one role
`edgefleet-<username>` holding exactly its rights. Commands go to `$CONTROL/dynamic-security/v1`
on the fleet's own connection; the answers come back on `.../response`. Every step is
idempotent: an identity that exists already is brought to the rights it should have.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import select

from edgefleet.errors import ServiceError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Device, Replica
from edgefleet.fleet.devices import Right, broker_rights, device_rights

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
ROLE_PREFIX = "edgefleet-"
TIMEOUT_S = 10.0
# Errors meaning "already as wanted" (created: exists; deleted: gone); any other is raised.
SETTLED = ("already exists", "not found")


def role_name(user: str) -> str:
    return ROLE_PREFIX + user


def dynsec_acls(rights: list[Right]) -> list[dict[str, Any]]:
    """An ACL-file right as dynsec ACLs. A shared subscription is checked with its
    `$share/<group>/` prefix by dynsec (measured on 2.0.11), so a readwrite right (the
    replicas') also grants `$share/+/<topic>`."""
    acls: list[dict[str, Any]] = []
    for access, topic in rights:
        if access in ("read", "readwrite"):
            acls.append({"acltype": "subscribePattern", "topic": topic, "allow": True})
            acls.append({"acltype": "publishClientReceive", "topic": topic, "allow": True})
            if access == "readwrite":
                acls.append({"acltype": "subscribePattern", "topic": f"$share/+/{topic}", "allow": True})
        if access in ("write", "readwrite"):
            acls.append({"acltype": "publishClientSend", "topic": topic, "allow": True})
    return acls


class Dynsec:
    def __init__(self, fleet: Fleet, client: mqtt.Client, identity: str) -> None:
        """`identity`: the certificate CN `client` connects with (the replica id)."""
        self.fleet, self.client, self.identity = fleet, client, identity
        self._answered = threading.Condition()
        self._responses: dict[str, dict[str, Any]] = {}  # by correlationData, until collected
        client.message_callback_add(RESPONSE_TOPIC, self._on_response)
        result, _ = client.subscribe(RESPONSE_TOPIC, qos=0)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ServiceError(
                f"cannot subscribe to {RESPONSE_TOPIC}: {mqtt.error_string(result)}",
                "is the fleet connected to its broker?",
            )

    def _on_response(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._answered:
            for response in json.loads(msg.payload).get("responses", []):
                self._responses[response.get("correlationData", "")] = response
            self._answered.notify_all()

    def run(self, commands: list[dict[str, Any]], timeout: float = TIMEOUT_S) -> list[dict[str, Any]]:
        """Send commands as one message; return their responses in order, raising on a real error."""
        tags = [f"{uuid.uuid4().hex}" for _ in commands]
        tagged = [{**c, "correlationData": t} for c, t in zip(commands, tags, strict=True)]
        self.client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
        with self._answered:
            answered = self._answered.wait_for(lambda: all(t in self._responses for t in tags), timeout)
            responses = [self._responses.pop(t) for t in tags if t in self._responses]
        if not answered:
            raise ServiceError(
                f"the broker answered {len(responses)} of {len(commands)} dynamic-security commands in {timeout:.0f} s",
                "is mosquitto's dynamic security plugin loaded, and does the fleet's identity hold its"
                " admin role? (docs/security.md)",
            )
        for r in responses:
            error = r.get("error")
            if error and not any(a in error.lower() for a in SETTLED):
                raise ServiceError(f"dynamic security refused {r.get('command')}: {error}", "see the broker's log")
        return responses

    def grant(self, user: str, rights: list[Right]) -> None:
        """Bring `user` to exactly `rights`: role created or its ACLs diffed, client given the role."""
        role, wanted = role_name(user), dynsec_acls(rights)
        got = self.run(
            [
                {"command": "createRole", "rolename": role, "acls": wanted},
                {"command": "createClient", "username": user, "roles": [{"rolename": role}]},
                {"command": "getRole", "rolename": role},
            ]
        )
        have = [{k: a[k] for k in ("acltype", "topic", "allow")} for a in got[2]["data"]["role"].get("acls", [])]
        key = lambda a: (a["acltype"], a["topic"], a["allow"])  # noqa: E731
        changes = [
            {"command": "removeRoleACL", "rolename": role, "acltype": a["acltype"], "topic": a["topic"]}
            for a in have
            if key(a) not in {key(w) for w in wanted}
        ] + [{"command": "addRoleACL", "rolename": role, **a} for a in wanted if key(a) not in {key(h) for h in have}]
        if changes:
            self.run(changes)
        # An existing client (a replica the operator made dynsec admin) may lack the role. dynsec
        # disconnects a client whose roles change, so for the fleet's own identity the answer
        # never comes on this connection: paho reconnects and the role is checked then.
        if role not in self._roles(user):
            add = {"command": "addClientRole", "username": user, "rolename": role}
            if user != self.identity:
                self.run([add])
            else:
                self.client.publish(CONTROL_TOPIC, json.dumps({"commands": [add]}), qos=1)
                self._wait_own_role(role)

    def _roles(self, user: str, timeout: float = TIMEOUT_S) -> set[str]:
        client = self.run([{"command": "getClient", "username": user}], timeout)[0]["data"]["client"]
        return {r["rolename"] for r in client.get("roles", [])}

    def _wait_own_role(self, role: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if role in self._roles(self.identity, timeout=1.0):
                    return
            except ServiceError:  # not reconnected yet
                pass
        raise ServiceError(
            f"the broker did not give {self.identity!r} its role {role!r} within {TIMEOUT_S:.0f} s",
            "see the broker's log",
        )

    def sync(self) -> None:
        with self.fleet.session() as s:
            devices = list(s.scalars(select(Device.id)))
            replicas = list(s.scalars(select(Replica.id)))
        rights = broker_rights(devices, replicas, self.fleet.config.homeassistant)
        for user, user_rights in rights.items():
            self.grant(user, user_rights)
        listed = self.run([{"command": "listClients", "verbose": True, "count": -1}])[0]["data"]["clients"]
        for client in listed:
            ours = any(r["rolename"] == role_name(client["username"]) for r in client.get("roles", []))
            if ours and client["username"] not in rights:
                self.remove_device(client["username"])

    def add_device(self, device_id: str) -> None:
        self.grant(device_id, device_rights(device_id))

    def remove_device(self, device_id: str) -> None:
        """deleteClient also disconnects a connected client of that name (mosquitto kicks it)."""
        self.run(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": role_name(device_id)},
            ]
        )
