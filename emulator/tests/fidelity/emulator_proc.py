"""Starts and stops a `gce-emulator` process for the fidelity tests."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROJECT = "fidelity-project"
CLIENT_EMAIL = f"fidelity@{PROJECT}.iam.gserviceaccount.com"


def emulator_binary() -> Path:
    path = Path(os.environ.get("GCE_EMULATOR_BIN") or REPO_ROOT / "target" / "debug" / "gce-emulator")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"gce-emulator binary not found at {path}: build it with "
            "`cargo build -p gce-emulator` or set GCE_EMULATOR_BIN"
        )
    return path


WORLD = """\
projects:
  - id: {project}
    quotas: {{ROUTES: 2500, STATIC_ROUTES_PER_NETWORK: 2500, FIREWALLS: 1000, STATIC_ADDRESSES: 200, FORWARDING_RULES: 100}}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
    instances:
      - {{name: se-1, zone: us-central1-a, network: default, networkIP: 10.128.0.10, status: RUNNING, canIpForward: true}}
      - {{name: se-2, zone: us-central1-b, network: default, networkIP: 10.128.0.11, status: RUNNING, canIpForward: true}}
serviceAccounts:
{accounts}"""

# Internal load balancing and Shared VPC (test_ilb.py, test_shared_vpc.py): a standalone project,
# a Shared VPC host with one service project, and a project attached to nothing.
ILB_PROJECT = "ilb-project"
HOST_PROJECT = "host-project"
SERVICE_PROJECT = "service-project"
LONE_PROJECT = "lone-project"
ILB_WORLD = """\
projects:
  - id: ilb-project
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
          - {{name: second, region: us-central1, ipCidrRange: 10.129.0.0/20}}
    instances:
      - {{name: web-1, zone: us-central1-a, networkIP: 10.128.0.21, tags: [web]}}
      - {{name: web-2, zone: us-central1-a, networkIP: 10.128.0.22, tags: [web]}}
      - {{name: web-3, zone: us-central1-a, networkIP: 10.128.0.23, tags: [web]}}
      - {{name: web-b, zone: us-central1-b, networkIP: 10.128.0.24, tags: [web]}}
      - {{name: other-subnet, zone: us-central1-a, subnetwork: second, networkIP: 10.129.0.21}}
  - id: host-project
    quotas: {{ROUTES: 3}}
    networks:
      - name: shared
        subnetworks:
          - {{name: shared-sub, region: us-central1, ipCidrRange: 10.10.0.0/24}}
    instances:
      - {{name: host-vm, zone: us-central1-a, network: shared, networkIP: 10.10.0.2}}
  - id: service-project
    networkProject: host-project
    quotas: {{FORWARDING_RULES: 1}}
    instances:
      - {{name: app-1, zone: us-central1-a, network: shared, networkIP: 10.10.0.11, tags: [app]}}
      - {{name: app-2, zone: us-central1-a, network: shared, networkIP: 10.10.0.12, tags: [app]}}
  - id: lone-project
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.200.0.0/20}}
serviceAccounts:
{accounts}"""


@dataclass
class Emulator:
    proc: subprocess.Popen
    base_url: str  # http://127.0.0.1:PORT
    key_path: Path
    project: str
    log_path: Path

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base_url}/_emulator/{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        self.admin("POST", "reset")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start(workdir: Path, *extra_args: str, world: str = WORLD) -> Emulator:
    """keygen, world file (`world`, a template with {project} and {accounts}), start on port 0,
    then point the key's token_uri at the real port."""
    binary = emulator_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    key_path = workdir / "key.json"
    keygen = subprocess.run(
        [str(binary), "keygen", "--client-email", CLIENT_EMAIL, "--project-id", PROJECT,
         "--out", str(key_path), "--token-uri", "http://127.0.0.1:1/token"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    world_path = workdir / "world.yaml"
    world_path.write_text(world.format(project=PROJECT, accounts=keygen.stdout))
    log_path = workdir / "emulator.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(binary), "--listen", "127.0.0.1:0", "--world", str(world_path), *extra_args],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
    )
    log.close()
    first_line: list[bytes] = []
    got_line = threading.Event()

    def drain() -> None:  # read the first line, then keep the pipe from filling up
        assert proc.stdout is not None
        for index, line in enumerate(proc.stdout):
            if index == 0:
                first_line.append(line)
                got_line.set()
        got_line.set()

    threading.Thread(target=drain, daemon=True).start()
    if not got_line.wait(30) or not first_line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"gce-emulator did not start: {log_path.read_text(errors='replace')}")
    line = first_line[0].decode().strip()
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"unexpected first line from gce-emulator: {line!r}")
    addr = line.removeprefix("listening on ")
    base_url = f"http://{addr}"
    key = json.loads(key_path.read_text())
    key["token_uri"] = f"{base_url}/token"
    key_path.write_text(json.dumps(key, indent=2))
    emulator = Emulator(proc, base_url, key_path, PROJECT, log_path)
    deadline = time.monotonic() + 10
    while True:  # the admin API answers once the server serves
        try:
            emulator.admin("GET", "stats")
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                emulator.stop()
                raise
            time.sleep(0.05)
    return emulator
