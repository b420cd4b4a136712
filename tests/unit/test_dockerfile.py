"""The container image's invariants, read from docker/Dockerfile, and its entrypoint and health check run
without a container (fake `torchserve` on PATH, fake TorchServe HTTP server).

Each Dockerfile rule is a function returning its violations; it is run on the real Dockerfile (no
violations) and on a snippet that breaks it (violations), so every rule is shown to be able to fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.docker_fakes import FakeTorchServe, fake_launcher_path, write_props

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"
MODEL_SUFFIXES = (".mar", ".pth", ".pt", ".safetensors", ".ckpt")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#"):   # comments, also between continuation lines
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def final_stage(text: str) -> list[tuple[str, str]]:
    ins = instructions(text)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def runs_as_uid_1000(text: str) -> list[str]:
    users = [arg for word, arg in final_stage(text) if word == "USER"]
    problems = [] if users and users[-1].split(":")[0] == "1000" else [f"final USER is {users[-1:]}"]
    runs = " ".join(arg for word, arg in final_stage(text) if word == "RUN")
    if "--uid 1000" not in runs or "--gid 1000" not in runs:
        problems.append("no passwd/group entry with uid/gid 1000")
    return problems


def copies_no_model(text: str) -> list[str]:
    problems = []
    for word, arg in final_stage(text):
        if word in ("COPY", "ADD"):
            sources = [a for a in arg.split()[:-1] if not a.startswith("--")]
            problems += [f"{word} {s}" for s in sources
                         if s.endswith(MODEL_SUFFIXES) or "model_store" in s or "model-store" in s]
    return problems


def pip_uses_constraints(text: str) -> list[str]:
    problems = []
    for word, arg in instructions(text):
        if word == "RUN" and "pip install" in arg and "-c requirements/constraints.txt" not in arg:
            problems.append(f"pip install without the constraints: {arg[:80]}")
        if word == "RUN" and re.search(r"[A-Za-z0-9_.-]+==\d", arg):
            problems.append(f"version typed in the Dockerfile: {arg[:80]}")
    return problems


def exec_form_entry(text: str) -> list[str]:
    problems = []
    for word in ("ENTRYPOINT", "CMD"):
        args = [arg for w, arg in final_stage(text) if w == word]
        try:
            ok = bool(args) and isinstance(json.loads(args[-1]), list)
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"{word} is not in exec form: {args}")
    health = [arg for w, arg in final_stage(text) if w == "HEALTHCHECK"]
    if not health or "CMD [" not in health[-1]:
        problems.append(f"no exec-form HEALTHCHECK: {health}")
    return problems


def no_keepalive_hacks(text: str) -> list[str]:
    return ["tail -f keeps the container alive"] if re.search(r"tail\s+-f", text) else []


def runtime_without_compiler(text: str) -> list[str]:
    runs = " ".join(arg for word, arg in final_stage(text) if word == "RUN")
    tools = ("g++", "gcc", "build-essential", "python3-dev", "-dev ")
    problems = [f"runtime installs {tool}" for tool in tools if tool in runs]
    copies = [arg for word, arg in final_stage(text) if word == "COPY" and "--from=" in arg]
    problems += [f"runtime copies more than the venv from the builder: {a}" for a in copies
                 if a.split()[1:] != ["/opt/venv", "/opt/venv"]]
    return problems


RULES = {
    runs_as_uid_1000: "FROM x AS builder\nFROM x\nRUN useradd --uid 1000 u\nUSER root\n",
    copies_no_model: "FROM x\nCOPY model_store/co_detr.mar /srv/\n",
    pip_uses_constraints: "FROM x\nRUN pip install \\\n    torch==2.13.0\n",
    exec_form_entry: "FROM x\nHEALTHCHECK CMD curl localhost\nENTRYPOINT /usr/local/bin/start\nCMD serve\n",
    no_keepalive_hacks: "FROM x\nCMD [\"sh\", \"-c\", \"torchserve --start; tail -f /dev/null\"]\n",
    runtime_without_compiler: "FROM x AS b\nFROM x\nRUN apt-get install -y g++\nCOPY --from=b /src /src\n",
}


@pytest.mark.parametrize("rule", list(RULES), ids=lambda rule: rule.__name__)
def test_dockerfile_rule(rule):
    assert rule((DOCKER / "Dockerfile").read_text()) == []
    assert rule(RULES[rule]), f"{rule.__name__} does not catch its counter-example"


def test_every_stage_starts_from_base_image_arg():
    text = (DOCKER / "Dockerfile").read_text()
    froms = [arg.split() for word, arg in instructions(text) if word == "FROM"]
    # toolchain and runtime from the base, builder from toolchain: one Debian, one python3.11 for the venv
    assert froms == [["${BASE_IMAGE}", "AS", "toolchain"], ["toolchain", "AS", "builder"],
                     ["${BASE_IMAGE}", "AS", "runtime"]]
    assert "ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim" in text


def test_dockerignore_keeps_models_venvs_and_tests_out():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    included = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
    for path in (".venv", ".cache", ".git", "tests", "bench", "model_store", "handler"):
        assert not any(path == inc or path.startswith(inc + "/") for inc in included), path
    assert "*" in lines and {"**/*.mar", "**/*.pth", "**/*.safetensors"} <= set(lines)


def test_container_config_keeps_the_serving_settings_of_config_properties():
    def props(path):
        return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if ln and not ln.startswith("#"))

    dev, image = props(REPO / "config" / "config.properties"), props(DOCKER / "config.properties")
    local_only = {"inference_address", "management_address", "metrics_address", "model_store",
                  "metrics_config", "vmargs"}  # vmargs: the image's log4j2 file (make serve keeps TS's own)
    assert {k: v for k, v in dev.items() if k not in local_only} == \
           {k: v for k, v in image.items() if k not in local_only}
    assert image["inference_address"] == "http://0.0.0.0:8080"
    assert image["management_address"].startswith("http://127.0.0.1:")
    assert image["disable_token_authorization"] == "false" and image["enable_model_api"] == "false"
    copied = [arg for word, arg in instructions((DOCKER / "Dockerfile").read_text()) if word == "COPY"
              and "config/metrics.yaml" in arg]
    assert copied and image["metrics_config"] == copied[0].split()[-1] + "metrics.yaml"


@pytest.mark.parametrize("flavour, expected", [
    # CUDA 13: NVIDIA's wheels from PyPI at the version constraints.txt pins (torch's own cuda-toolkit pin)
    ("cu130", "CUDA 13.0 from PyPI: cuda-toolkit[nvcc,cccl]==13.0.3"),
    ("cu131", "CUDA 13.1 from PyPI: cuda-toolkit[nvcc,cccl]==13.1.*"),  # not the pinned torch's CUDA
    ("cu128", "CUDA 12.8 from NVIDIA's Debian 12 repository: cuda-nvcc-12-8 cuda-libraries-dev-12-8"),
    ("cpu", "")])
def test_cuda_toolkit_version_from_torch_flavour(flavour, expected):
    out = subprocess.run(["bash", str(DOCKER / "cuda-toolkit.sh"), flavour,
                          str(REPO / "requirements" / "constraints.txt")], capture_output=True, text=True,
                         env={**os.environ, "CUDA_TOOLKIT_DRY_RUN": "1"}, check=True)
    assert out.stdout.strip() == expected


def test_the_toolkit_pin_is_the_cuda_toolkit_torch_requires():
    # PyPI's torch 2.13.0 (CUDA 13.0) depends on cuda-toolkit==13.0.3; the compiler must match it.
    pins = dict(line.split("==", 1) for line in (REPO / "requirements" / "constraints.txt").read_text()
                .splitlines() if "==" in line and not line.startswith("#"))
    assert pins["cuda-toolkit"] == "13.0.3" and pins["nvidia-cuda-nvcc"].startswith("13.0.")
    assert pins["nvidia-cuda-runtime"].startswith("13.0.") and pins["torch"] == "2.13.0"


def test_the_arch_list_comes_from_cuda_archs_txt():
    listed = [line for line in (DOCKER / "cuda_archs.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    out = subprocess.run(["bash", str(DOCKER / "build.sh"), "archs"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}, check=True)
    assert out.stdout.split() == listed == ["8.0;8.6;8.9;9.0+PTX"]
    override = subprocess.run(["bash", str(DOCKER / "build.sh"), "archs"], capture_output=True, text=True,
                              env={**os.environ, "TORCH_CUDA_ARCH_LIST": "9.0"}, check=True)
    assert override.stdout.split() == ["9.0"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert 'ARG TORCH_CUDA_ARCH_LIST=""' in dockerfile and "COPY docker/cuda_archs.txt" in dockerfile


def test_cuda_toolkit_rejects_a_malformed_flavour():
    out = subprocess.run(["bash", str(DOCKER / "cuda-toolkit.sh"), "cuda12"], capture_output=True, text=True)
    assert out.returncode == 2 and "cu130" in out.stderr


# ---- docker/entrypoint.sh -------------------------------------------------------------------------------

def entry_env(tmp_path: Path, store: Path | None, **extra: str) -> dict[str, str]:
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://0.0.0.0:8080\n")
    env = {**os.environ, "PATH": f"{fake_launcher_path(tmp_path)}:{os.environ['PATH']}",
           "TS_CONFIG_FILE": str(config), "CODETR_WORKDIR": str(tmp_path / "work"),
           "TEMP": str(tmp_path / "tmp"), "LOG_LOCATION": str(tmp_path / "logs"),
           "FAKE_TS_RECORD": str(tmp_path / "argv.json"), **extra}
    env.pop("TMPDIR", None)
    if store is not None:
        env["MODEL_STORE"] = str(store)
    return env


@pytest.mark.parametrize("case", ["empty", "missing", "blank", "only_junk"])
def test_entrypoint_fails_fast_without_a_model(tmp_path, case):
    store = tmp_path / "store"
    if case in ("empty", "only_junk"):
        store.mkdir()
    if case == "only_junk":
        (store / "lost+found").mkdir()
        (store / "notes.txt").write_text("x")
    env = entry_env(tmp_path, store if case != "blank" else None)
    if case == "blank":
        env["MODEL_STORE"] = ""
    start = time.monotonic()
    out = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 78, out.stderr
    assert time.monotonic() - start < 5
    assert "/home/model-server/model-store" in out.stderr and "-v /srv/store" in out.stderr
    assert not (tmp_path / "argv.json").exists(), "torchserve was started anyway"


def make_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    (store / "co_detr_v2" / "MAR-INF").mkdir(parents=True)
    (store / "co_detr_v2" / "MAR-INF" / "MANIFEST.json").write_text("{}")
    (store / "co_detr.mar").write_bytes(b"PK")
    (store / "lost+found").mkdir()
    (store / ".hidden.mar").write_bytes(b"PK")
    return store


@pytest.mark.parametrize("auth_off", [False, True])
def test_entrypoint_starts_torchserve_on_every_model(tmp_path, auth_off):
    extra = {"CODETR_DISABLE_TOKEN_AUTH": "1"} if auth_off else {}
    env = entry_env(tmp_path, make_store(tmp_path), FAKE_TS_EXIT="3", **extra)
    out = subprocess.run(["bash", str(ENTRYPOINT), "--enable-model-api"], env=env, capture_output=True,
                         text=True, timeout=30)
    record = json.loads((tmp_path / "argv.json").read_text())
    argv = record["argv"]
    assert argv[:3] == ["--start", "--foreground", "--ncs"]
    assert argv[argv.index("--models") + 1:] == ["co_detr.mar", "co_detr_v2"]
    assert "--enable-model-api" in argv and ("--disable-token-auth" in argv) == auth_off
    assert record["cwd"] == str(tmp_path / "work")
    assert out.returncode == 3 and "exited on its own" in out.stderr


def test_entrypoint_refuses_an_unwritable_log_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = entry_env(tmp_path, make_store(tmp_path), LOG_LOCATION=str(blocker / "logs"))
    out = subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 78 and "--tmpfs" in out.stderr


@pytest.mark.parametrize("signum, rc", [(signal.SIGTERM, 0), (None, 1)])
def test_entrypoint_forwards_sigterm_to_the_jvm(tmp_path, signum, rc):
    env = entry_env(tmp_path, make_store(tmp_path), FAKE_JVM_LIFETIME="60" if signum else "1")
    proc = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stderr=subprocess.PIPE, text=True)
    ready = tmp_path / "jvm-ready"
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the fake JVM never started"
    if signum:
        start = time.monotonic()
        proc.send_signal(signum)
    assert proc.wait(timeout=20) == rc
    stderr = proc.stderr.read()
    if signum:
        assert time.monotonic() - start < 10
        assert (tmp_path / "jvm-terminated").read_text() == "SIGTERM", "the JVM did not get the signal"
        assert "SIGTERM received" in stderr and "TorchServe stopped" in stderr
    else:
        assert "exited on its own" in stderr


# ---- docker/healthcheck.py ------------------------------------------------------------------------------

def health(tmp_path: Path, server: FakeTorchServe, *args: str, **env: str) -> subprocess.CompletedProcess:
    write_props(tmp_path / "ts.properties", server.port)
    inherited = {k: v for k, v in os.environ.items() if k != "CODETR_DISABLE_TOKEN_AUTH"}
    full_env = {**inherited, "TS_CONFIG_FILE": str(tmp_path / "ts.properties"),
                "CODETR_WORKDIR": str(server.workdir), **env}
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], env=full_env, capture_output=True,
                          text=True, timeout=30)


@pytest.fixture
def server(tmp_path):
    with FakeTorchServe(tmp_path / "work") as fake:
        yield fake


def test_healthcheck_pings_with_the_inference_token(tmp_path, server):
    out = health(tmp_path, server)
    assert out.returncode == 0, out.stdout + out.stderr
    assert server.seen_auth == [f"Bearer {server.inference_key}"]


def test_healthcheck_fails_on_a_wrong_key_or_an_unhealthy_model(tmp_path, server):
    server.write_keys(inference="not-the-key")
    assert health(tmp_path, server).returncode == 1
    server.write_keys()
    server.healthy = False
    out = health(tmp_path, server)
    assert out.returncode == 1 and "Unhealthy" in out.stdout


def test_healthcheck_without_key_file_or_server(tmp_path, server):
    (server.workdir / "key_file.json").unlink()
    out = health(tmp_path, server)
    assert out.returncode == 1 and "key_file.json" in out.stderr
    server.write_keys()
    server.stop()
    assert health(tmp_path, server).returncode == 1


def test_healthcheck_renews_an_expired_key_and_still_pings(tmp_path, server):
    server.write_keys(expired=True)
    old = server.inference_key
    out = health(tmp_path, server)
    assert out.returncode == 0, out.stdout + out.stderr
    assert server.inference_key != old and server.seen_paths[-2:] == ["/token", "/ping"]
    assert server.seen_auth[-1] == f"Bearer {server.inference_key}"


def test_healthcheck_falls_back_to_metrics_when_renewal_fails(tmp_path, server):
    server.api_key = "rotated"  # key_file.json's API key no longer works: renewal is refused
    server.write_keys(expired=True)
    server.api_key = "something-else"
    out = health(tmp_path, server)
    assert out.returncode == 0 and "expired" in out.stdout and server.seen_paths[-1] == "/metrics"
    server.metrics_up = False
    assert health(tmp_path, server).returncode == 1


def test_healthcheck_without_auth_sends_no_token(tmp_path, server):
    server.auth_off = True
    out = health(tmp_path, server, CODETR_DISABLE_TOKEN_AUTH="1")
    assert out.returncode == 0 and server.seen_auth == [None]


def test_print_and_refresh_token(tmp_path, server):
    assert health(tmp_path, server, "--print-token").stdout.strip() == server.inference_key
    old = server.inference_key
    out = health(tmp_path, server, "--refresh-token")
    assert out.returncode == 0 and out.stdout.strip() == server.inference_key != old
