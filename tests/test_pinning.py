"""Commit pinning on real git repositories built in temporary folders: resolution and its
fallbacks, the code imported at run time, the caches and their locks, provenance, and the
errors for bad pins."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import bias_transfer_rs
from bias_transfer_rs import _core
from conftest import TINY, make_tiny_dataset, run_main, write_recipe


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` with a fixed identity; returns its output."""
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
         "-c", "init.defaultBranch=main", "-C", str(repo), *args],
        check=True, capture_output=True, text=True)
    return out.stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    """Write `files` into `repo`, commit them, return the commit id."""
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(textwrap.dedent(text))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


PYPROJECT = """
    [build-system]
    requires = ["setuptools"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "mylib"
    version = "0.1.0"
    """


@pytest.fixture
def repos(tmp_path: Path) -> dict[str, object]:
    """`src/mylib` (installable; `answer()` changes between commits, tag `v1`, branch
    `moving`), `src/plainlib` (no packaging metadata) and `remotelib`, reachable only as a
    `file://` remote."""
    src = tmp_path / "src"
    mylib = src / "mylib"
    mylib.mkdir(parents=True)
    git(mylib, "init", "-q")
    one = commit(mylib, {"pyproject.toml": PYPROJECT,
                         "mylib/__init__.py": "def answer():\n    return 'one'\n"}, "one")
    git(mylib, "tag", "v1")
    two = commit(mylib, {"mylib/__init__.py": "def answer():\n    return 'two'\n"}, "two")
    git(mylib, "branch", "moving")

    plain = src / "plainlib"
    plain.mkdir()
    git(plain, "init", "-q")
    plain_one = commit(plain, {"plainlib.py": "VALUE = 'plain-1'\n"}, "one")

    origin = tmp_path / "remote-work"
    origin.mkdir()
    git(origin, "init", "-q")
    remote_one = commit(origin, {"remotelib.py": "VALUE = 'remote-1'\n"}, "one")
    bare = tmp_path / "remotelib.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(origin), str(bare)], check=True)
    return {"src": src, "mylib": mylib, "one": one, "two": two, "plain_one": plain_one,
            "remote_url": bare.as_uri(), "remote_one": remote_one}


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    """The tiny recipe, whose first stage's comment shows what the pinned code returns."""
    folder = tmp_path / "recipes"
    data = make_tiny_dataset(tmp_path / "data", n_train=300, n_test=100)
    write_recipe(folder, data, replace={
        "from bias_transfer.configs import": "import mylib\nfrom bias_transfer.configs import",
        'comment="Noisy"': 'comment="Noisy " + mylib.answer()',
    })
    return folder


def set_pins(recipes: Path, pins: dict[str, dict[str, str]],
             mapping: dict[str, object] | None = None) -> None:
    (recipes / TINY / "__commits.json").write_text(json.dumps(pins))
    if mapping is not None:
        (recipes / "__repos.json").write_text(json.dumps(mapping))


def pinned(args: list[str], tmp_path: Path, recipes: Path, src: Path,
           **env: str) -> subprocess.CompletedProcess:
    return run_main(["--recipe", TINY, "--experiment", "tiny", *args], tmp_path / "work",
                    recipes, dev_mode=False, BT_SRC_DIR=str(src),
                    BT_CACHE_DIR=str(tmp_path / "cache"), **env)


def test_runs_the_pinned_commit_and_installs_nothing_into_the_planner(
        repos, recipes: Path, tmp_path: Path):
    for commit_id, answer in ((repos["one"], "one"), (repos["two"][:10], "two")):
        set_pins(recipes, {"default": {"mylib": commit_id}})
        proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"Noisy {answer}" in proc.stdout
        full = repos["one"] if answer == "one" else repos["two"]
        assert f"mylib            {full}" in proc.stdout
        assert f"from `default`, found in `{repos['mylib']}` (src_dir)" in proc.stdout
        assert "running in the pinned environment" in proc.stdout

    # The planning interpreter never saw `mylib`.
    probe = subprocess.run([sys.executable, "-c", "import mylib"], capture_output=True)
    assert probe.returncode != 0
    # The checkouts are the exact trees, one folder per commit.
    checkouts = tmp_path / "cache" / "checkouts" / "mylib"
    assert sorted(p.name for p in checkouts.iterdir() if not p.name.endswith(".lock")) == \
        sorted([repos["one"], repos["two"]])
    assert (checkouts / repos["one"] / "mylib" / "__init__.py").read_text() == \
        "def answer():\n    return 'one'\n"


def test_fallbacks_tags_branches_and_a_remote_only_repo(repos, recipes: Path, tmp_path: Path):
    set_pins(recipes, {
        "default": {"mylib": "v1", "plainlib": "main", "remotelib": repos["remote_one"]},
        "tiny": {"mylib": "", "plainlib": repos["plain_one"][:7]},
    }, mapping={"remotelib": repos["remote_url"]})
    module = recipes / TINY / "tiny.py"
    original = module.read_text()
    module.write_text(original.replace("import mylib", "import mylib, plainlib, remotelib")
                      .replace("mylib.answer()", 'mylib.answer() + " " + plainlib.VALUE + " " '
                               "+ remotelib.VALUE"))
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Noisy one plain-1 remote-1" in out
    assert f"mylib            {repos['one']} (tag `v1`) from `default`" in out
    assert f"plainlib         {repos['plain_one']} (commit `{repos['plain_one'][:7]}`) " \
        "from `tiny`" in out
    assert f"remotelib        {repos['remote_one']} from `default`, found in " \
        f"`{repos['remote_url']}`" in out
    assert "`mylib` is pinned to the tag `v1` (in `default`), which can move" in out

    # A branch pin follows the branch: after it moves, the next run uses the new commit.
    set_pins(recipes, {"default": {"mylib": "moving"}})
    module.write_text(original)
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert "Noisy two" in proc.stdout and "branch `moving`" in proc.stdout, proc.stdout
    three = commit(repos["mylib"], {"mylib/__init__.py": "def answer():\n    return 'three'\n"},
                   "three")
    git(repos["mylib"], "branch", "-f", "moving", three)
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert "Noisy three" in proc.stdout and three in proc.stdout, proc.stdout


def test_cache_hit_is_fast_and_parallel_workers_share_one_checkout(repos, recipes: Path,
                                                                   tmp_path: Path):
    set_pins(recipes, {"default": {"mylib": repos["one"], "plainlib": repos["plain_one"]}})
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from bias_transfer_rs import _core
        from bias_transfer_rs.pinning import base_site_dirs
        recipes = Path({str(recipes)!r})
        pins = _core.resolve_pins(recipes / {TINY!r} / "__commits.json", "default",
                                  recipes / {TINY!r}, recipes)
        env = _core.prepare_environment(pins, sys.executable, base_site_dirs(), recipes,
                                        quiet=True)
        print(env)
        """)
    env = {**os.environ, "BT_CACHE_DIR": str(cache), "BT_SRC_DIR": str(repos["src"])}
    # Both workers start while the checkout's lock is held elsewhere, so they wait on it
    # together and race for it when it is released.
    lock = cache / "checkouts" / "mylib" / f"{repos['one']}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    workers = [subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(2)]
    time.sleep(3)
    assert all(w.poll() is None for w in workers), "the workers did not wait for the lock"
    holder.communicate("")
    results = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), results
    first = [json.loads(out) for out, _ in results]
    assert first[0]["key"] == first[1]["key"]
    assert sorted(e["cached"] for e in first) == [False, True]

    # One intact checkout per commit, no temporary folders left, one environment.
    for repo, commit_id in (("mylib", repos["one"]), ("plainlib", repos["plain_one"])):
        folder = cache / "checkouts" / repo
        assert sorted(p.name for p in folder.iterdir()) == [commit_id, f"{commit_id}.lock"]
    assert (cache / "checkouts" / "plainlib" / repos["plain_one"] / "plainlib.py").read_text() \
        == "VALUE = 'plain-1'\n"
    assert [p.name for p in (cache / "envs").iterdir() if p.is_dir()] == [first[0]["key"]]

    # A second pinning step on the warm cache is a cache hit, well under half a second.
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, check=True)
    again = json.loads(proc.stdout)
    assert again["cached"] is True and again["seconds"] < 0.5, again


def test_provenance_rows_match_the_pins(repos, recipes: Path, tmp_path: Path):
    set_pins(recipes, {"default": {"mylib": "v1", "plainlib": repos["plain_one"]}})
    git(recipes, "init", "-q")
    recipes_head = commit(recipes, {}, "recipes")
    proc = pinned([], tmp_path, recipes, repos["src"])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    rows = bias_transfer_rs.connect("bias_transfer_2026_01_01_tiny", tmp_path / "work").rows()
    assert {(r["chain"], r["stage"]) for r in rows} == {
        ("Noisy", 0), ("Noisy -> Transfer", 0), ("Noisy -> Transfer", 1)}
    for row in rows:
        p = row["provenance"]
        assert p["mode"] == "pinned"
        assert p["commits"] == {"mylib": repos["one"], "plainlib": repos["plain_one"]}
        assert [(x["repo"], x["revision"], x["kind"], x["block"]) for x in p["pins"]] == [
            ("mylib", "v1", "tag", "default"),
            ("plainlib", repos["plain_one"], "commit", "default")]
        assert p["recipes_repository"] == {"path": str(recipes), "head": recipes_head,
                                           "dirty": False}
        assert p["environment"].startswith(_core.commit_set_key(json.dumps(p["pins"])) + "-")
        assert p["bias_transfer_rs"] == bias_transfer_rs.__version__
        assert (p["python"], p["torch"]) == (platform.python_version(), torch.__version__)
    assert rows[0]["comment"].startswith("Noisy one") or rows[-1]["comment"] == "Transfer"


def test_dev_mode_records_heads_and_warns_about_dirty_trees(repos, recipes: Path,
                                                           tmp_path: Path):
    set_pins(recipes, {"default": {"mylib": repos["one"], "plainlib": repos["plain_one"]}})
    (repos["src"] / "plainlib" / "plainlib.py").write_text("VALUE = 'edited'\n")
    (recipes / TINY / "tiny.py").write_text((recipes / TINY / "tiny.py").read_text().replace(
        "import mylib", "import plainlib").replace("mylib.answer()", "plainlib.VALUE"))
    proc = run_main(["--recipe", TINY, "--experiment", "tiny"], tmp_path / "work", recipes,
                    BT_SRC_DIR=str(repos["src"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "`plainlib` has uncommitted changes" in proc.stdout
    rows = bias_transfer_rs.connect("bias_transfer_2026_01_01_tiny", tmp_path / "work").rows()
    p = rows[0]["provenance"]
    assert p["mode"] == "dev"
    assert p["commits"] == {"mylib": repos["two"], "plainlib": repos["plain_one"]}
    assert {x["repo"]: x["dirty"] for x in p["pins"]} == {"mylib": False, "plainlib": True}
    assert any(r["comment"] == "Noisy edited" for r in rows)


def hostile_commit(repo: Path, name: str) -> str:
    """A commit whose tree holds an entry called `name` (git itself would refuse it)."""
    blob = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "--stdin"],
                          input=b"escaped\n", capture_output=True, check=True).stdout.strip()
    entry = b"100644 " + name.encode() + b"\0" + bytes.fromhex(blob.decode())
    tree = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "-t", "tree",
                           "--literally", "--stdin"], input=entry, capture_output=True,
                          check=True).stdout.decode().strip()
    return git(repo, "commit-tree", tree, "-m", "hostile")


@pytest.mark.parametrize("name", ["..", ".git", "/tmp/escaped-by-a-pin"])
def test_a_commit_cannot_write_outside_its_checkout(repos, recipes: Path, tmp_path: Path,
                                                    name: str):
    set_pins(recipes, {"default": {"mylib": hostile_commit(repos["mylib"], name)}})
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert proc.returncode == 2
    assert "which would be written outside its checkout; refusing to export it" in proc.stderr
    assert not Path("/tmp/escaped-by-a-pin").exists()
    checkouts = tmp_path / "cache" / "checkouts" / "mylib"
    assert [p.name for p in checkouts.iterdir() if not p.name.endswith(".lock")] == []
    assert [p.name for p in (tmp_path / "cache" / "checkouts").iterdir()] == ["mylib"]


@pytest.mark.parametrize("pins, mapping, message", [
    ({"default": {"mylib": "no-such-revision"}}, None,
     "`default.mylib`: revision `no-such-revision` names no commit in `{src}/mylib`"),
    ({"default": {"mylib": "0" * 40}}, None,
     "`default.mylib`: revision `0000000000000000000000000000000000000000` names no commit"),
    ({"default": {"nolib": "abc"}}, None,
     "repo `nolib` not found: looked in `{src}/nolib`; put it there, set `BT_SRC_DIR`"),
    ({"default": {"mylib": "v1"}}, {"mylib": 5},
     "__repos.json`: `mylib` must be a path, a URL or"),
    ({"default": {"remotelib": "main"}}, {"remotelib": "file:///nowhere/remotelib.git"},
     "fetching `file:///nowhere/remotelib.git` failed"),
    ({"default": {"mylib": 1}}, None, "__commits.json`: `default.mylib` must be a string"),
    ({"default": {"../escape": "v1"}}, None, "`default.../escape`: a repo name is a folder name"),
    ({"default": {"mylib": "v1"}}, {"mylib": "no-such-folder"},
     "`default.mylib`: revision `v1`: repo `mylib` not found: looked in"),
    ({"default": {"mylib": "HEAD:pyproject.toml"}}, None,
     "`default.mylib`: revision `HEAD:pyproject.toml`: git repository"),
    ({"default": {"mylib": "HEAD^{tree}"}}, None, "names a tree, not a commit"),
])
def test_bad_pins_are_named(repos, recipes: Path, tmp_path: Path, pins, mapping, message):
    set_pins(recipes, pins, mapping)
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert proc.returncode == 2, proc.stdout
    assert message.format(src=repos["src"]) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "work").exists()


def test_a_failing_install_names_the_log_and_leaves_no_environment(repos, recipes: Path,
                                                                  tmp_path: Path):
    broken = commit(repos["mylib"], {"pyproject.toml": "[project]\nname = \n"}, "broken")
    set_pins(recipes, {"default": {"mylib": broken}})
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert proc.returncode == 2
    assert "installing `mylib` " + broken[:12] + " failed" in proc.stderr, proc.stderr
    assert "mylib.log" in proc.stderr
    envs = tmp_path / "cache" / "envs"
    assert not any((p / ".bt-ready").exists() for p in envs.iterdir())


def test_bad_settings_and_stale_variables(repos, recipes: Path, tmp_path: Path):
    set_pins(recipes, {"default": {"mylib": repos["one"]}})
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"], BT_LOCK_TIMEOUT="inf")
    assert proc.returncode == 2
    assert "`BT_LOCK_TIMEOUT`: `inf` is not a number of seconds up to a year" in proc.stderr

    # A variable left over from another run does not pass this process off as pinned.
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"],
                  BT_PINNED_ENV="0123456789abcdef-01234567")
    assert proc.returncode == 0, proc.stderr
    assert "Noisy one" in proc.stdout and " prepared in " in proc.stdout


def test_a_recipe_that_exits_while_imported_is_an_error(recipes: Path, tmp_path: Path):
    module = recipes / TINY / "tiny.py"
    module.write_text("import sys\nsys.exit(3)\n")
    proc = run_main(["--recipe", TINY, "--experiment", "tiny", "--dry-run"], tmp_path / "work",
                    recipes)
    assert proc.returncode == 2
    assert "importing `_2026_01_01_tiny.tiny`" in proc.stderr and "SystemExit: 3" in proc.stderr


def test_a_recipes_own_mapping_wins_over_the_repositorys(repos, recipes: Path, tmp_path: Path):
    set_pins(recipes, {"default": {"mylib": repos["one"]}},
             mapping={"mylib": "no-such-folder"})
    elsewhere = tmp_path / "elsewhere"
    subprocess.run(["git", "clone", "-q", str(repos["mylib"]), str(elsewhere)], check=True)
    (recipes / TINY / "__repos.json").write_text(json.dumps(
        {"mylib": os.path.relpath(elsewhere, recipes / TINY)}))
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Noisy one" in proc.stdout
    assert f"found in `{elsewhere}`" in proc.stdout


def test_a_commit_missing_from_the_local_clone_is_fetched_into_a_mirror(
        repos, recipes: Path, tmp_path: Path):
    # `src/mylib` is a clone that lags behind its origin by one commit.
    origin = repos["mylib"]
    clone = tmp_path / "src-clone" / "mylib"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    newer = commit(origin, {"mylib/__init__.py": "def answer():\n    return 'newer'\n"},
                   "newer")
    assert subprocess.run(["git", "-C", str(clone), "cat-file", "-e", newer],
                          capture_output=True).returncode != 0
    set_pins(recipes, {"default": {"mylib": newer}})
    proc = pinned(["--dry-run"], tmp_path, recipes, clone.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Noisy newer" in proc.stdout
    mirrors = [p for p in (tmp_path / "cache" / "mirrors").iterdir() if p.is_dir()]
    assert len(mirrors) == 1
    assert git(mirrors[0], "cat-file", "-t", newer) == "commit"
    # The clone itself is left as it was.
    assert subprocess.run(["git", "-C", str(clone), "cat-file", "-e", newer],
                          capture_output=True).returncode != 0


def test_a_repo_pinned_nowhere_names_repo_block_and_file(repos, recipes: Path, tmp_path: Path):
    set_pins(recipes, {"default": {"plainlib": repos["plain_one"]}, "tiny": {"mylib": ""}})
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert proc.returncode == 2
    commits = recipes / TINY / "__commits.json"
    assert f"`{commits}`: repo `mylib` is pinned neither in block `tiny` nor in `default`" \
        in proc.stderr, proc.stderr


def test_a_branch_pin_warns_that_it_can_move(repos, recipes: Path, tmp_path: Path):
    set_pins(recipes, {"default": {"mylib": "moving"}})
    proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"])
    assert proc.returncode == 0, proc.stderr
    assert "`mylib` is pinned to the branch `moving` (in `default`), which can move" \
        in proc.stdout


def test_a_held_lock_times_out_as_an_error(repos, recipes: Path, tmp_path: Path):
    set_pins(recipes, {"default": {"mylib": repos["one"]}})
    lock = tmp_path / "cache" / "checkouts" / "mylib" / f"{repos['one']}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
         "f.write('4242'); f.flush(); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True);"
         " time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = pinned(["--dry-run"], tmp_path, recipes, repos["src"], BT_LOCK_TIMEOUT="1")
    finally:
        holder.kill()
        holder.communicate()
    assert proc.returncode == 2
    assert "timed out after 1 s waiting for the lock on" in proc.stderr, proc.stderr
    assert "held by pid 4242" in proc.stderr and "raise `BT_LOCK_TIMEOUT`" in proc.stderr
    assert not (lock.parent / repos["one"]).exists()
