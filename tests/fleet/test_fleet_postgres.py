"""The same fleet flows on a real PostgreSQL (started here: initdb into a temp dir, free port).

EDGEFLEET_TEST_POSTGRES_URL (postgresql://user@host:port) uses an existing server instead.
"""

from __future__ import annotations

import threading
import uuid

import pytest
import test_alert_events_library as alert_flows
import test_fleet_library as flows
import test_shadow_library as shadow_flows
from tests_fleet_util import Clock

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_fleet(postgres_database, tmp_path, edgefleet_home, tiny_packages):
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet

    sent: list = []
    f = open_fleet(
        FleetConfig(data_dir=tmp_path / "fleet", database_url=postgres_database, signing_key=tiny_packages["key"]),
        notify=lambda d, p: sent.append((d, p)),
    )
    f.clock = Clock()
    f.sent = sent
    yield f
    f.readers.kw["bind"].dispose()


@pytest.mark.parametrize(
    "flow",
    [
        flows.test_registry_versions_builds_approval_and_lineage,
        flows.test_rollout_succeeds_across_waves,
        flows.test_failing_canary_aborts_and_rolls_back_every_touched_device,
        flows.test_health_gate_stops_a_model_that_installs_fine_but_behaves_badly,
        flows.test_pause_resume_abort_and_wave_timeout,
        flows.test_ingest_drops_and_counts_unknown_devices_and_malformed_messages,
        alert_flows.test_an_alert_is_one_event_however_often_it_arrives_and_old_agents_alerts_are_kept,
        alert_flows.test_filters_and_pages,
        alert_flows.test_retention_deletes_old_and_surplus_events_and_the_snapshots_no_event_names,
        shadow_flows.test_aggregation_equals_hand_sums_and_promotion_starts_a_staged_rollout,
        shadow_flows.test_forged_unknown_and_malformed_reports_are_refused_and_counted,
        shadow_flows.test_stop_and_abort_send_shadow_remove,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_flows_on_postgresql(flow, pg_fleet, tiny_packages, tmp_path):
    args = {"fleet": pg_fleet, "tiny_packages": tiny_packages, "tmp_path": tmp_path}
    flow(**{k: v for k, v in args.items() if k in flow.__code__.co_varnames[: flow.__code__.co_argcount]})


def test_migrations_are_at_head_on_postgresql(pg_fleet):
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from edgefleet.fleet.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with pg_fleet.session() as s:
        assert (
            s.execute(text("SELECT version_num FROM alembic_version")).scalar()
            == ScriptDirectory.from_config(cfg).get_current_head()
        )
        assert (
            s.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_name = 'rollout_events'")
            ).scalar()
            == 1
        )


# ---- replicas: the scheduler lease (fleet/leader.py) and job states under concurrent writers ----
def test_one_scheduler_holds_the_lease_and_another_takes_it_when_the_holder_dies(pg_fleet):
    from sqlalchemy import text

    from edgefleet.fleet.leader import SchedulerLease

    engine = pg_fleet.sessions.kw["bind"]
    first, second = SchedulerLease(engine), SchedulerLease(engine)
    assert first.held() and not second.held()
    assert first.held() and not second.held()  # kept, and still refused
    with engine.connect() as c:  # the holder's session ends as it would when its process is SIGKILLed
        pid = first._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    assert second.held()
    assert not first.held()  # it notices, and does not take it back
    second.release()
    assert first.held()
    first.release()


def test_two_writers_of_one_job_apply_each_transition_once(pg_fleet, tiny_packages):
    """Replica A stores `committed` while replica B's `probation` for the same job waits on the row:
    B's compare-and-set finds the row moved on and changes nothing."""
    from edgefleet.contracts.mqtt import JobUpdate
    from edgefleet.fleet import devices, registry, rollouts
    from edgefleet.fleet.db import Deployment, RolloutEvent

    for package in (tiny_packages["v1"], tiny_packages["v2"]):
        v = registry.upload_package(pg_fleet, package)
        registry.set_approval(pg_fleet, v.group, v.version, "Approved")
    devices.register_device(pg_fleet, "cam-1", "x86_64", group="g")
    rollout = rollouts.create_rollout(pg_fleet, "tiny", "2", {"group": "g"}, {"bake_time_s": 0})
    rollouts.tick(pg_fleet)
    job = pg_fleet.sent[0][1]["job"]

    def update(state: str) -> JobUpdate:
        return JobUpdate(id=uuid.uuid4().hex, job=job, state=state, detail="")

    with pg_fleet.writer() as a, a.begin():
        rollouts.apply_job_update(pg_fleet, a, "cam-1", job, update("switching"))
    waiting = threading.Event()

    def replica_b() -> None:
        with pg_fleet.writer() as b, b.begin():
            waiting.set()
            rollouts.apply_job_update(pg_fleet, b, "cam-1", job, update("probation"))

    with pg_fleet.writer() as a, a.begin():
        rollouts.apply_job_update(pg_fleet, a, "cam-1", job, update("committed"))
        other = threading.Thread(target=replica_b)
        other.start()
        waiting.wait(10)
        other.join(0.5)
        assert other.is_alive()  # B waits on the row A changed
    other.join(10)
    with pg_fleet.session() as s:
        assert s.query(Deployment).filter_by(job_id=job).one().state == "committed"
        steps = [
            (e.from_state, e.to_state)
            for e in s.query(RolloutEvent).filter_by(rollout_id=rollout.id, device_id="cam-1").order_by(RolloutEvent.id)
        ]
    assert steps == [("notified", "switching"), ("switching", "committed")]
    assert devices.get_device(pg_fleet, "cam-1").model.version == "2"
