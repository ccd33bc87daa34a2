"""The deployment files: no Docker engine or SLURM runs here, so their syntax is checked
with tools that do (the compose specification's JSON schema, a Dockerfile parser,
shellcheck), their references against the checkout, and the SLURM script is run locally."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from conftest import ROOT, TINY, make_tiny_dataset, write_recipe

DEPLOY = ROOT / "deploy"


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(path).exists(), f"`{name}` is missing: run scripts/test.sh"
    return path


def test_compose_file_follows_the_compose_specification():
    proc = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                           str(DEPLOY / "docker-compose.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_services_ports_and_variables():
    text = (DEPLOY / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert set(services) == {"server_job", "server_develop", "debug"}
    for service in services.values():
        assert service["env_file"] == ".env"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert services["server_job"]["entrypoint"] == ["python3"]
    assert all(p.startswith("127.0.0.1:") for p in services["server_develop"]["ports"])
    assert "JUPYTER_PASSWORD" in " ".join(services["server_develop"]["command"])
    # Every variable the compose file reads is listed in .env.example, with no secret set.
    example = (DEPLOY / ".env.example").read_text()
    listed = dict(re.findall(r"^#? ?([A-Z_][A-Z0-9_]*)=(.*)$", example, re.M))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text.replace("$${", "")))
    used |= set(re.findall(r"\$\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= set(listed), used - set(listed)
    for name, value in listed.items():
        if re.search("PASS|SECRET|KEY|TOKEN", name):
            assert value == "", name
    assert "/deploy/.env" in (ROOT / ".gitignore").read_text().split()


def test_dockerfile_parses_and_copies_what_exists():
    parser = DockerfileParser(str(DEPLOY / "Dockerfile"))
    instructions = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    known = {"FROM", "ENV", "RUN", "ARG", "WORKDIR", "COPY", "CMD", "ENTRYPOINT", "LABEL"}
    assert {i["instruction"] for i in instructions} <= known
    assert instructions[0]["instruction"] == "FROM" and "nvidia/cuda" in parser.baseimage
    runs = " ".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    assert "torch==2.13.0" in runs and "maturin build --release" in runs
    for copy in (i["value"].split() for i in instructions if i["instruction"] == "COPY"):
        for source in copy[:-1]:
            assert (ROOT / source).exists(), source
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"target", "work", ".git"} <= set(ignored)


def test_slurm_script_passes_shellcheck_and_starts_a_worker(tmp_path: Path):
    script = DEPLOY / "slurm_workers.sh"
    proc = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    directives = re.findall(r"^#SBATCH (--[a-z-]+)", script.read_text(), re.M)
    assert {"--array", "--gres", "--job-name"} <= set(directives)

    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: sbatch --array=0-N" in usage.stderr

    # As array task 3 would run it: main.py on a recipe, here a dry run in dev mode.
    recipes = tmp_path / "recipes"
    write_recipe(recipes, make_tiny_dataset(tmp_path / "data"))
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "SLURM_ARRAY_TASK_ID": "3",
           "SLURM_ARRAY_JOB_ID": "77", "SLURM_SUBMIT_DIR": str(ROOT),
           "BT_WORK_DIR": str(tmp_path / "work"), "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(script), "--recipes-dir", str(recipes), "--recipe", TINY,
                           "--experiment", "tiny", "--dev-mode", "--dry-run"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("worker 3 of job 77 on ")
    assert "Noisy -> Transfer" in proc.stdout


@pytest.mark.parametrize("script", sorted((ROOT / "scripts").glob("*.sh")) +
                         [ROOT / ".ci" / "run"], ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script: Path):
    proc = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
