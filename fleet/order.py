"""A device's state comes from its latest message, whatever order messages arrive in.

At-least-once ingest delivers a message again after a replica dies before acknowledging it, and
replicas sharing a subscription store one device's messages in parallel: without an order, a
late `online` status with the old model would overwrite the model a committed job recorded, or
a late telemetry message would bring back online a device whose last will said offline. Each
agent numbers its messages (run, seq) (edgefleet/contracts/mqtt.py DeviceMessage.order); the
fleet keeps, per device, the place of the message its status came from and of the one its model
came from, and applies a message to either only when it stands later. Messages of agents that do
not number them are applied in arrival order, as before.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, or_
from sqlalchemy.sql.elements import ColumnElement

NEWEST = 2**63 - 1  # stands after every numbered message: what an unnumbered one counts as


def later(stored: int | None, order: int | None) -> bool:
    """Whether a message at `order` is to be applied over state from a message at `stored`."""
    return order is None or stored is None or order > stored


def advanced(stored: int | None, order: int | None) -> int | None:
    """What is stored after applying a message at `order` (an unnumbered one leaves it)."""
    return stored if order is None else max(order, stored or 0)


def later_sql(column: Any, order: Any) -> ColumnElement[bool]:
    """`later` in SQL, for bulk updates where `order` is a bound parameter (NULL: unnumbered)."""
    return or_(column.is_(None), column < func.coalesce(order, NEWEST))


def advanced_sql(column: Any, order: Any) -> ColumnElement[Any]:
    """`advanced` in SQL."""
    return case((or_(column.is_(None), column < func.coalesce(order, -1)), order), else_=column)
