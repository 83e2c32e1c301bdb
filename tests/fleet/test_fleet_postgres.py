"""The same fleet flows on a real PostgreSQL (started here: initdb into a temp dir, free port).

EDGEFLEET_TEST_POSTGRES_URL (postgresql://user@host:port) uses an existing server instead.
"""

from __future__ import annotations

import pytest
import test_alert_events_library as alert_flows
import test_fleet_library as flows
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
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_flows_on_postgresql(flow, pg_fleet, tiny_packages, tmp_path):
    args = {"fleet": pg_fleet, "tiny_packages": tiny_packages, "tmp_path": tmp_path}
    flow(**{k: v for k, v in args.items() if k in flow.__code__.co_varnames[: flow.__code__.co_argcount]})


def test_migrations_are_at_head_on_postgresql(pg_fleet):
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from edgefleet.fleet.db import MIGRATIONS
    from sqlalchemy import text

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
