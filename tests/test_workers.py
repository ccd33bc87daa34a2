"""Several workers on one schema: jobs claimed under leases, per chain, each stage once; a
killed worker's stage taken over after its lease expires; errors stored, shown by
`--status` and queued again by `--retry-errors`."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bias_transfer_rs
from conftest import RECIPES, make_tiny_dataset, run_main
from test_servers import MYSQL, POSTGRES, SERVERS, drop, server_sql, table

MANY = "_2026_01_02_many"


def write_chains(recipes: Path, data: Path, chains: int, epochs: int = 1,
                 stages: int = 3) -> None:
    """A recipe of `chains` chains (seeds 0, 1, ...) of `stages` stages each."""
    folder = recipes / MANY
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__commits.json").write_text('{"default": {"bias_transfer_rs": "abc"}}')
    (folder / "__init__.py").write_text("")
    (folder / "many.py").write_text(textwrap.dedent(f"""
        from bias_transfer.configs import dataset, model, trainer
        from bias_transfer.configs.base import Description
        from bias_transfer.configs.experiment import Experiment
        from bias_transfer.configs.transfer_experiment import TransferExperiment

        data = dataset.DatasetConfig(dataset_cls="FashionMNIST", data_dir="{data}",
                                     input_size=28, batch_size=64, apply_data_augmentation=False,
                                     apply_data_normalization=False)
        net = model.ModelConfig(dataset_cls="FashionMNIST", cnn_builder="cnn")

        def stage(i, seed):
            return Experiment(data, net, trainer.TrainerConfig(
                comment=f"s{{i}}", num_epochs={epochs}, lr=1e-3,
                noise_test={{"noise_std": [{{0.0: 1.0}}]}}), seed=seed)

        experiments = {{}}
        transfer_experiments = {{
            Description("chain", seed): TransferExperiment(
                [stage(i, seed) for i in range({stages})])
            for seed in range({chains})
        }}
        """))


def start_worker(recipes: Path, work: Path, url: str, *extra: str,
                 **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RECIPES / "main.py"), "--recipes-dir", str(recipes), "--quiet",
         "--dev-mode", "--recipe", MANY, "--experiment", "many", "--schema", SCHEMA, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "BT_WORK_DIR": str(work), "BT_LOG": "info",
             "BT_CACHE_DIR": str(work.parent / "cache"), "DATABASE_URL": url, **env})


SCHEMA = f"bt_workers_{os.getpid()}"


def jobs(backend: str) -> list[dict]:
    """Every job row, as the server's own client reads it."""
    columns = ["key", "parent_key", "state", "attempts", "started_at", "finished_at"]
    quoted = ['"key"' if backend == "postgres" else "`key`", *columns[1:]]
    rows = server_sql(backend, f"SELECT {', '.join(quoted)} FROM {table(backend, SCHEMA, 'job')}")
    return [dict(zip(columns, r, strict=True)) for r in rows]


@pytest.mark.parametrize("backend", list(SERVERS))
def test_eight_workers_share_two_hundred_jobs(backend, tmp_path):
    recipes = tmp_path / "recipes"
    write_chains(recipes, make_tiny_dataset(tmp_path / "data", n_train=150, n_test=50),
                 chains=67)  # 201 stages
    drop(backend, SCHEMA)
    work = tmp_path / "work"
    workers = [start_worker(recipes, work, SERVERS[backend]) for _ in range(8)]
    outputs = [w.communicate(timeout=1800) for w in workers]
    try:
        for worker, (out, err) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, out + err
        # Every stage trained exactly once, by one worker or another.
        trainings = sum(err.count("training `chain` stage") for _, err in outputs)
        assert trainings == 201
        assert sum(1 for _, err in outputs if "training `chain` stage" in err) >= 2
        rows = jobs(backend)
        assert len(rows) == 201
        assert {r["state"] for r in rows} == {"done"} and {r["attempts"] for r in rows} == {"1"}
        by_key = {r["key"]: r for r in rows}
        for r in rows:
            parent = by_key.get(r["parent_key"])
            if parent is not None:
                assert float(r["started_at"]) >= float(parent["finished_at"]), r
        trained = server_sql(backend, f"SELECT COUNT(*) FROM "
                             f"{table(backend, SCHEMA, 'trained_model')}")
        assert trained == [["201"]]
        # No artifact is left without its row.
        files = sorted(p.name for p in (work / "artifacts" / SCHEMA).iterdir())
        assert len(files) == 201
    finally:
        drop(backend, SCHEMA)


def test_a_killed_worker_is_taken_over_after_its_lease(tmp_path):
    recipes = tmp_path / "recipes"
    write_chains(recipes, make_tiny_dataset(tmp_path / "data", n_train=1000, n_test=50),
                 chains=1, epochs=40, stages=1)
    drop("postgres", SCHEMA)
    work = tmp_path / "work"
    lease = {"BT_LEASE_SECONDS": "2"}
    try:
        first = start_worker(recipes, work, POSTGRES, **lease)
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            states = [r["state"] for r in jobs("postgres")] if _has_jobs() else []
            if states == ["running"]:
                break
        assert states == ["running"], "the first worker never started training"
        time.sleep(1)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL

        # The lease is still held for up to two seconds: a worker without --wait leaves.
        status = run_main(["--recipe", MANY, "--schema", SCHEMA, "--status"], work, recipes,
                          DATABASE_URL=POSTGRES)
        assert status.returncode == 0, status.stderr
        assert "jobs: 0 pending, 1 running, 0 done, 0 error" in status.stdout
        assert " on " in status.stdout and " pid " in status.stdout

        second = start_worker(recipes, work, POSTGRES, "--wait", **lease)
        out, err = second.communicate(timeout=600)
        assert second.returncode == 0, out + err
        (row,) = jobs("postgres")
        assert (row["state"], row["attempts"]) == ("done", "2")
        trained = server_sql("postgres", "SELECT COUNT(*) FROM "
                             + table("postgres", SCHEMA, "trained_model"))
        assert trained == [["1"]]
        assert len(list((work / "artifacts" / SCHEMA).iterdir())) == 1
    finally:
        drop("postgres", SCHEMA)


def _has_jobs() -> bool:
    found = server_sql("postgres", "SELECT COUNT(*) FROM information_schema.tables "
                       f"WHERE table_schema = '{SCHEMA}' AND table_name = 'job'")
    return found == [["1"]]


def test_errors_are_stored_shown_and_retried(tmp_path, monkeypatch):
    recipes, data = tmp_path / "recipes", make_tiny_dataset(tmp_path / "data")
    write_chains(recipes, data, chains=1, stages=1)
    drop("mysql", SCHEMA)
    work = tmp_path / "work"
    try:
        args = ["--recipe", MANY, "--experiment", "many", "--schema", SCHEMA]
        first = run_main(args, work, recipes, DATABASE_URL=MYSQL)
        assert first.returncode == 0, first.stderr
        # A second stage is added to the chain, and the first stage's weights are
        # corrupted: the second stage cannot start from them.
        write_chains(recipes, data, chains=1, stages=2)
        (weights,) = (work / "artifacts" / SCHEMA).iterdir()
        good = weights.read_bytes()
        weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        failed = run_main(args, work, recipes, DATABASE_URL=MYSQL)
        assert failed.returncode != 0
        assert "sha256 mismatch" in failed.stderr
        monkeypatch.setenv("DATABASE_URL", MYSQL)
        results = bias_transfer_rs.connect(SCHEMA, work)
        status = results.status()
        assert status["counts"] == {"pending": 0, "running": 0, "done": 1, "error": 1}
        (error,) = status["errors"]
        assert error["stage"] == 1 and "sha256 mismatch" in error["error"]
        (job,) = [j for j in results.jobs() if j["state"] == "error"]
        assert "Checksum" in job["error_traceback"]
        shown = run_main(["--recipe", MANY, "--schema", SCHEMA, "--status"], work, recipes,
                         DATABASE_URL=MYSQL)
        assert "jobs: 0 pending, 0 running, 1 done, 1 error" in shown.stdout
        missing = run_main(["--recipe", MANY, "--schema", "bt_no_such_schema", "--status"],
                           work, recipes, DATABASE_URL=MYSQL)
        assert missing.returncode == 2
        assert "bt_no_such_schema" in missing.stderr
        assert "  error    chain stage 1 (" in shown.stdout

        # Without --retry-errors the failed stage stays failed; with it, it trains.
        again = run_main(args, work, recipes, DATABASE_URL=MYSQL)
        assert again.returncode == 0, again.stderr
        assert "1 stages failed (`--status` shows why); `--retry-errors` runs them again" \
            in again.stdout
        assert "nothing to train" not in again.stdout
        weights.write_bytes(good)
        retried = run_main([*args, "--retry-errors"], work, recipes, DATABASE_URL=MYSQL)
        assert retried.returncode == 0, retried.stderr
        assert "1 failed stages are queued again" in retried.stderr
        assert results.status()["counts"] == {"pending": 0, "running": 0, "done": 2, "error": 0}
    finally:
        drop("mysql", SCHEMA)


def test_a_taken_over_stage_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    """A worker killed after some epochs: the next one continues from the last epoch's
    checkpoint (model, optimiser, schedule, curve) and ends with the very weights of a run
    that never stopped."""
    recipes = tmp_path / "recipes"
    write_chains(recipes, make_tiny_dataset(tmp_path / "data", n_train=3000, n_test=50),
                 chains=1, epochs=8, stages=1)
    args = ["--recipe", MANY, "--experiment", "many", "--schema", SCHEMA]
    reference = run_main(args, tmp_path / "reference", recipes)
    assert reference.returncode == 0, reference.stderr
    db = tmp_path / "reference" / "db" / f"{SCHEMA}.sqlite"
    with sqlite3.connect(db) as con:
        ((expected_sha, expected_output),) = con.execute(
            "SELECT weights_sha256, output FROM trained_model").fetchall()
    drop("postgres", SCHEMA)
    work = tmp_path / "work"
    checkpoint = f"SELECT checkpoint_epoch FROM {table('postgres', SCHEMA, 'job')}"
    try:
        first = start_worker(recipes, work, POSTGRES, BT_LEASE_SECONDS="2")
        deadline, epoch = time.time() + 300, None
        while time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
            rows = server_sql("postgres", checkpoint) if _has_jobs() else []
            if rows and rows[0][0] not in ("", "1"):
                epoch = int(rows[0][0])
                break
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert epoch is not None and epoch < 8, "the first worker never checkpointed"
        # Only the last checkpoint is kept.
        (kept,) = (work / "artifacts" / SCHEMA).iterdir()
        assert "-checkpoint-" in kept.name

        second = start_worker(recipes, work, POSTGRES, "--wait", BT_LEASE_SECONDS="2")
        out, err = second.communicate(timeout=600)
        assert second.returncode == 0, out + err
        resumed = re.search(r"resuming after epoch (\d+)/8 from its checkpoint", err)
        assert resumed is not None and int(resumed.group(1)) >= epoch, err
        ((sha, output, attempts, left),) = server_sql(
            "postgres", "SELECT t.weights_sha256, t.output, j.attempts, "
            f"COALESCE(j.checkpoint_uri, '') FROM {table('postgres', SCHEMA, 'trained_model')} "
            f"t JOIN {table('postgres', SCHEMA, 'job')} j ON j.\"key\" = t.\"key\"")
        assert (attempts, left) == ("2", "")
        assert sha == expected_sha
        curve = [e["dev_loss"] for e in json.loads(output)[0]]
        assert curve == [e["dev_loss"] for e in json.loads(expected_output)[0]]
        assert len(curve) == 8
        # The checkpoint went with the job: only the weights are left.
        (weights,) = (work / "artifacts" / SCHEMA).iterdir()
        assert f"-{sha[:16]}." in weights.name
    finally:
        drop("postgres", SCHEMA)


def test_a_corrupt_checkpoint_fails_the_stage_and_a_retry_starts_over(tmp_path):
    recipes = tmp_path / "recipes"
    write_chains(recipes, make_tiny_dataset(tmp_path / "data", n_train=3000, n_test=50),
                 chains=1, epochs=6, stages=1)
    work = tmp_path / "work"
    db = work / "db" / f"{SCHEMA}.sqlite"
    env = {"BT_LEASE_SECONDS": "1", "DATABASE_URL": ""}
    first = start_worker(recipes, work, "", **env)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
        try:
            with sqlite3.connect(db) as con:
                rows = con.execute("SELECT checkpoint_epoch FROM job").fetchall()
        except sqlite3.OperationalError:
            continue
        if rows and rows[0][0] is not None:
            break
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    (kept,) = (work / "artifacts" / SCHEMA).iterdir()
    assert "-checkpoint-" in kept.name
    kept.write_bytes(kept.read_bytes()[:-8])
    time.sleep(1.5)  # the lease runs out

    failed = run_main(["--recipe", MANY, "--experiment", "many", "--schema", SCHEMA], work,
                      recipes, **env)
    assert failed.returncode == 2
    assert "the checkpoint of an earlier attempt cannot be used" in failed.stderr
    assert kept.name in failed.stderr and "sha256 mismatch" in failed.stderr
    assert "`--retry-errors` trains the stage again from its first epoch" in failed.stderr
    retried = run_main(["--recipe", MANY, "--experiment", "many", "--schema", SCHEMA,
                        "--retry-errors"], work, recipes, **env)
    assert retried.returncode == 0, retried.stderr
    assert "resuming" not in retried.stderr
    assert not kept.exists()  # the unusable checkpoint was removed with the failure
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT state, attempts FROM job").fetchall() == [("done", 3)]
        assert len(json.loads(con.execute("SELECT output FROM trained_model").fetchone()[0])[0]) \
            == 6
