"""Checks every HTTP exchange with the emulator against Google's own compute.v1 discovery document.

`Recorder` sits in the transport (a `RecordingHttp`, an `httplib2.Http` subclass that the client's
`AuthorizedHttp` wraps), so it sees each response exactly as the client library receives it: plain
API calls, the outer batch response and each inner batch response, and the token endpoint's answer.

For an API response it finds the discovery method by HTTP method and path (the method's
`flatPath`), then validates:
  * 2xx bodies against the method's `response.$ref` schema: `$ref`s followed, JSON types checked
    (int64/uint64 must be JSON strings of digits, int32/uint32 JSON integers in range), enums,
    array items, `additionalProperties` maps, a resource's `kind` equal to the schema's default,
    RFC 3339 text in the output-only time fields, no `null`s, and no property the schema does not
    declare;
  * 204 No Content only for methods that declare no response, with an empty body;
  * 4xx/5xx bodies against Google's error envelope
    `{"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}` (code equal to
    the HTTP status; optional `status` a google.rpc code that maps to it);
  * batch responses: multipart/mixed, one `application/http` part per request, answered by
    `Content-ID: <response-ID>`, each inner body checked as above;
  * /token answers as OAuth 2.0 token responses or OAuth error bodies.
"""

from __future__ import annotations

import email.parser
import json
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httplib2

# google.rpc.Code names an HTTP status may carry in `error.status` (Google's HTTP mapping).
RPC_STATUS_FOR_HTTP = {
    400: {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE"},
    401: {"UNAUTHENTICATED"},
    403: {"PERMISSION_DENIED", "RESOURCE_EXHAUSTED"},
    404: {"NOT_FOUND"},
    405: {"INVALID_ARGUMENT", "UNIMPLEMENTED"},
    409: {"ALREADY_EXISTS", "ABORTED"},
    412: {"FAILED_PRECONDITION"},
    429: {"RESOURCE_EXHAUSTED"},
    499: {"CANCELLED"},
    500: {"INTERNAL", "UNKNOWN", "DATA_LOSS"},
    501: {"UNIMPLEMENTED"},
    503: {"UNAVAILABLE"},
    504: {"DEADLINE_EXCEEDED"},
}
ERROR_KEYS = {"code", "message", "errors", "status", "details"}
ERROR_ITEM_REQUIRED = {"domain", "reason", "message"}
ERROR_ITEM_OPTIONAL = {"location", "locationType", "extendedHelp", "sendReport", "debugInfo"}
TOKEN_KEYS = {"access_token", "expires_in", "token_type", "id_token", "scope", "refresh_token"}

# Output-only time fields Compute fills with RFC 3339 text (the schema only says "string").
TIME_FIELDS = {"creationTimestamp", "insertTime", "startTime", "endTime", "lastStartTimestamp",
               "lastStopTimestamp", "lastSuspendedTimestamp"}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")

INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
STRING_INT_FORMATS = {"int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}


# --------------------------------------------------------------------------- discovery index


@dataclass(frozen=True)
class Method:
    id: str
    http_method: str
    flat_path: str
    response_ref: str | None
    literal_chars: int
    regex: re.Pattern


def _template_regex(template: str) -> tuple[re.Pattern, int]:
    pattern, literal = [], 0
    for piece in re.split(r"(\{\+?[^}]+\})", template):
        if not piece:
            continue
        if piece.startswith("{+"):
            pattern.append(r".+")
        elif piece.startswith("{"):
            pattern.append(r"[^/]+")
        else:
            pattern.append(re.escape(piece))
            literal += len(piece)
    return re.compile("".join(pattern) + r"\Z"), literal


class Discovery:
    """The methods and schemas of one discovery document."""

    def __init__(self, doc: dict):
        self.doc = doc
        self.schemas: dict = doc["schemas"]
        self.service_path: str = doc["servicePath"]  # "compute/v1/"
        self.methods: list[Method] = []
        self.by_id: dict[str, Method] = {}
        self._collect(doc)

    def _collect(self, node: dict) -> None:
        for desc in node.get("methods", {}).values():
            path = desc.get("flatPath") or desc["path"]
            regex, literal = _template_regex(path)
            method = Method(
                id=desc["id"],
                http_method=desc["httpMethod"],
                flat_path=path,
                response_ref=(desc.get("response") or {}).get("$ref"),
                literal_chars=literal,
                regex=regex,
            )
            self.methods.append(method)
            self.by_id[method.id] = method
        for child in node.get("resources", {}).values():
            self._collect(child)

    def match(self, http_method: str, rel_path: str) -> Method | None:
        """The discovery method serving `http_method rel_path` (path after the service path)."""
        found = [
            m
            for m in self.methods
            if m.http_method == http_method.upper() and m.regex.match(rel_path)
        ]
        if not found:
            return None
        found.sort(key=lambda m: m.literal_chars, reverse=True)
        if len(found) > 1 and found[0].literal_chars == found[1].literal_chars:
            raise LookupError(
                f"ambiguous discovery match for {http_method} {rel_path}: "
                f"{[m.id for m in found]}"
            )
        return found[0]


# --------------------------------------------------------------------------- validators


def validate_schema(value, schema: dict, schemas: dict, at: str, problems: list[str]) -> None:
    """Appends to `problems` every way `value` departs from discovery `schema`."""
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref not in schemas:
            problems.append(f"{at}: schema $ref {ref!r} is not in the discovery document")
            return
        validate_schema(value, schemas[ref], schemas, at, problems)
        return
    if value is None:
        problems.append(f"{at}: null (Google omits unset fields instead of sending null)")
        return
    kind = schema.get("type")
    fmt = schema.get("format")
    if kind == "any":
        return
    if kind == "object" or (kind is None and ("properties" in schema or "additionalProperties" in schema)):
        if not isinstance(value, dict):
            problems.append(f"{at}: expected object, got {type(value).__name__} {value!r:.80}")
            return
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props and key in props:
                validate_schema(item, props[key], schemas, f"{at}.{key}", problems)
            elif extra is not None:
                validate_schema(item, extra, schemas, f"{at}[{key!r}]", problems)
            elif props is None and extra is None:
                pass  # a free-form object
            else:
                schema_name = schema.get("id", "object")
                problems.append(
                    f"{at}.{key}: property not declared in schema {schema_name} "
                    f"(value {json.dumps(item)[:80]})"
                )
        for key in TIME_FIELDS.intersection(value):
            if isinstance(value[key], str) and not RFC3339.fullmatch(value[key]):
                problems.append(f"{at}.{key}: {value[key]!r} is not an RFC 3339 timestamp")
        if props and "kind" in props and "kind" in value:
            default = props["kind"].get("default")
            if default and value["kind"] != default:
                problems.append(f"{at}.kind: {value['kind']!r}, schema says {default!r}")
        return
    if kind == "array":
        if not isinstance(value, list):
            problems.append(f"{at}: expected array, got {type(value).__name__} {value!r:.80}")
            return
        items = schema.get("items", {})
        for i, item in enumerate(value):
            validate_schema(item, items, schemas, f"{at}[{i}]", problems)
        return
    if kind == "string":
        if not isinstance(value, str):
            problems.append(
                f"{at}: expected a JSON string"
                + (f" (format {fmt})" if fmt else "")
                + f", got {type(value).__name__} {value!r:.80}"
            )
            return
        if fmt in STRING_INT_FORMATS:
            lo, hi = STRING_INT_FORMATS[fmt]
            if not re.fullmatch(r"-?\d+", value) or not lo <= int(value) <= hi:
                problems.append(f"{at}: {value!r} is not a {fmt} in decimal")
        enum = schema.get("enum")
        if enum is not None and value not in enum:
            problems.append(f"{at}: {value!r} is not one of the enum values {enum}")
        return
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{at}: expected a JSON integer ({fmt}), got {type(value).__name__} {value!r:.80}")
            return
        if fmt in INT_RANGES:
            lo, hi = INT_RANGES[fmt]
            if not lo <= value <= hi:
                problems.append(f"{at}: {value} is out of the {fmt} range")
        return
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{at}: expected a JSON number, got {type(value).__name__} {value!r:.80}")
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{at}: expected a JSON boolean, got {type(value).__name__} {value!r:.80}")
        return
    problems.append(f"{at}: schema has no usable type: {json.dumps(schema)[:120]}")


def validate_error(body, http_status: int, problems: list[str], at: str = "$") -> None:
    """Google's JSON error envelope, as Compute v1 sends it."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        problems.append(f"{at}: an error body must be exactly {{\"error\": {{...}}}}, got keys {list(body) if isinstance(body, dict) else type(body).__name__}")
        return
    err = body["error"]
    if not isinstance(err, dict):
        problems.append(f"{at}.error: not an object")
        return
    for key in set(err) - ERROR_KEYS:
        problems.append(f"{at}.error.{key}: not a field of Google's error envelope")
    code = err.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        problems.append(f"{at}.error.code: missing or not an integer: {code!r}")
    elif code != http_status:
        problems.append(f"{at}.error.code: {code} differs from the HTTP status {http_status}")
    if not isinstance(err.get("message"), str) or not err.get("message"):
        problems.append(f"{at}.error.message: missing or empty")
    errors = err.get("errors")
    if not isinstance(errors, list) or not errors:
        problems.append(f"{at}.error.errors: missing or empty (Compute always sends it)")
    else:
        for i, item in enumerate(errors):
            where = f"{at}.error.errors[{i}]"
            if not isinstance(item, dict):
                problems.append(f"{where}: not an object")
                continue
            for key in ERROR_ITEM_REQUIRED:
                if not isinstance(item.get(key), str) or not item.get(key):
                    problems.append(f"{where}.{key}: missing or not a non-empty string")
            for key in set(item) - ERROR_ITEM_REQUIRED - ERROR_ITEM_OPTIONAL:
                problems.append(f"{where}.{key}: not a field of Google's error items")
    if "status" in err:
        allowed = RPC_STATUS_FOR_HTTP.get(http_status)
        if not isinstance(err["status"], str) or (allowed and err["status"] not in allowed):
            problems.append(f"{at}.error.status: {err['status']!r} does not map to HTTP {http_status}")
    if "details" in err:
        details = err["details"]
        if not isinstance(details, list) or any(
            not isinstance(d, dict) or not isinstance(d.get("@type"), str) for d in details
        ):
            problems.append(f"{at}.error.details: must be a list of objects with '@type'")


def validate_token_response(status: int, body, problems: list[str]) -> None:
    """OAuth 2.0 token endpoint answers (RFC 6749 §5.1/§5.2), as Google's sends them."""
    if not isinstance(body, dict):
        problems.append("token response: not a JSON object")
        return
    if status == 200:
        for key in set(body) - TOKEN_KEYS:
            problems.append(f"token response: unexpected field {key!r}")
        if not isinstance(body.get("access_token"), str) or not body.get("access_token"):
            problems.append("token response: access_token missing")
        exp = body.get("expires_in")
        if isinstance(exp, bool) or not isinstance(exp, int) or exp <= 0:
            problems.append(f"token response: expires_in must be a positive integer, got {exp!r}")
        if body.get("token_type") != "Bearer":
            problems.append(f"token response: token_type {body.get('token_type')!r}, expected 'Bearer'")
    else:
        if not isinstance(body.get("error"), str):
            problems.append(f"token error response ({status}): 'error' must be an OAuth error code string")
        for key in set(body) - {"error", "error_description", "error_uri"}:
            problems.append(f"token error response: unexpected field {key!r}")


# --------------------------------------------------------------------------- recorder


@dataclass
class Checked:
    """One response body that was checked."""

    where: str  # test node id
    request: str  # "GET /compute/v1/..." (with "batch[i]" for inner responses)
    status: int
    expected: str  # schema name, "error envelope" or "token response"
    problems: list[str] = field(default_factory=list)
    reported: bool = False  # shown in a test's failure already


class Recorder:
    def __init__(self, discovery: Discovery):
        self.discovery = discovery
        self.bases: set[str] = set()  # "http://127.0.0.1:PORT"
        self.checked: list[Checked] = []
        self.current = "<session setup>"
        self._lock = threading.Lock()

    # -- results
    @property
    def invalid(self) -> list[Checked]:
        return [c for c in self.checked if c.problems]

    def by_schema(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.checked:
            out[c.expected] = out.get(c.expected, 0) + 1
        return out

    def _add(self, checked: Checked) -> Checked:
        with self._lock:
            self.checked.append(checked)
        return checked

    # -- entry point from the transport
    def observe(self, method: str, uri: str, req_headers, req_body, resp, content: bytes) -> None:
        parts = urlsplit(uri)
        base = f"{parts.scheme}://{parts.netloc}"
        label = f"{method} {parts.path}{'?' + parts.query if parts.query else ''}"
        if base not in self.bases:
            self._add(Checked(self.current, label, resp.status, "request to the emulator",
                              [f"request went to {base}, not to an emulator ({sorted(self.bases)})"]))
            return
        if parts.path == "/token":
            problems: list[str] = []
            body = self._json(resp, content, problems)
            if body is not None:
                validate_token_response(resp.status, body, problems)
            self._add(Checked(self.current, label, resp.status, "token response", problems))
        elif parts.path.rstrip("/") == "/batch/" + self.discovery.service_path.rstrip("/"):
            self._observe_batch(label, req_headers or {}, req_body, resp, content)
        else:
            # A long GET travels as POST with X-HTTP-Method-Override: the server answers the GET.
            override = {k.lower(): v for k, v in (req_headers or {}).items()}.get("x-http-method-override")
            effective = override.upper() if override and method.upper() == "POST" else method
            self.check_api(label, effective, parts.path, resp.status,
                           resp.get("content-type", ""), content)

    @staticmethod
    def _json(resp_or_status, content: bytes, problems: list[str], content_type: str | None = None):
        ctype = content_type if content_type is not None else resp_or_status.get("content-type", "")
        if not ctype.lower().startswith("application/json"):
            problems.append(f"Content-Type {ctype!r}, expected application/json")
        try:
            return json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(f"body is not JSON ({err}): {content[:120]!r}")
            return None

    def check_api(self, label: str, method: str, path: str, status: int, content_type: str,
                  content: bytes) -> Checked:
        """Validates one API response body (direct or inside a batch)."""
        problems: list[str] = []
        prefix = "/" + self.discovery.service_path
        if status == 204:
            # No Content: only for methods without a response body (operations.delete).
            found = self.discovery.match(method, path[len(prefix):]) if path.startswith(prefix) else None
            if content.strip():
                problems.append(f"204 No Content with a body: {content[:120]!r}")
            if found is None or found.response_ref:
                problems.append(f"204 for {found.id if found else path}, which returns "
                                f"{found.response_ref if found else '?'}")
            return self._add(Checked(self.current, f"{label} [{found.id if found else '?'}]",
                                     status, "(empty response)", problems))
        body = self._json(None, content, problems, content_type=content_type)
        if status >= 300:
            if body is not None:
                validate_error(body, status, problems)
            return self._add(Checked(self.current, label, status, "error envelope", problems))
        if not path.startswith(prefix):
            problems.append(f"path does not start with {prefix}")
            return self._add(Checked(self.current, label, status, "?", problems))
        try:
            found = self.discovery.match(method, path[len(prefix):])
        except LookupError as err:
            problems.append(str(err))
            found = None
        if found is None:
            problems.append(f"no discovery method serves {method} {path}")
            return self._add(Checked(self.current, label, status, "?", problems))
        expected = found.response_ref or "(empty response)"
        if body is not None:
            if found.response_ref:
                validate_schema(body, {"$ref": found.response_ref}, self.discovery.schemas, "$", problems)
            elif body != {}:
                problems.append(f"{found.id} declares no response body, got {json.dumps(body)[:120]}")
        return self._add(Checked(self.current, f"{label} [{found.id}]", status, expected, problems))

    def _observe_batch(self, label, req_headers, req_body, resp, content: bytes) -> None:
        problems: list[str] = []
        if resp.status >= 300:
            body = self._json(resp, content, problems)
            if body is not None:
                validate_error(body, resp.status, problems)
            self._add(Checked(self.current, label, resp.status, "error envelope", problems))
            return
        # The requests, by Content-ID.
        req_ctype = {k.lower(): v for k, v in dict(req_headers).items()}.get("content-type", "")
        if isinstance(req_body, str):
            req_body = req_body.encode("utf-8")
        outer_req = email.parser.BytesParser().parsebytes(
            b"content-type: " + req_ctype.encode() + b"\r\n\r\n" + (req_body or b"")
        )
        requests: dict[str, tuple[str, str]] = {}
        for part in outer_req.get_payload():
            cid = (part["Content-ID"] or "").strip()
            line = part.get_payload().split("\n", 1)[0].strip()
            http_method, target, _version = line.split(" ", 2)
            requests[cid.strip("<>")] = (http_method, target)
        # The responses.
        ctype = resp.get("content-type", "")
        if not ctype.lower().startswith("multipart/mixed") or "boundary=" not in ctype:
            problems.append(f"batch response Content-Type {ctype!r}, expected multipart/mixed; boundary=...")
            self._add(Checked(self.current, label, resp.status, "multipart/mixed batch", problems))
            return
        outer = email.parser.BytesParser().parsebytes(
            b"content-type: " + ctype.encode() + b"\r\n\r\n" + content
        )
        if not outer.is_multipart():
            problems.append("batch response is not multipart")
            self._add(Checked(self.current, label, resp.status, "multipart/mixed batch", problems))
            return
        seen: set[str] = set()
        for index, part in enumerate(outer.get_payload()):
            where = f"{label} part {index}"
            cid = (part["Content-ID"] or "").strip().strip("<>")
            if not cid.startswith("response-"):
                problems.append(f"{where}: Content-ID {cid!r} is not 'response-<request Content-ID>'")
                continue
            req_id = cid[len("response-"):]
            if req_id not in requests:
                problems.append(f"{where}: Content-ID {cid!r} answers no request")
                continue
            if req_id in seen:
                problems.append(f"{where}: request {req_id!r} answered twice")
            seen.add(req_id)
            if part.get_content_type() != "application/http":
                problems.append(f"{where}: part Content-Type {part.get_content_type()!r}, expected application/http")
            payload = part.get_payload(decode=False)
            if isinstance(payload, list):
                problems.append(f"{where}: nested multipart payload")
                continue
            status_line, _, rest = payload.partition("\n")
            m = re.match(r"HTTP/1\.1 (\d{3})(?: .*)?$", status_line.strip())
            if not m:
                problems.append(f"{where}: bad status line {status_line!r}")
                continue
            inner = email.parser.Parser().parsestr(rest)
            inner_body = inner.get_payload()
            http_method, target = requests[req_id]
            path = urlsplit(target).path
            self.check_api(f"batch[{req_id.rsplit('+', 1)[-1].strip()}] {http_method} {target}", http_method, path,
                           int(m.group(1)), inner.get("Content-Type", ""), inner_body.encode("utf-8"))
        for req_id in set(requests) - seen:
            problems.append(f"request {req_id!r} got no response part")
        self._add(Checked(self.current, label, resp.status, "multipart/mixed batch", problems))


class RecordingHttp(httplib2.Http):
    """`httplib2.Http` that hands every response to a `Recorder`."""

    def __init__(self, recorder: Recorder, **kwargs):
        super().__init__(**kwargs)
        self.recorder = recorder

    def request(self, uri, method="GET", body=None, headers=None, *args, **kwargs):
        resp, content = super().request(uri, method, body, headers, *args, **kwargs)
        self.recorder.observe(method, uri, headers, body, resp, content)
        return resp, content
