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
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from edgefleet.errors import ServiceError
from edgefleet.fleet.broker_auth import identities, one_writer
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Device
from edgefleet.fleet.devices import Right, broker_rights, device_rights

if TYPE_CHECKING:
    from edgefleet.fleet.bridge import Bridge  # it imports the ingest, which imports the fleet core

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
ROLE_PREFIX = "edgefleet-"
# A message of 100 creations took up to ~3.4 s at 4,000 devices (mosquitto rewrites its JSON
# after each change, docs/fleet.md "Broker authorization"); ~8.5 s expected at 10,000.
TIMEOUT_S = 30.0
CHUNK = 100  # commands per message: a createRole with a device's ACLs is ~700 bytes
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
    def __init__(self, fleet: Fleet, bridge: Bridge, identity: str) -> None:
        """`identity`: the certificate CN the bridge connects with (the replica id)."""
        self.fleet, self.client, self.identity = fleet, bridge.client, identity
        self._answered = threading.Condition()
        self._responses: dict[str, dict[str, Any]] = {}  # by correlationData, until collected
        self.client.message_callback_add(RESPONSE_TOPIC, self._on_response)
        # On every reconnect too: measured, after a clean-start takeover of the replica's client id
        # (`mosquitto_ctrl` run with the replica's certificate) no answer ever came again.
        result = bridge.keep_subscribed(RESPONSE_TOPIC)
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

    def run_all(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`run` in messages of CHUNK commands: one round trip per chunk, each under the broker's
        packet limit (fleet/local_broker.py MAX_PACKET_BYTES)."""
        return [r for i in range(0, len(commands), CHUNK) for r in self.run(commands[i : i + CHUNK])]

    def grant(self, rights: dict[str, list[Right]]) -> None:
        """Bring each user to exactly its rights: role created or its ACLs diffed, client given the role."""
        wanted = {user: dynsec_acls(r) for user, r in rights.items()}
        self.run_all(
            [
                c
                for user, acls in wanted.items()
                for c in (
                    {"command": "createRole", "rolename": role_name(user), "acls": acls},
                    {"command": "createClient", "username": user, "roles": [{"rolename": role_name(user)}]},
                )
            ]
        )
        got = self.run_all(
            [
                c
                for user in wanted
                for c in (
                    {"command": "getRole", "rolename": role_name(user)},
                    {"command": "getClient", "username": user},
                )
            ]
        )
        key = lambda a: (a["acltype"], a["topic"], a["allow"])  # noqa: E731
        changes, own_role_missing = [], False
        for (user, acls), role_got, client_got in zip(wanted.items(), got[::2], got[1::2], strict=True):
            role = role_name(user)
            have = {key(a) for a in role_got["data"]["role"].get("acls", [])}
            want = {key(a) for a in acls}
            changes += [
                {"command": "removeRoleACL", "rolename": role, "acltype": t, "topic": topic}
                for t, topic, _ in have - want
            ]
            changes += [{"command": "addRoleACL", "rolename": role, **a} for a in acls if key(a) not in have]
            # An existing client (a replica the operator made dynsec admin) may lack the role.
            if role not in {r["rolename"] for r in client_got["data"]["client"].get("roles", [])}:
                if user == self.identity:
                    own_role_missing = True
                else:
                    changes.append({"command": "addClientRole", "username": user, "rolename": role})
        self.run_all(changes)
        if own_role_missing:
            # dynsec disconnects a client whose roles change, so the answer never comes on this
            # connection: paho reconnects and the role is checked then.
            add = {"command": "addClientRole", "username": self.identity, "rolename": role_name(self.identity)}
            self.client.publish(CONTROL_TOPIC, json.dumps({"commands": [add]}), qos=1)
            self._wait_own_role(role_name(self.identity))

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
        with one_writer(self.fleet):  # what other replicas enroll or revoke meanwhile waits for it
            devices, replicas = identities(self.fleet)
            rights = broker_rights(devices, replicas, self.fleet.config.homeassistant)
            self.grant(rights)
            listed = self.run([{"command": "listClients", "verbose": True, "count": -1}])[0]["data"]["clients"]
            gone = [
                c["username"]
                for c in listed
                if c["username"] not in rights
                and role_name(c["username"]) in {r["rolename"] for r in c.get("roles", [])}
            ]
            self.run_all([c for user in gone for c in self._removal(user)])

    def add_device(self, device_id: str) -> None:
        with one_writer(self.fleet):
            with self.fleet.session() as s:
                device = s.get(Device, device_id)
            if device is not None and device.revoked_at is None:  # not revoked since its enrollment committed
                self.grant({device_id: device_rights(device_id)})

    def remove_device(self, device_id: str) -> None:
        with one_writer(self.fleet):
            self.run(self._removal(device_id))

    def _removal(self, user: str) -> list[dict[str, Any]]:
        """deleteClient also disconnects a connected client of that name (mosquitto kicks it)."""
        return [{"command": "deleteClient", "username": user}, {"command": "deleteRole", "rolename": role_name(user)}]
