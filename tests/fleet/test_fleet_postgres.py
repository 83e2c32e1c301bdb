"""The same fleet flows on a real PostgreSQL (started here: initdb into a temp dir, free port).

EDGEFLEET_TEST_POSTGRES_URL (postgresql://user@host:port) uses an existing server instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import test_alert_events_library as alert_flows
import test_fleet_library as flows
from tests_fleet_util import Clock

from edgefleet.net import free_port

pytestmark = pytest.mark.postgres
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _bin(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed (apt-get install postgresql)")
    return found


@pytest.fixture(scope="session")
def postgres_server():
    if os.environ.get("EDGEFLEET_TEST_POSTGRES_URL"):
        yield os.environ["EDGEFLEET_TEST_POSTGRES_URL"].rstrip("/")
        return
    # Outside pytest's temp tree: pytest keeps that tree private to root (0700), which the
    # `postgres` account could not enter.
    root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        pw = pwd.getpwnam("postgres")
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        as_user + [_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    subprocess.run(
        as_user + [_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_user + [_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_fleet(postgres_server, tmp_path, edgefleet_home, tiny_packages):
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet
    from sqlalchemy import create_engine, text

    name = f"fleet_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        postgres_server.replace("postgresql://", "postgresql+psycopg://") + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    sent: list = []
    f = open_fleet(
        FleetConfig(
            data_dir=tmp_path / "fleet", database_url=f"{postgres_server}/{name}", signing_key=tiny_packages["key"]
        ),
        notify=lambda d, p: sent.append((d, p)),
    )
    f.clock = Clock()
    f.sent = sent
    yield f
    f.readers.kw["bind"].dispose()
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE {name}"))
    admin.dispose()


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
