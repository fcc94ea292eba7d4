"""The harness itself: the client is aimed at the emulator, and the schema check is not vacuous."""

import google_auth_httplib2

import schema_check
from conftest import DISCOVERY_DOC, DISCOVERY_PATH, build_compute
from gce import REGION, ZONE


def test_client_is_built_offline_and_aimed_at_the_emulator(compute, emulator, project):
    assert DISCOVERY_PATH.name == "compute.v1.json" and DISCOVERY_PATH.is_file()
    assert DISCOVERY_DOC["rootUrl"] == "https://compute.googleapis.com/"
    assert compute._baseUrl == emulator.base_url + "/compute/v1/"
    assert isinstance(compute._http, google_auth_httplib2.AuthorizedHttp)
    assert isinstance(compute._http.http, schema_check.RecordingHttp)
    requests = [
        compute.routes().get(project=project, route="r"),
        compute.routes().list(project=project, maxResults=3, filter="name eq x.*"),
        compute.firewalls().patch(project=project, firewall="f", body={}),
        compute.addresses().insert(project=project, region=REGION, body={}),
        compute.globalAddresses().list(project=project),
        compute.forwardingRules().get(project=project, region=REGION, forwardingRule="f"),
        compute.targetInstances().delete(project=project, zone=ZONE, targetInstance="t"),
        compute.instances().stop(project=project, zone=ZONE, instance="i"),
        compute.instances().start(project=project, zone=ZONE, instance="i"),
        compute.subnetworks().list(project=project, region=REGION),
        compute.globalOperations().wait(project=project, operation="o"),
        compute.regionOperations().delete(project=project, region=REGION, operation="o"),
        compute.zoneOperations().list(project=project, zone=ZONE),
    ]
    index = schema_check.Discovery(DISCOVERY_DOC)
    prefix = emulator.base_url + "/compute/v1/"
    for req in requests:
        assert req.uri.startswith(prefix + f"projects/{project}/"), req.uri
        path = req.uri[len(emulator.base_url):].split("?", 1)[0]
        # The transport's path-to-method match agrees with the client's own method id.
        assert index.match(req.method, path[len("/compute/v1/"):]).id == req.methodId


def test_api_endpoint_must_include_the_service_path(emulator, project):
    """client_options.api_endpoint replaces rootUrl + servicePath, so it must end in /compute/v1/."""
    bare, _ = build_compute(emulator, api_endpoint=emulator.base_url + "/")
    assert bare.routes().list(project=project).uri.startswith(f"{emulator.base_url}/projects/{project}/")


def test_every_response_so_far_was_checked(compute, project, recorder):
    before = len(recorder.checked)
    compute.routes().list(project=project).execute()
    compute.instances().get(project=project, zone=ZONE, instance="se-1").execute()
    new = recorder.checked[before:]
    assert [c.expected for c in new if c.expected != "token response"] == ["RouteList", "Instance"]
    assert all(not c.problems for c in new)


def test_validator_catches_what_it_should():
    """Bodies that break the schema in each way are flagged (so a green run means something)."""
    index = schema_check.Discovery(DISCOVERY_DOC)
    schemas = index.schemas

    def problems(body, ref):
        out: list[str] = []
        schema_check.validate_schema(body, {"$ref": ref}, schemas, "$", out)
        return out

    good_route = {
        "kind": "compute#route", "id": "123", "name": "r", "priority": 1000,
        "destRange": "10.0.0.0/24", "tags": ["a"], "routeStatus": "ACTIVE",
        "creationTimestamp": "2024-01-01T00:00:00.000-07:00",
    }
    assert problems(good_route, "Route") == []
    assert any("not declared" in p for p in problems({**good_route, "bogus": 1}, "Route"))
    assert any("uint64" in p for p in problems({**good_route, "id": 123}, "Route"))
    assert any("JSON integer" in p for p in problems({**good_route, "priority": "1000"}, "Route"))
    assert any("out of the uint32" in p for p in problems({**good_route, "priority": -1}, "Route"))
    assert any("enum" in p for p in problems({**good_route, "routeStatus": "GREEN"}, "Route"))
    assert any("null" in p for p in problems({**good_route, "description": None}, "Route"))
    assert any("kind" in p for p in problems({**good_route, "kind": "compute#firewall"}, "Route"))
    assert any("expected array" in p for p in problems({**good_route, "tags": "a"}, "Route"))
    assert any("warnings[0].data[0].bogus" in p for p in problems(
        {**good_route, "warnings": [{"code": "INJECTED_KERNELS_DEPRECATED", "data": [{"bogus": "x"}]}]}, "Route"))
    # additionalProperties maps: values are checked, keys are free.
    assert problems({"kind": "compute#address", "labels": {"k": "v"}}, "Address") == []
    assert problems({"kind": "compute#address", "labels": {"k": 1}}, "Address")
    # Nested list items through $ref.
    assert problems({"kind": "compute#routeList", "items": [{**good_route, "bogus": 1}]}, "RouteList")

    def error_problems(body, status):
        out: list[str] = []
        schema_check.validate_error(body, status, out)
        return out

    good_error = {"error": {"code": 404, "message": "m", "errors": [
        {"domain": "global", "reason": "notFound", "message": "m"}]}}
    assert error_problems(good_error, 404) == []
    assert error_problems(good_error, 400)  # code differs from HTTP status
    assert error_problems({"error": {"code": 404, "message": "m"}}, 404)  # no errors[]
    assert error_problems({"error": "m"}, 404)
    assert error_problems({**good_error, "extra": 1}, 404)
    assert error_problems({"error": {**good_error["error"], "status": "ALREADY_EXISTS"}}, 404)


def test_batch_parser_flags_a_broken_batch_response():
    """The batch checker notices parts answering no request and requests without answers."""
    recorder = schema_check.Recorder(schema_check.Discovery(DISCOVERY_DOC))
    recorder.bases.add("http://emu")
    request_body = (
        "--B\r\nContent-Type: application/http\r\nContent-ID: <x+1>\r\n\r\n"
        "GET /compute/v1/projects/p/global/routes/r HTTP/1.1\r\n\r\n\r\n"
        "--B\r\nContent-Type: application/http\r\nContent-ID: <x+2>\r\n\r\n"
        "GET /compute/v1/projects/p/global/routes/s HTTP/1.1\r\n\r\n\r\n--B--"
    )
    response_body = (
        b"--R\r\nContent-Type: application/http\r\nContent-ID: <response-x+1>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
        b'{"kind": "compute#route", "name": "r", "nextHopFoo": "x"}\r\n'
        b"--R\r\nContent-Type: application/http\r\nContent-ID: <response-x+9>\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
        b'{"error": {"code": 404, "message": "m", "errors": [{"domain": "global", "reason": "notFound", "message": "m"}]}}\r\n'
        b"--R--"
    )

    class Resp(dict):
        status = 200

    resp = Resp({"content-type": "multipart/mixed; boundary=R"})
    recorder.observe("POST", "http://emu/batch/compute/v1", {"content-type": 'multipart/mixed; boundary="B"'},
                     request_body, resp, response_body)
    flat = [p for c in recorder.checked for p in c.problems]
    assert any("nextHopFoo" in p for p in flat), flat
    assert any("answers no request" in p for p in flat), flat
    assert any("got no response part" in p for p in flat), flat
