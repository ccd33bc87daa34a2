"""Weights in S3-compatible storage: a real S3 server on loopback (moto's), configured by
the original `MINIO_*` variables; uploads, verified downloads, bad settings, orphans."""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import boto3
import pytest

import bias_transfer_rs
from conftest import TINY, make_tiny_dataset, run_main, write_recipe

SCHEMA = "s3_tiny"
ACCESS, SECRET = "bt-access-key", "bt-very-secret-key"
ARGS = ["--recipe", TINY, "--experiment", "tiny", "--schema", SCHEMA]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, stopped after the module."""
    port = free_port()
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "moto_server did not start"
                assert server.poll() is None, "moto_server exited"
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def client(endpoint: str):  # noqa: ANN201 (boto3 clients have no static type)
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS,
                        aws_secret_access_key=SECRET, region_name="us-east-1")


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    return {"MINIO_ENDPOINT": endpoint, "MINIO_ACCESS_KEY": ACCESS, "MINIO_SECRET_KEY": SECRET,
            "BT_S3_BUCKET": bucket, "BT_S3_PREFIX": "lab/runs"}


@pytest.fixture(scope="module")
def trained(endpoint, tmp_path_factory):
    """The tiny recipe trained once with its weights in a fresh bucket."""
    tmp = tmp_path_factory.mktemp("s3")
    recipes, work = tmp / "recipes", tmp / "work"
    write_recipe(recipes, make_tiny_dataset(tmp / "data"))
    client(endpoint).create_bucket(Bucket="weights")
    env = s3_env(endpoint, "weights")
    proc = run_main(ARGS, work, recipes, **env)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(work / "db" / f"{SCHEMA}.sqlite") as con:
        rows = con.execute("SELECT key, parent_key, weights_uri, weights_sha256, weights_size "
                           "FROM trained_model ORDER BY parent_key IS NOT NULL").fetchall()
    return recipes, work, env, proc, rows


def test_weights_are_uploaded_with_their_checksum(endpoint, trained):
    _, work, _, proc, rows = trained
    assert len(rows) == 2
    s3 = client(endpoint)
    listed = s3.list_objects_v2(Bucket="weights", Prefix=f"lab/runs/{SCHEMA}/")["Contents"]
    assert len(listed) == 2
    for key, _, uri, sha256, size in rows:
        object_key = uri.removeprefix("s3://weights/")
        assert object_key.startswith(f"lab/runs/{SCHEMA}/{key}-{sha256[:16]}.")
        body = s3.get_object(Bucket="weights", Key=object_key)
        data = body["Body"].read()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (sha256, size)
        assert body["Metadata"] == {"sha256": sha256}
    # Nothing is kept under the schema's local artifact folder.
    assert not (work / "artifacts" / SCHEMA).exists()
    assert SECRET not in proc.stdout + proc.stderr


def test_models_load_from_s3_and_corruption_is_caught(endpoint, trained, monkeypatch):
    _, work, env, _, rows = trained
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cache = work / "artifacts" / ".s3"
    if cache.exists():
        for path in sorted(cache.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    results = bias_transfer_rs.connect(SCHEMA, work)
    key, _, uri, _, _ = rows[0]
    model = results.load_model(key)
    assert sorted(model.state_dict())[0] == "core.conv1.bias"
    # The object changes behind the database's back: loading it again is refused.
    cached = next(p for p in cache.rglob("*") if p.is_file() and p.name.startswith(key))
    cached.unlink()
    object_key = uri.removeprefix("s3://weights/")
    s3 = client(endpoint)
    good = s3.get_object(Bucket="weights", Key=object_key)["Body"].read()
    s3.put_object(Bucket="weights", Key=object_key, Body=good[:-1] + b"!")
    try:
        with pytest.raises(bias_transfer_rs.BiasTransferError, match="sha256 mismatch"):
            results.load_model(key)
    finally:
        s3.put_object(Bucket="weights", Key=object_key, Body=good)
    assert results.load_model(key).key == key


def test_orphans_are_listed_and_removed(endpoint, trained):
    recipes, work, env, _, rows = trained
    s3 = client(endpoint)
    stray = f"lab/runs/{SCHEMA}/left-by-a-crashed-worker.safetensors"
    s3.put_object(Bucket="weights", Key=stray, Body=b"1234")
    args = ["--recipe", TINY, "--schema", SCHEMA, "--orphans", "--min-age", "0"]
    listed = run_main(args, work, recipes, **env)
    assert listed.returncode == 0, listed.stderr
    assert "1 orphaned artifacts found (4 bytes)" in listed.stdout
    assert f"s3://weights/{stray}" in listed.stdout
    young = run_main(args[:-2], work, recipes, **env)
    assert "0 orphaned artifacts found" in young.stdout
    removed = run_main([*args[:4], "--orphans", "remove", "--min-age", "0"], work, recipes,
                       **env)
    assert "1 orphaned artifacts removed (4 bytes)" in removed.stdout
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="weights")["Contents"])
    assert keys == sorted(uri.removeprefix("s3://weights/") for _, _, uri, _, _ in rows)


def test_a_missing_bucket_stops_the_run_before_anything_is_written(endpoint, tmp_path):
    recipes, work = tmp_path / "recipes", tmp_path / "work"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    proc = run_main(ARGS, work, recipes, **s3_env(endpoint, "no-such-bucket"))
    assert proc.returncode == 2
    assert "bucket `no-such-bucket` does not exist" in proc.stderr
    assert "BT_S3_BUCKET" in proc.stderr
    assert not (work / "db").exists()
    assert SECRET not in proc.stdout + proc.stderr


def test_an_unreachable_endpoint_is_named_without_the_secret(tmp_path):
    recipes, work = tmp_path / "recipes", tmp_path / "work"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_main(ARGS, work, recipes, BT_DB_TIMEOUT="2", **s3_env(url, "weights"))
    assert proc.returncode == 2
    assert f"cannot reach `{url}` (from `MINIO_ENDPOINT`)" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert not (work / "db").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"MINIO_SECRET_KEY": ""}, "but `MINIO_SECRET_KEY` is not"),
    ({"MINIO_ENDPOINT": "ftp://127.0.0.1"}, "`MINIO_ENDPOINT=ftp://127.0.0.1` is not a host"),
    ({"BT_S3_PREFIX": "lab/../x"}, "`BT_S3_PREFIX=lab/../x` has a `.` or `..` segment"),
])
def test_incomplete_settings_are_named(tmp_path, change, message):
    recipes, work = tmp_path / "recipes", tmp_path / "work"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    proc = run_main(ARGS, work, recipes, **{**s3_env("http://127.0.0.1:9", "weights"), **change})
    assert proc.returncode == 2
    assert message in proc.stderr


def test_local_orphans_are_listed_and_removed(tmp_path):
    recipes, work = tmp_path / "recipes", tmp_path / "work"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    assert run_main(ARGS, work, recipes).returncode == 0
    folder = work / "artifacts" / SCHEMA
    kept = sorted(p.name for p in folder.iterdir())
    (folder / "stray.safetensors").write_bytes(b"12345678")
    (folder / ".half-written.safetensors.123.tmp").write_bytes(b"12")
    results = bias_transfer_rs.connect(SCHEMA, work)
    found = results.orphans(min_age=0)
    assert sorted(o["uri"] for o in found) == [
        "local:.half-written.safetensors.123.tmp", "local:stray.safetensors"]
    assert results.orphans() == []  # both are younger than 10 minutes
    results.orphans(min_age=0, remove=True)
    assert sorted(p.name for p in folder.iterdir()) == kept
