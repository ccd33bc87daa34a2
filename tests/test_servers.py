"""The same recipe on SQLite, PostgreSQL and MariaDB (the servers of this machine, or those
named by `BT_TEST_POSTGRES_URL` and `BT_TEST_MYSQL_URL`): identical keys, hashes, configs
and scores, rows read back with the servers' own clients, and clear errors for bad
settings."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import bias_transfer_rs
from conftest import TINY, make_tiny_dataset, run_main, write_recipe

POSTGRES = os.environ.get("BT_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("BT_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
SERVERS = {"postgres": POSTGRES, "mysql": MYSQL}
SCHEMA = f"bt_pytest_{os.getpid()}"


def server_sql(backend: str, sql: str) -> list[list[str]]:
    """Rows of `sql` as the server's own command-line client prints them."""
    url = urlsplit(SERVERS[backend])
    if backend == "postgres":
        command = ["psql", "-h", url.hostname or "", "-p", str(url.port or 5432), "-U",
                   url.username or "postgres", "-d", url.path.lstrip("/") or "postgres",
                   "-tA", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql]
    else:
        command = ["mariadb", "-h", url.hostname or "", "-P", str(url.port or 3306), "-u",
                   url.username or "root", "-N", "-B", "-e", sql]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGPASSWORD": url.password or "",
                               "MYSQL_PWD": url.password or ""})
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def drop(backend: str, schema: str) -> None:
    if backend == "postgres":
        server_sql(backend, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        server_sql(backend, f"DROP DATABASE IF EXISTS `{schema}`")


def table(backend: str, schema: str, name: str) -> str:
    return f'"{schema}".{name}' if backend == "postgres" else f"`{schema}`.{name}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The tiny recipe trained once on each backend: the work directory of each."""
    root = tmp_path_factory.mktemp("servers")
    recipes = root / "recipes"
    write_recipe(recipes, make_tiny_dataset(root / "data"))
    works = {}
    for backend in ("sqlite", *SERVERS):
        if backend in SERVERS:
            drop(backend, SCHEMA)
        work = root / f"work-{backend}"
        proc = run_main(["--recipe", TINY, "--experiment", "tiny", "--schema", SCHEMA], work,
                        recipes, DATABASE_URL=SERVERS.get(backend, ""))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        works[backend] = work
    yield works
    for backend in SERVERS:
        drop(backend, SCHEMA)


def rows_of(backend: str, work: Path, monkeypatch) -> list[dict]:
    monkeypatch.setenv("DATABASE_URL", SERVERS.get(backend, ""))
    return bias_transfer_rs.connect(SCHEMA, work).rows()


def without_speed(output: list) -> list:
    return [[{k: v for k, v in epoch.items() if k != "images_per_s"} for epoch in output[0]],
            output[1]]


def test_every_backend_stores_the_same_keys_configs_and_scores(runs, monkeypatch):
    by_backend = {b: rows_of(b, work, monkeypatch) for b, work in runs.items()}
    reference = by_backend["sqlite"]
    assert len(reference) == 3
    for backend, rows in by_backend.items():
        assert len(rows) == len(reference), backend
        for mine, theirs in zip(rows, reference, strict=True):
            for field in ("chain", "stage", "key", "parent_key", "seed", "comment",
                          "dataset", "model", "trainer", "weights_sha256", "weights_size"):
                assert mine[field] == theirs[field], (backend, field)
            # CPU training with one seed is bit-identical: so are the scores and the curves
            # (all but the measured speed).
            assert mine["score"] == theirs["score"]
            assert without_speed(mine["output"]) == without_speed(theirs["output"])
            assert len(mine["created_at"]) == 19, mine["created_at"]
    noisy = next(r for r in reference if r["comment"] == "Noisy")
    assert noisy["trainer"][2]["noise_std"] == {0.2: 0.5, -1: 0.5}


def test_the_servers_own_clients_read_the_rows(runs, monkeypatch):
    reference = {r["key"]: r for r in rows_of("sqlite", runs["sqlite"], monkeypatch)}
    for backend in SERVERS:
        trained = server_sql(backend, "SELECT " + ('"key"' if backend == "postgres"
                                                   else "`key`")
                             + ", score, parent_key FROM " + table(backend, SCHEMA,
                                                                   "trained_model"))
        assert {k for k, _, _ in trained} == set(reference), backend
        for key, score, parent in trained:
            assert float(score) == pytest.approx(reference[key]["score"], rel=1e-12)
            assert (parent if parent not in ("", "NULL") else None) == reference[key][
                "parent_key"]
        configs = server_sql(backend, "SELECT hash, config, legacy_hash FROM "
                             + table(backend, SCHEMA, "trainer"))
        stored = {r["trainer"][1]: r for r in reference.values()}
        assert {h for h, _, _ in configs} == set(stored)
        for hash_, config, legacy in configs:
            assert bias_transfer_rs.decode(config) == stored[hash_]["trainer"][2]
            assert legacy == bias_transfer_rs.make_hash(stored[hash_]["trainer"][2])
        versions = server_sql(backend, "SELECT version FROM "
                              + table(backend, SCHEMA, "bt_migrations"))
        assert [v for (v,) in versions] == ["1", "2", "3"]


def test_a_second_run_on_a_server_trains_nothing(runs, tmp_path):
    recipes = runs["postgres"].parent / "recipes"
    proc = run_main(["--recipe", TINY, "--experiment", "tiny", "--schema", SCHEMA],
                    runs["postgres"], recipes, DATABASE_URL=POSTGRES)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to train: all 3 stages were trained before" in proc.stdout
    host = urlsplit(POSTGRES)
    assert f"database postgres://{host.username}@{host.hostname}:" in proc.stdout


def test_the_original_dj_settings_reach_mysql_and_database_url_wins(runs):
    recipes = runs["mysql"].parent / "recipes"
    args = ["--recipe", TINY, "--experiment", "tiny", "--schema", SCHEMA]
    url = urlsplit(MYSQL)
    dj = {"DATABASE_URL": "", "DJ_HOST": f"{url.hostname}:{url.port or 3306}",
          "DJ_USER": url.username or "root", "DJ_PASS": url.password or ""}
    proc = run_main(args, runs["mysql"], recipes, **dj)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to train: all 3 stages were trained before" in proc.stdout
    assert f"database mysql://{dj['DJ_USER']}@{url.hostname}:" in proc.stdout
    # With both set, DATABASE_URL decides: the PostgreSQL schema, also trained.
    proc = run_main(args, runs["postgres"], recipes,
                    **{**dj, "DATABASE_URL": POSTGRES, "DJ_HOST": "192.0.2.1"})
    assert proc.returncode == 0, proc.stderr
    assert "nothing to train: all 3 stages were trained before" in proc.stdout
    assert "database postgres://" in proc.stdout


def test_notebook_api_and_models_on_a_server(runs, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", MYSQL)
    frame = bias_transfer_rs.trained_models(SCHEMA, runs["mysql"])
    assert sorted(frame.comment) == ["Noisy", "Noisy", "Transfer"]
    key = frame[frame.comment == "Transfer"].key.iloc[0]
    model = bias_transfer_rs.load_model(key[:10], SCHEMA, runs["mysql"])
    assert model.key == key
    with pytest.raises(bias_transfer_rs.StoreError,
                       match=r"schema `bt_pytest_absent` does not exist on `mysql://root@"):
        bias_transfer_rs.load_model(key, "bt_pytest_absent", runs["mysql"])


def test_a_dry_run_creates_no_schema(tmp_path):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    schema = f"{SCHEMA}_dry"
    for backend, url in SERVERS.items():
        proc = run_main(["--recipe", TINY, "--experiment", "tiny", "--schema", schema,
                         "--dry-run"], tmp_path / "work", recipes, DATABASE_URL=url)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("  new\n") == 3, proc.stdout
        found = server_sql(backend, "SELECT COUNT(*) FROM information_schema.schemata "
                           f"WHERE schema_name = '{schema}'")
        assert found == [["0"]], backend


@pytest.mark.parametrize(("env", "message"), [
    ({"DATABASE_URL": MYSQL.replace("://root@", "://root:n0t-the-pass@", 1)},
     r"cannot connect to the database `mysql://root@[^`]*, database bt_pytest_bad` "
     r"\(from `DATABASE_URL`\): .*Access denied"),
    ({"DATABASE_URL": "postgres://postgres:pw@127.0.0.1:1/test"},
     r"cannot connect to the database `postgres://postgres@127.0.0.1:1/test, schema "
     r"bt_pytest_bad` \(from `DATABASE_URL`\): cannot reach the server"),
    ({"DATABASE_URL": "", "DJ_HOST": "127.0.0.1:1", "DJ_USER": "ada", "DJ_PASS": "n0t-the-pass"},
     r"cannot connect to the database `mysql://ada@127.0.0.1:1, database bt_pytest_bad` "
     r"\(from `DJ_HOST`\): cannot reach the server"),
    ({"DATABASE_URL": "redis://127.0.0.1"},
     r"`DATABASE_URL`: scheme `redis` is not supported: use `postgres://` or `mysql://`"),
], ids=["wrong-password", "unreachable", "dj-unreachable", "bad-scheme"])
def test_bad_database_settings_fail_clearly_without_secrets(tmp_path, env, message):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    proc = run_main(["--recipe", TINY, "--experiment", "tiny", "--schema", "bt_pytest_bad"],
                    tmp_path / "work", recipes, **env)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), proc.stderr
    assert "n0t-the-pass" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "work" / "db").exists()


def test_database_names_the_target(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://ada:s3cret@db.lab:5433/results?sslmode=off")
    with pytest.raises(bias_transfer_rs.StoreError,
                       match=r"^`DATABASE_URL`: .*unknown value \"off\" for `ssl_mode`") as bad:
        bias_transfer_rs._core.database(tmp_path, "s")
    assert "s3cret" not in str(bad.value)
    monkeypatch.setenv("DATABASE_URL",
                       "postgres://ada:s3cret@db.lab:5433/results?sslmode=disable")
    where = bias_transfer_rs._core.database(tmp_path, "s")
    assert where == "postgres://ada@db.lab:5433/results, schema s"
    monkeypatch.setenv("DATABASE_URL", "")
    assert bias_transfer_rs._core.database(tmp_path, "s") == str(tmp_path / "db" / "s.sqlite")
