"""Authentication: google-auth's JWT-bearer grant against /token, and 401s in Google's shape."""

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import google_auth_httplib2
import pytest
from google.auth import crypt, jwt
from google.auth.exceptions import RefreshError
from google.oauth2 import service_account

import emulator_proc
import schema_check
from conftest import SCOPES, recording_http

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def test_google_auth_gets_its_token_from_the_emulator(compute, credentials, emulator, project, recorder):
    key = json.loads(emulator.key_path.read_text())
    assert credentials._token_uri == key["token_uri"] == f"{emulator.base_url}/token"
    before = len(recorder.checked)
    credentials.token = None  # force google-auth to run the JWT grant again
    credentials.expiry = None
    compute.routes().list(project=project).execute()
    assert credentials.valid and credentials.token
    exchanges = [c.request for c in recorder.checked[before:]]
    assert exchanges[0] == "POST /token", exchanges
    assert exchanges[1].startswith(f"GET /compute/v1/projects/{project}/global/routes"), exchanges
    token_check = recorder.checked[before]
    assert token_check.status == 200 and not token_check.problems


def _raw(url: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """A request without google-auth (urllib): status, headers, parsed body."""
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def _assert_google_401(status, body, reason):
    assert status == 401
    problems: list[str] = []
    schema_check.validate_error(body, status, problems)
    assert not problems, problems
    error = body["error"]
    assert error["code"] == 401
    assert error.get("status", "UNAUTHENTICATED") == "UNAUTHENTICATED"
    item = error["errors"][0]
    assert item["reason"] == reason
    assert item["domain"] == "global"
    assert item.get("location") == "Authorization"
    assert item.get("locationType") == "header"


def test_request_without_credentials_is_401(emulator, project):
    status, _, body = _raw(f"{emulator.base_url}/compute/v1/projects/{project}/global/routes")
    _assert_google_401(status, body, "required")
    # The same through plain httplib2 (recorded and schema-checked like every client response).
    resp, content = recording_http().request(
        f"{emulator.base_url}/compute/v1/projects/{project}/zones/us-central1-a/instances/se-1"
    )
    _assert_google_401(resp.status, json.loads(content), "required")


def test_unknown_token_is_401(emulator, project):
    status, _, body = _raw(
        f"{emulator.base_url}/compute/v1/projects/{project}/global/routes",
        headers={"Authorization": "Bearer ya29.not-a-token-this-emulator-issued"},
    )
    _assert_google_401(status, body, "authError")


def test_batch_without_credentials_is_401(emulator):
    resp, content = recording_http().request(
        f"{emulator.base_url}/batch/compute/v1", method="POST", body="",
        headers={"content-type": "multipart/mixed; boundary=x"},
    )
    _assert_google_401(resp.status, json.loads(content), "required")


def test_401_has_www_authenticate(emulator, project):
    status, headers, _ = _raw(f"{emulator.base_url}/compute/v1/projects/{project}/global/routes")
    assert status == 401
    assert (headers.get("WWW-Authenticate") or "").startswith("Bearer")


def _post_token(emulator, assertion: str, grant_type: str = JWT_BEARER):
    form = urllib.parse.urlencode({"grant_type": grant_type, "assertion": assertion})
    resp, content = recording_http().request(
        f"{emulator.base_url}/token", method="POST", body=form,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    return resp.status, json.loads(content)


def _assertion(key_path, audience: str, email: str = emulator_proc.CLIENT_EMAIL) -> str:
    signer = crypt.RSASigner.from_service_account_file(str(key_path))
    now = int(time.time())
    payload = {"iss": email, "scope": " ".join(SCOPES), "aud": audience, "iat": now, "exp": now + 600}
    return jwt.encode(signer, payload).decode()


def test_token_endpoint_checks_the_jwt(emulator, tmp_path):
    token_uri = f"{emulator.base_url}/token"
    # Signed with the registered key, google-auth's signer, right audience: a token.
    status, body = _post_token(emulator, _assertion(emulator.key_path, token_uri))
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] > 0
    # Google's own token URI is accepted as audience too.
    status, _ = _post_token(emulator, _assertion(emulator.key_path, "https://oauth2.googleapis.com/token"))
    assert status == 200
    # Wrong audience.
    status, body = _post_token(emulator, _assertion(emulator.key_path, "https://example.invalid/token"))
    assert status == 400 and body["error"] == "invalid_grant"
    # A key the world does not know, claiming the registered account: bad signature.
    stranger = tmp_path / "stranger.json"
    subprocess.run(
        [str(emulator_proc.emulator_binary()), "keygen", "--client-email", emulator_proc.CLIENT_EMAIL,
         "--out", str(stranger), "--token-uri", token_uri],
        check=True, capture_output=True, timeout=60,
    )
    status, body = _post_token(emulator, _assertion(stranger, token_uri))
    assert status == 400 and body["error"] == "invalid_grant"
    # Wrong grant type.
    status, body = _post_token(emulator, _assertion(emulator.key_path, token_uri), grant_type="password")
    assert status == 400 and body["error"] == "unsupported_grant_type"

    # google-auth itself reports the refusal as a RefreshError.
    creds = service_account.Credentials.from_service_account_file(str(stranger), scopes=SCOPES)
    with pytest.raises(RefreshError) as refused:
        creds.refresh(google_auth_httplib2.Request(recording_http()))
    assert "invalid_grant" in str(refused.value)
