"""Exporting one commit's tree: bias_transfer_rs (git2, files written in parallel) against
`git archive <commit> | tar -x`, side by side in one run, on a generated repository of about
5,000 files.

    python benchmarks/export.py [--files 5000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import bias_transfer_rs  # noqa: F401  (loads torch, then the extension)
from bias_transfer_rs import _core


def make_repository(root: Path, files: int) -> str:
    """A repository shaped like a source tree: nested folders, small text files of 0.2 to
    8 KB (a few executables); returns its commit."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(files):
        folder = root / f"pkg{i % 23}" / f"mod{i % 7}" / f"sub{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        size = int(rng.integers(200, 8000))
        text = "".join(chr(c) for c in rng.integers(32, 127, size)) + "\n"
        path = folder / f"file{i}.py"
        path.write_text(text)
        if i % 97 == 0:
            path.chmod(0o755)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "commit", "-q", "-m", "tree"], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "gc", "-q"], check=True)
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def git_archive(repo: Path, commit: str, dest: Path) -> None:
    dest.mkdir()
    archive = subprocess.Popen(["git", "-C", str(repo), "archive", commit],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError("git archive failed")


def median_s(fn, scratch: Path, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        dest = scratch / f"out{i}"
        start = time.perf_counter()
        fn(dest)
        elapsed = time.perf_counter() - start
        shutil.rmtree(dest)
        if i:  # the first round warms the page cache
            times.append(elapsed)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo, scratch = Path(tmp) / "repo", Path(tmp) / "scratch"
        scratch.mkdir()
        commit = make_repository(repo, args.files)
        ours = median_s(lambda d: _core.export_commit(repo, commit, d), scratch, args.repeats)
        theirs = median_s(lambda d: git_archive(repo, commit, d), scratch, args.repeats)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.files} files, median of {args.repeats}")
    print(f"{'bias_transfer_rs export':<28} {1e3 * ours:8.1f} ms")
    print(f"{'git archive | tar -x':<28} {1e3 * theirs:8.1f} ms")
    print(f"ratio (git archive / ours): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
