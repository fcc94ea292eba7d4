"""Fixtures: gce-emulator processes and Compute clients built with Google's own Python library.

Every response the clients receive passes through `schema_check.RecordingHttp`, which checks it
against the compute.v1 discovery document shipped in google-api-python-client. A test during which
the emulator sent an invalid body errors at teardown, listing each body and what is wrong with it.
"""

from __future__ import annotations

import atexit
import copy
import json
from pathlib import Path

import googleapiclient
import googleapiclient.http
import pytest
from google.oauth2 import service_account
from googleapiclient import discovery

import emulator_proc
import schema_check

# The discovery document shipped inside google-api-python-client: never fetched over the network.
DISCOVERY_PATH = (
    Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "compute.v1.json"
)
DISCOVERY_DOC = json.loads(DISCOVERY_PATH.read_text())
RECORDER = schema_check.Recorder(schema_check.Discovery(DISCOVERY_DOC))
SCOPES = ["https://www.googleapis.com/auth/compute"]

_started: list[emulator_proc.Emulator] = []
atexit.register(lambda: [emu.stop() for emu in _started])


def recording_http() -> schema_check.RecordingHttp:
    """What googleapiclient.http.build_http() makes, but recording every response."""
    http = schema_check.RecordingHttp(RECORDER, timeout=60)
    http.redirect_codes = http.redirect_codes - {308}
    return http


def build_compute(emu: emulator_proc.Emulator, doc: dict | None = None, api_endpoint: str | None = None):
    """Builds the Compute client exactly as a user does, pointed at the emulator.

    `build_from_document(doc, credentials=..., client_options={"api_endpoint": ...})`; the only
    test seam is that `googleapiclient.http.build_http` (which `build_from_document` calls to make
    the transport it wraps in `google_auth_httplib2.AuthorizedHttp`) returns a recording
    `httplib2.Http` while the client is built.
    """
    credentials = service_account.Credentials.from_service_account_file(
        str(emu.key_path), scopes=SCOPES
    )
    client_options = {"api_endpoint": api_endpoint or emu.base_url + "/compute/v1/"}
    original = googleapiclient.http.build_http
    googleapiclient.http.build_http = recording_http
    try:
        service = discovery.build_from_document(
            doc if doc is not None else DISCOVERY_DOC,
            credentials=credentials,
            client_options=client_options,
        )
    finally:
        googleapiclient.http.build_http = original
    inner = getattr(service._http, "http", None)
    assert isinstance(inner, schema_check.RecordingHttp), (
        "the recording transport was not installed; googleapiclient changed how it builds http"
    )
    return service, credentials


def doc_with_root(base_url: str) -> dict:
    """The discovery document with rootUrl pointed at the emulator (the other way to aim a client)."""
    doc = copy.deepcopy(DISCOVERY_DOC)
    doc["rootUrl"] = base_url + "/"
    doc.pop("mtlsRootUrl", None)
    return doc


def _start(tmp_path_factory, name: str, *args: str, world: str = emulator_proc.WORLD) -> emulator_proc.Emulator:
    emu = emulator_proc.start(tmp_path_factory.mktemp(name), *args, world=world)
    _started.append(emu)
    RECORDER.bases.add(emu.base_url)
    return emu


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """The instant-profile emulator with --auth token."""
    emu = _start(tmp_path_factory, "instant", "--profile", "instant", "--auth", "token")
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def gcp_emulator(tmp_path_factory):
    """The gcp-profile emulator, a hundred times faster than Compute (operations take time)."""
    emu = _start(
        tmp_path_factory, "gcp", "--profile", "gcp", "--time-scale", "0.01", "--auth", "token",
        "--rng-seed", "7",
    )
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def ilb_emulator(tmp_path_factory):
    """The instant-profile emulator on the load-balancing / Shared VPC world (ILB_WORLD)."""
    emu = _start(tmp_path_factory, "ilb", "--profile", "instant", "--auth", "token",
                 world=emulator_proc.ILB_WORLD)
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="session")
def _ilb_compute(ilb_emulator):
    return build_compute(ilb_emulator)[0]


@pytest.fixture
def ilb_compute(_ilb_compute, ilb_emulator):
    """The Compute client on a freshly reset ILB_WORLD emulator."""
    ilb_emulator.reset()
    return _ilb_compute


@pytest.fixture(scope="session")
def _compute_and_credentials(emulator):
    return build_compute(emulator)


@pytest.fixture
def compute(_compute_and_credentials, emulator):
    """The Compute client on a freshly reset instant emulator."""
    emulator.reset()
    return _compute_and_credentials[0]


@pytest.fixture
def credentials(_compute_and_credentials):
    return _compute_and_credentials[1]


@pytest.fixture(scope="session")
def gcp_compute(gcp_emulator):
    return build_compute(gcp_emulator)[0]


@pytest.fixture
def project(emulator):
    return emulator.project


@pytest.fixture
def recorder():
    return RECORDER


def _format(bad: list[schema_check.Checked]) -> str:
    lines = []
    for checked in bad:
        lines.append(f"{checked.request} -> HTTP {checked.status}, expected {checked.expected}:")
        lines.extend(f"    {problem}" for problem in checked.problems)
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _schema_guard(request):
    """Fails the test (at teardown) if the emulator sent any body that breaks the schema."""
    RECORDER.current = request.node.nodeid
    mark = len(RECORDER.checked)
    yield
    RECORDER.current = "<between tests>"
    bad = [c for c in RECORDER.checked[mark:] if c.problems]
    for c in bad:
        c.reported = True
    if bad:
        pytest.fail(
            f"the emulator sent {len(bad)} response bodies that do not match the compute.v1 "
            f"discovery document:\n{_format(bad)}",
            pytrace=False,
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = RECORDER.by_schema()
    total = sum(counts.values())
    invalid = RECORDER.invalid
    terminalreporter.write_line(
        f"schema check: {total} response bodies checked against compute.v1 "
        f"(revision {DISCOVERY_DOC.get('revision')}), {len(invalid)} invalid; by expected schema: "
        + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    )
    stray = [c for c in invalid if not getattr(c, "reported", False)]
    if stray:
        terminalreporter.write_line("invalid bodies outside any test:\n" + _format(stray), red=True)


def pytest_sessionfinish(session, exitstatus):
    stray = [c for c in RECORDER.invalid if not getattr(c, "reported", False)]
    if stray and session.exitstatus == 0:
        session.exitstatus = 1
