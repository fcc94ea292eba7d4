//! Codec for Google's HTTP batch format (`POST /batch/compute/v1`), shared by gce-emulator and
//! the operator's Compute client.
//!
//! A batch body is `multipart/mixed`; every part has `Content-Type: application/http` and holds one
//! whole HTTP/1.1 message. The module serves both directions: the emulator parses batch requests
//! and encodes batch responses, and a client encodes batch requests and parses batch responses.
//!
//! Parsing is lenient about framing (CRLF, bare LF or both, preamble, epilogue, transport padding,
//! folded headers, a missing closing delimiter at end of input) and strict about content (the part
//! must be `application/http`, the request target must be a path). It never panics, runs in time
//! linear in the input (times the boundary length, at most 72) and allocates no more than the input
//! size, except for gzip decoding, which is capped at [`MAX_DECODED_BODY`] bytes per message.
//!
//! Content-IDs are stored as the text between the angle brackets: a request part with
//! `Content-ID: <abc + 1>` has `content_id == Some("abc + 1")`; its response part carries
//! `Content-ID: <response-abc + 1>`, and [`parse_responses`] strips the `response-` prefix again, so
//! on both sides an [`InnerResponse`] has the `content_id` of the request it answers.

use std::borrow::Cow;
use std::io::Read;

/// Largest body, in bytes, that gzip decoding of one inner message may produce.
pub const MAX_DECODED_BODY: usize = 32 * 1024 * 1024;

/// Header list of an inner message: `(name, value)` pairs in order.
type Headers = Vec<(String, String)>;

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY_LEN: usize = 70;

/// Content-Type written for inner responses that carry none.
const DEFAULT_RESPONSE_CONTENT_TYPE: &str = "application/json; charset=UTF-8";

/// Longest excerpt of offending input quoted in an error message, in characters.
const SNIPPET_CHARS: usize = 120;

/// One HTTP request carried in a batch part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InnerRequest {
    /// Content-ID of the part without angle brackets (e.g. `uuid+0` or `uuid + 1`).
    pub content_id: Option<String>,
    /// HTTP method as sent, e.g. `GET`.
    pub method: String,
    /// Request target: an absolute path plus optional query, e.g. `/compute/v1/projects/p?alt=json`.
    pub path_and_query: String,
    /// Inner headers in order; names as sent, values unfolded and trimmed.
    pub headers: Vec<(String, String)>,
    /// Body bytes, already gzip-decoded.
    pub body: Vec<u8>,
}

impl InnerRequest {
    /// First value of the named header, looked up case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// One HTTP response carried in a batch part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InnerResponse {
    /// Content-ID of the request this answers, without brackets and without the `response-` prefix.
    pub content_id: Option<String>,
    /// HTTP status code (100..=999).
    pub status: u16,
    /// Inner headers in order; names as sent, values unfolded and trimmed.
    pub headers: Vec<(String, String)>,
    /// Body bytes, already gzip-decoded.
    pub body: Vec<u8>,
}

impl InnerResponse {
    /// First value of the named header, looked up case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Why a batch body or its Content-Type could not be parsed; part numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum MultipartError {
    /// The batch Content-Type is not `multipart/mixed`.
    #[error("batch Content-Type must be multipart/mixed, got {0:?}")]
    NotMultipart(String),
    /// The batch Content-Type has no `boundary` parameter.
    #[error("batch Content-Type {0:?} has no boundary parameter")]
    MissingBoundary(String),
    /// The `boundary` parameter is not a usable RFC 2046 boundary.
    #[error("invalid multipart boundary {boundary:?}: {reason}")]
    InvalidBoundary {
        /// The boundary as given (possibly shortened).
        boundary: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The body holds no part: no `--boundary` line, or the first one is the closing one.
    #[error("batch body contains no parts delimited by \"--{boundary}\"")]
    NoParts {
        /// The boundary that was searched for.
        boundary: String,
    },
    /// A part between two delimiters is empty.
    #[error("batch part {part} is empty")]
    EmptyPart {
        /// Part number.
        part: usize,
    },
    /// A part's Content-Type is missing or not `application/http`.
    #[error("batch part {part}: Content-Type must be application/http, got {found}")]
    WrongContentType {
        /// Part number.
        part: usize,
        /// The Content-Type found, or `none`.
        found: String,
    },
    /// A part's Content-Transfer-Encoding is one this codec does not decode.
    #[error("batch part {part}: unsupported Content-Transfer-Encoding {encoding:?} (use binary)")]
    UnsupportedTransferEncoding {
        /// Part number.
        part: usize,
        /// The encoding found.
        encoding: String,
    },
    /// A header line (of the part or of the inner message) is malformed.
    #[error("batch part {part}: malformed {section} line {line:?}")]
    BadHeader {
        /// Part number.
        part: usize,
        /// `part header` or `HTTP header`.
        section: &'static str,
        /// The offending line (possibly shortened).
        line: String,
    },
    /// A part has no inner HTTP message.
    #[error("batch part {part} has no HTTP message: {detail}")]
    MissingMessage {
        /// Part number.
        part: usize,
        /// What was missing.
        detail: &'static str,
    },
    /// An inner request line uses a full URL instead of a path.
    #[error(
        "batch part {part}: request line {line:?} uses a full URL; batched requests must use a path such as /compute/v1/projects/..."
    )]
    FullUrl {
        /// Part number.
        part: usize,
        /// The request line (possibly shortened).
        line: String,
    },
    /// An inner request line is not `METHOD /path HTTP/1.1`.
    #[error("batch part {part}: malformed HTTP request line {line:?}: {reason}")]
    BadRequestLine {
        /// Part number.
        part: usize,
        /// The request line (possibly shortened).
        line: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An inner status line is not `HTTP/1.1 200 OK`.
    #[error("batch part {part}: malformed HTTP status line {line:?}: {reason}")]
    BadStatusLine {
        /// Part number.
        part: usize,
        /// The status line (possibly shortened).
        line: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An inner Content-Length is not a decimal number.
    #[error("batch part {part}: invalid Content-Length {value:?}")]
    BadContentLength {
        /// Part number.
        part: usize,
        /// The header value (possibly shortened).
        value: String,
    },
    /// An inner Content-Encoding other than gzip/identity.
    #[error("batch part {part}: unsupported Content-Encoding {encoding:?} (only gzip)")]
    UnsupportedContentEncoding {
        /// Part number.
        part: usize,
        /// The encoding found.
        encoding: String,
    },
    /// A gzip-encoded inner body could not be decoded.
    #[error("batch part {part}: gzip body could not be decoded: {source}")]
    BadGzip {
        /// Part number.
        part: usize,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// A gzip-encoded inner body decodes to more than the allowed size.
    #[error("batch part {part}: gzip body decodes to more than {limit} bytes")]
    BodyTooLarge {
        /// Part number.
        part: usize,
        /// The size limit in bytes.
        limit: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Content-Type and Content-ID helpers
// ---------------------------------------------------------------------------------------------

/// Extracts the boundary of a `multipart/mixed` Content-Type (quoted or not, any parameter order).
pub fn boundary_from_content_type(content_type: &str) -> Result<String, MultipartError> {
    let (media, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !media.trim().eq_ignore_ascii_case("multipart/mixed") {
        return Err(MultipartError::NotMultipart(snippet_str(content_type)));
    }
    let boundary = media_params(params)
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value)
        .ok_or_else(|| MultipartError::MissingBoundary(snippet_str(content_type)))?;
    let invalid = |reason| MultipartError::InvalidBoundary {
        boundary: snippet_str(&boundary),
        reason,
    };
    if boundary.is_empty() {
        return Err(invalid("it is empty"));
    }
    if boundary.len() > MAX_BOUNDARY_LEN {
        return Err(invalid("it is longer than 70 characters"));
    }
    if !boundary.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid("it contains characters other than printable ASCII"));
    }
    if boundary.ends_with(' ') {
        return Err(invalid("it ends with a space"));
    }
    Ok(boundary)
}

/// Parses the `; name=value` parameters of a media type (quoted strings with `\` escapes allowed).
fn media_params(params: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = params.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ';' || c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ';') {
            name.push(c);
        }
        if chars.next_if_eq(&'=').is_none() {
            continue; // a parameter without a value
        }
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None | Some('"') => break,
                    Some('\\') => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
            while chars.next_if(|c| *c != ';').is_some() {}
        } else {
            while let Some(c) = chars.next_if(|c| *c != ';') {
                value.push(c);
            }
            value.truncate(value.trim_end().len());
        }
        out.push((name.trim().to_owned(), value));
    }
    out
}

/// The text inside a Content-ID: trimmed, one `<` and one `>` stripped, trimmed again.
fn bare_content_id(value: &str) -> &str {
    let v = value.trim();
    let v = v.strip_prefix('<').unwrap_or(v);
    let v = v.strip_suffix('>').unwrap_or(v);
    v.trim()
}

/// The bare Content-ID of a header value, `None` when empty.
fn parse_content_id(value: &str) -> Option<String> {
    let bare = bare_content_id(value);
    (!bare.is_empty()).then(|| bare.to_owned())
}

/// Content-ID header value answering a request ID: `"<abc+1>"` or `"abc+1"` -> `"<response-abc+1>"`.
pub fn response_content_id(request_id: &str) -> String {
    format!("<response-{}>", bare_content_id(request_id))
}

/// Request ID a response Content-ID answers: `"<response-abc+1>"` -> `"abc+1"`; `None` without the prefix.
pub fn request_content_id(response_id: &str) -> Option<String> {
    const PREFIX: &str = "response-";
    let bare = bare_content_id(response_id);
    let prefix = bare.get(..PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = bare.get(PREFIX.len()..)?.trim();
    (!rest.is_empty()).then(|| rest.to_owned())
}

/// A fresh random boundary: `batch_` followed by 32 lowercase hex digits.
pub fn new_boundary() -> String {
    format!("batch_{}", uuid::Uuid::new_v4().simple())
}

/// Standard reason phrase for a status code (a generic one per class for unknown codes).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Entity",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Unknown",
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses a batch request body into its inner requests (server side).
pub fn parse_requests(
    content_type: &str,
    body: &[u8],
) -> Result<Vec<InnerRequest>, MultipartError> {
    let boundary = boundary_from_content_type(content_type)?;
    split_parts(&boundary, body)?
        .into_iter()
        .enumerate()
        .map(|(i, data)| parse_request_part(i + 1, data))
        .collect()
}

/// Parses a batch response body into its inner responses (client side).
pub fn parse_responses(
    content_type: &str,
    body: &[u8],
) -> Result<Vec<InnerResponse>, MultipartError> {
    let boundary = boundary_from_content_type(content_type)?;
    split_parts(&boundary, body)?
        .into_iter()
        .enumerate()
        .map(|(i, data)| parse_response_part(i + 1, data))
        .collect()
}

/// A delimiter line found in the body.
struct Delimiter {
    /// Offset of its leading `--`.
    start: usize,
    /// Offset just after its line break (or the end of input).
    end: usize,
    /// Whether it is the closing `--boundary--`.
    closing: bool,
}

/// Splits a multipart body into the raw bytes of its parts (each still ending with the line break
/// that precedes the next delimiter).
fn split_parts<'a>(boundary: &str, body: &'a [u8]) -> Result<Vec<&'a [u8]>, MultipartError> {
    let mut delimiter = Vec::with_capacity(boundary.len() + 2);
    delimiter.extend_from_slice(b"--");
    delimiter.extend_from_slice(boundary.as_bytes());

    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut search = 0;
    while let Some(found) = find_delimiter(body, &delimiter, search) {
        if let Some(start) = current {
            parts.push(body.get(start..found.start).unwrap_or_default());
        }
        if found.closing {
            current = None;
            break;
        }
        current = Some(found.end);
        search = found.end;
    }
    // No closing delimiter: the last part runs to the end of input, unless nothing is left.
    if let Some(start) = current {
        let rest = body.get(start..).unwrap_or_default();
        if !rest.iter().all(u8::is_ascii_whitespace) {
            parts.push(rest);
        }
    }
    if parts.is_empty() {
        return Err(MultipartError::NoParts {
            boundary: snippet_str(boundary),
        });
    }
    Ok(parts)
}

/// Finds the next delimiter line at or after `from`, which must be a line start.
fn find_delimiter(body: &[u8], delimiter: &[u8], from: usize) -> Option<Delimiter> {
    let mut pos = from;
    while pos < body.len() {
        if let Some(found) = delimiter_at(body, delimiter, pos) {
            return Some(found);
        }
        let newline = body.get(pos..)?.iter().position(|&b| b == b'\n')?;
        pos += newline + 1;
    }
    None
}

/// Checks whether a delimiter line starts at `pos` (a line start).
fn delimiter_at(body: &[u8], delimiter: &[u8], pos: usize) -> Option<Delimiter> {
    let rest = body.get(pos..)?;
    if !rest.starts_with(delimiter) {
        return None;
    }
    let after = rest.get(delimiter.len()..)?;
    if after.starts_with(b"--") {
        return Some(Delimiter {
            start: pos,
            end: body.len(),
            closing: true,
        });
    }
    let padding = after
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(after.len());
    let tail = after.get(padding..)?;
    let line_break = if tail.is_empty() || tail == b"\r" {
        tail.len()
    } else if tail.starts_with(b"\n") {
        1
    } else if tail.starts_with(b"\r\n") {
        2
    } else {
        return None; // the boundary is only a prefix of something longer
    };
    Some(Delimiter {
        start: pos,
        end: pos + delimiter.len() + padding + line_break,
        closing: false,
    })
}

/// The part headers and the inner message of one part.
struct OuterPart<'a> {
    /// Bare Content-ID, if any.
    content_id: Option<String>,
    /// The inner HTTP message bytes.
    message: &'a [u8],
}

/// Parses the part headers and checks them.
fn parse_outer(part: usize, data: &[u8]) -> Result<OuterPart<'_>, MultipartError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(MultipartError::EmptyPart { part });
    }
    let block = parse_headers(part, "part header", data, 0)?;
    match find_header(&block.headers, "content-type") {
        None => {
            return Err(MultipartError::WrongContentType {
                part,
                found: "none".to_owned(),
            });
        }
        Some(ct) => {
            let media = ct.split(';').next().unwrap_or_default().trim();
            if !media.eq_ignore_ascii_case("application/http") {
                return Err(MultipartError::WrongContentType {
                    part,
                    found: format!("{:?}", snippet_str(ct)),
                });
            }
        }
    }
    if let Some(encoding) = find_header(&block.headers, "content-transfer-encoding") {
        let ok = ["binary", "8bit", "7bit"]
            .iter()
            .any(|e| encoding.eq_ignore_ascii_case(e));
        if !ok {
            return Err(MultipartError::UnsupportedTransferEncoding {
                part,
                encoding: snippet_str(encoding),
            });
        }
    }
    if !block.terminated {
        return Err(MultipartError::MissingMessage {
            part,
            detail: "the part headers are not followed by a blank line",
        });
    }
    Ok(OuterPart {
        content_id: find_header(&block.headers, "content-id").and_then(parse_content_id),
        message: data.get(block.end..).unwrap_or_default(),
    })
}

/// Parses one part of a batch request.
fn parse_request_part(part: usize, data: &[u8]) -> Result<InnerRequest, MultipartError> {
    let outer = parse_outer(part, data)?;
    let message = outer.message;
    let start = skip_blank_lines(message, 0);
    if start >= message.len() {
        return Err(MultipartError::MissingMessage {
            part,
            detail: "no request line after the part headers",
        });
    }
    let (line, next) = next_line(message, start);
    let (method, path_and_query) = parse_request_line(part, line)?;
    let block = parse_headers(part, "HTTP header", message, next)?;
    let (headers, body) = finish_message(
        part,
        block.headers,
        message.get(block.end..).unwrap_or_default(),
    )?;
    Ok(InnerRequest {
        content_id: outer.content_id,
        method,
        path_and_query,
        headers,
        body,
    })
}

/// Parses one part of a batch response.
fn parse_response_part(part: usize, data: &[u8]) -> Result<InnerResponse, MultipartError> {
    let outer = parse_outer(part, data)?;
    let message = outer.message;
    let start = skip_blank_lines(message, 0);
    if start >= message.len() {
        return Err(MultipartError::MissingMessage {
            part,
            detail: "no status line after the part headers",
        });
    }
    let (line, next) = next_line(message, start);
    let status = parse_status_line(part, line)?;
    let block = parse_headers(part, "HTTP header", message, next)?;
    let (headers, body) = finish_message(
        part,
        block.headers,
        message.get(block.end..).unwrap_or_default(),
    )?;
    let content_id = outer
        .content_id
        .map(|id| request_content_id(&id).unwrap_or(id));
    Ok(InnerResponse {
        content_id,
        status,
        headers,
        body,
    })
}

/// Parses `METHOD /path?query HTTP/1.1` into method and target.
fn parse_request_line(part: usize, line: &[u8]) -> Result<(String, String), MultipartError> {
    let bad = |reason| MultipartError::BadRequestLine {
        part,
        line: snippet(line),
        reason,
    };
    let text = std::str::from_utf8(line).map_err(|_| bad("it is not valid UTF-8"))?;
    let mut words = text.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(bad("expected METHOD /path HTTP/1.1"));
    };
    if !method.bytes().all(is_tchar) {
        return Err(bad("the method is not an HTTP token"));
    }
    if !target.starts_with('/') {
        if target.contains("://") {
            return Err(MultipartError::FullUrl {
                part,
                line: snippet(line),
            });
        }
        return Err(bad("the request target must be a path starting with /"));
    }
    if !version.starts_with("HTTP/") {
        return Err(bad("the HTTP version must look like HTTP/1.1"));
    }
    Ok((method.to_owned(), target.to_owned()))
}

/// Parses `HTTP/1.1 200 OK` into the status code.
fn parse_status_line(part: usize, line: &[u8]) -> Result<u16, MultipartError> {
    let bad = |reason| MultipartError::BadStatusLine {
        part,
        line: snippet(line),
        reason,
    };
    let text = String::from_utf8_lossy(line);
    let text = text.trim_start();
    let (version, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !version.starts_with("HTTP/") {
        return Err(bad("expected HTTP/1.1 followed by a status code"));
    }
    let rest = rest.trim_start();
    let code = rest.split([' ', '\t']).next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the status code must be three digits"));
    }
    match code.parse::<u16>() {
        Ok(status) if status >= 100 => Ok(status),
        _ => Err(bad("the status code must be between 100 and 999")),
    }
}

/// Applies Content-Length and Content-Encoding to the bytes after the inner head.
fn finish_message(
    part: usize,
    mut headers: Headers,
    region: &[u8],
) -> Result<(Headers, Vec<u8>), MultipartError> {
    let declared = match find_header(&headers, "content-length") {
        Some(value) => Some(parse_content_length(part, value)?),
        None => None,
    };
    // `region` still ends with the line break before the next delimiter; a Content-Length that
    // fits is exact, otherwise drop that line break and take the rest.
    let raw = match declared {
        Some(n) if n <= region.len() => region.get(..n).unwrap_or(region),
        _ => strip_line_break(region),
    };

    let mut codings: Vec<String> = Vec::new();
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("content-encoding") {
            codings.extend(
                value
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty() && c != "identity"),
            );
        }
    }
    if codings.is_empty() {
        return Ok((headers, raw.to_vec()));
    }
    let mut body = Cow::Borrowed(raw);
    for coding in codings.iter().rev() {
        if coding != "gzip" && coding != "x-gzip" {
            return Err(MultipartError::UnsupportedContentEncoding {
                part,
                encoding: snippet_str(coding),
            });
        }
        body = Cow::Owned(gunzip(part, &body, MAX_DECODED_BODY)?);
    }
    let body = body.into_owned();
    headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-encoding"));
    for (name, value) in &mut headers {
        if name.eq_ignore_ascii_case("content-length") {
            *value = body.len().to_string();
        }
    }
    Ok((headers, body))
}

/// Parses a Content-Length value.
fn parse_content_length(part: usize, value: &str) -> Result<usize, MultipartError> {
    let bad = || MultipartError::BadContentLength {
        part,
        value: snippet_str(value),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// Decodes gzip data, refusing to produce more than `limit` bytes.
fn gunzip(part: usize, data: &[u8], limit: usize) -> Result<Vec<u8>, MultipartError> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(data)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|source| MultipartError::BadGzip { part, source })?;
    if out.len() > limit {
        return Err(MultipartError::BodyTooLarge { part, limit });
    }
    Ok(out)
}

/// A parsed header block.
struct HeaderBlock {
    /// The headers in order, values unfolded and trimmed.
    headers: Vec<(String, String)>,
    /// Offset just after the block (after the blank line, or end of input).
    end: usize,
    /// Whether a blank line ended the block (rather than the end of input).
    terminated: bool,
}

/// Parses header lines from `pos` until a blank line or the end of `data`; folded lines are unfolded.
fn parse_headers(
    part: usize,
    section: &'static str,
    data: &[u8],
    mut pos: usize,
) -> Result<HeaderBlock, MultipartError> {
    let bad = |line: &[u8]| MultipartError::BadHeader {
        part,
        section,
        line: snippet(line),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut terminated = false;
    while pos < data.len() {
        let (line, next) = next_line(data, pos);
        pos = next;
        match line.first() {
            None => {
                terminated = true;
                break;
            }
            Some(b' ' | b'\t') => match headers.last_mut() {
                // RFC 2822 unfolding: drop the line break, keep the whitespace.
                Some((_, value)) => value.push_str(&String::from_utf8_lossy(line)),
                None => return Err(bad(line)),
            },
            Some(_) => {
                let colon = line
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or_else(|| bad(line))?;
                let (name, value) = line.split_at(colon);
                if name.is_empty() || !name.iter().copied().all(is_tchar) {
                    return Err(bad(line));
                }
                let value = value.get(1..).unwrap_or_default();
                headers.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
        }
    }
    for (_, value) in &mut headers {
        let trimmed = value.trim_matches([' ', '\t']);
        if trimmed.len() != value.len() {
            *value = trimmed.to_owned();
        }
    }
    Ok(HeaderBlock {
        headers,
        end: pos,
        terminated,
    })
}

/// Returns the line starting at `pos` (without its CRLF or LF) and the offset of the next line.
fn next_line(data: &[u8], pos: usize) -> (&[u8], usize) {
    let rest = data.get(pos..).unwrap_or_default();
    let (line, next) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (rest.get(..i).unwrap_or_default(), pos + i + 1),
        None => (rest, data.len()),
    };
    (line.strip_suffix(b"\r").unwrap_or(line), next)
}

/// Skips empty lines (CRLF or LF) starting at `pos`.
fn skip_blank_lines(data: &[u8], mut pos: usize) -> usize {
    loop {
        let rest = data.get(pos..).unwrap_or_default();
        if rest.starts_with(b"\r\n") {
            pos += 2;
        } else if rest.starts_with(b"\n") {
            pos += 1;
        } else {
            return pos;
        }
    }
}

/// Drops one trailing CRLF or LF.
fn strip_line_break(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\r\n")
        .or_else(|| data.strip_suffix(b"\n"))
        .unwrap_or(data)
}

/// Whether a byte may appear in an HTTP token (header name, method).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// First value of the named header, case-insensitively.
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Bytes quoted in an error message: lossy UTF-8, shortened.
fn snippet(bytes: &[u8]) -> String {
    let cut = bytes.get(..SNIPPET_CHARS * 4).unwrap_or(bytes);
    snippet_str(&String::from_utf8_lossy(cut))
}

/// Text quoted in an error message, shortened to [`SNIPPET_CHARS`] characters.
fn snippet_str(text: &str) -> String {
    match text.char_indices().nth(SNIPPET_CHARS) {
        Some((at, _)) => format!("{}...", text.get(..at).unwrap_or_default()),
        None => text.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Encodes inner requests as a batch request body (client side), CRLF line endings.
///
/// Bodies are written as given (gzip them yourself if a Content-Encoding header says so); any
/// Content-Length or Transfer-Encoding header is replaced by the real Content-Length.
pub fn encode_requests(boundary: &str, parts: &[InnerRequest]) -> Vec<u8> {
    encode_requests_with(boundary, parts, "\r\n")
}

/// Encodes inner responses as a batch response body (server side), CRLF line endings.
///
/// Each part echoes `Content-ID: <response-ID>`; a response without Content-Type gets
/// `application/json; charset=UTF-8`; Content-Length is always written.
pub fn encode_responses(boundary: &str, parts: &[InnerResponse]) -> Vec<u8> {
    encode_responses_with(boundary, parts, "\r\n")
}

/// [`encode_requests`] with a chosen line ending for the framing (bodies are untouched).
fn encode_requests_with(boundary: &str, parts: &[InnerRequest], eol: &str) -> Vec<u8> {
    let boundary = clean_value(boundary);
    let mut out = Vec::with_capacity(capacity(parts.iter().map(|p| &p.body)));
    for part in parts {
        push_line(&mut out, eol, &format!("--{boundary}"));
        push_line(&mut out, eol, "Content-Type: application/http");
        push_line(&mut out, eol, "MIME-Version: 1.0");
        push_line(&mut out, eol, "Content-Transfer-Encoding: binary");
        if let Some(id) = &part.content_id {
            let id = clean_value(bare_content_id(id));
            push_line(&mut out, eol, &format!("Content-ID: <{id}>"));
        }
        push_line(&mut out, eol, "");
        let method: String = part
            .method
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let target = clean_target(&part.path_and_query);
        push_line(&mut out, eol, &format!("{method} {target} HTTP/1.1"));
        push_head_and_body(&mut out, eol, &part.headers, None, &part.body);
    }
    push_line(&mut out, eol, &format!("--{boundary}--"));
    out
}

/// [`encode_responses`] with a chosen line ending for the framing (bodies are untouched).
fn encode_responses_with(boundary: &str, parts: &[InnerResponse], eol: &str) -> Vec<u8> {
    let boundary = clean_value(boundary);
    let mut out = Vec::with_capacity(capacity(parts.iter().map(|p| &p.body)));
    for part in parts {
        push_line(&mut out, eol, &format!("--{boundary}"));
        push_line(&mut out, eol, "Content-Type: application/http");
        if let Some(id) = &part.content_id {
            let id = response_content_id(id);
            push_line(&mut out, eol, &format!("Content-ID: {}", clean_value(&id)));
        }
        push_line(&mut out, eol, "");
        let status = part.status;
        let reason = reason_phrase(status);
        push_line(&mut out, eol, &format!("HTTP/1.1 {status} {reason}"));
        push_head_and_body(
            &mut out,
            eol,
            &part.headers,
            Some(DEFAULT_RESPONSE_CONTENT_TYPE),
            &part.body,
        );
    }
    push_line(&mut out, eol, &format!("--{boundary}--"));
    out
}

/// Writes inner headers, Content-Length, the blank line, the body and the line break after it.
fn push_head_and_body(
    out: &mut Vec<u8>,
    eol: &str,
    headers: &[(String, String)],
    default_content_type: Option<&str>,
    body: &[u8],
) {
    if let Some(ct) = default_content_type
        && find_header(headers, "content-type").is_none()
    {
        push_line(out, eol, &format!("Content-Type: {ct}"));
    }
    for (name, value) in headers {
        let skip = name.is_empty()
            || !name.bytes().all(is_tchar)
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if !skip {
            push_line(out, eol, &format!("{name}: {}", clean_value(value)));
        }
    }
    push_line(out, eol, &format!("Content-Length: {}", body.len()));
    push_line(out, eol, "");
    out.extend_from_slice(body);
    out.extend_from_slice(eol.as_bytes());
}

/// Appends `text` and a line ending.
fn push_line(out: &mut Vec<u8>, eol: &str, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(eol.as_bytes());
}

/// Replaces CR and LF (which would break the framing) with spaces.
fn clean_value(value: &str) -> Cow<'_, str> {
    if value.contains(['\r', '\n']) {
        Cow::Owned(value.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(value)
    }
}

/// Percent-encodes whitespace in a request target so the request line stays parseable.
fn clean_target(target: &str) -> Cow<'_, str> {
    if !target.contains(|c: char| c.is_ascii_whitespace()) {
        return Cow::Borrowed(target);
    }
    let mut out = String::with_capacity(target.len() + 8);
    for c in target.chars() {
        if c.is_ascii_whitespace() {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A capacity guess for an encoded batch: the bodies plus some framing per part.
fn capacity<'a>(bodies: impl Iterator<Item = &'a Vec<u8>>) -> usize {
    bodies.fold(64, |acc, body| {
        acc.saturating_add(body.len()).saturating_add(512)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    const GCLOUD_CT: &str = r#"multipart/mixed; boundary="===============2279194272988243142==""#;

    const GCLOUD_BODY: &str = "--===============2279194272988243142==
Content-Type: application/http
MIME-Version: 1.0
Content-Transfer-Encoding: binary
Content-ID: <8efd7e4e-8c7a-4d3c-9d75-85e156e4231d+0>

GET /compute/v1/projects/tf-playground-svpc-net?alt=json HTTP/1.1
Content-Type: application/json
MIME-Version: 1.0
content-length: 0
user-agent: google-cloud-sdk
accept: application/json
accept-encoding: gzip, deflate
Host: compute.googleapis.com

--===============2279194272988243142==--
";

    fn crlf(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn without_content_length(headers: &[(String, String)]) -> Vec<(String, String)> {
        headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
            .cloned()
            .collect()
    }

    fn request_err(ct: &str, body: &[u8]) -> String {
        parse_requests(ct, body).unwrap_err().to_string()
    }

    // ---- boundary and content ids ---------------------------------------------------------

    #[test]
    fn boundary_forms() {
        assert_eq!(
            boundary_from_content_type(GCLOUD_CT).unwrap(),
            "===============2279194272988243142=="
        );
        assert_eq!(
            boundary_from_content_type("multipart/mixed; boundary=batch_abc").unwrap(),
            "batch_abc"
        );
        assert_eq!(
            boundary_from_content_type("Multipart/MIXED;charset=utf-8;  BOUNDARY = batch_x ; q=1")
                .unwrap(),
            "batch_x"
        );
        assert_eq!(
            boundary_from_content_type(r#"multipart/mixed; a="x;boundary=no"; boundary="a\"b c""#)
                .unwrap(),
            "a\"b c"
        );
    }

    #[test]
    fn boundary_errors_name_the_problem() {
        let e = boundary_from_content_type("multipart/mixed; charset=utf-8").unwrap_err();
        assert!(matches!(e, MultipartError::MissingBoundary(_)));
        assert!(e.to_string().contains("no boundary parameter"), "{e}");

        let e = boundary_from_content_type("application/json; boundary=x").unwrap_err();
        assert!(matches!(e, MultipartError::NotMultipart(_)));
        assert!(e.to_string().contains("must be multipart/mixed"), "{e}");
        assert!(e.to_string().contains("application/json"), "{e}");

        let e = boundary_from_content_type("multipart/mixed; boundary=\"\"").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let long = format!("multipart/mixed; boundary={}", "x".repeat(71));
        let e = boundary_from_content_type(&long).unwrap_err();
        assert!(e.to_string().contains("longer than 70"), "{e}");
        let e = boundary_from_content_type("multipart/mixed; boundary=\"a\u{e9}\"").unwrap_err();
        assert!(e.to_string().contains("printable ASCII"), "{e}");
    }

    #[test]
    fn content_id_helpers() {
        assert_eq!(response_content_id("<abc+1>"), "<response-abc+1>");
        assert_eq!(response_content_id("abc+1"), "<response-abc+1>");
        assert_eq!(response_content_id(" <abc + 1> "), "<response-abc + 1>");
        assert_eq!(
            request_content_id("<response-abc+1>").as_deref(),
            Some("abc+1")
        );
        assert_eq!(
            request_content_id("response-abc + 1").as_deref(),
            Some("abc + 1")
        );
        assert_eq!(request_content_id("<abc+1>"), None);
        assert_eq!(request_content_id("<response->"), None);
        assert_eq!(request_content_id(""), None);
    }

    #[test]
    fn new_boundary_shape() {
        let b = new_boundary();
        assert_eq!(b.len(), 38);
        assert!(b.starts_with("batch_"));
        assert!(b[6..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(b, new_boundary());
        assert!(boundary_from_content_type(&format!("multipart/mixed; boundary={b}")).is_ok());
    }

    #[test]
    fn reason_phrases() {
        for (code, phrase) in [
            (200, "OK"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (409, "Conflict"),
            (412, "Precondition Failed"),
            (429, "Too Many Requests"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
            (418, "Client Error"),
            (299, "Success"),
            (999, "Unknown"),
        ] {
            assert_eq!(reason_phrase(code), phrase);
        }
    }

    // ---- requests -------------------------------------------------------------------------

    #[test]
    fn parses_gcloud_capture() {
        let reqs = parse_requests(GCLOUD_CT, GCLOUD_BODY.as_bytes()).unwrap();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(
            r.content_id.as_deref(),
            Some("8efd7e4e-8c7a-4d3c-9d75-85e156e4231d+0")
        );
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.path_and_query,
            "/compute/v1/projects/tf-playground-svpc-net?alt=json"
        );
        assert_eq!(r.header("Content-Length"), Some("0"));
        assert_eq!(r.header("HOST"), Some("compute.googleapis.com"));
        assert_eq!(r.header("accept-encoding"), Some("gzip, deflate"));
        assert_eq!(r.headers.len(), 7);
        assert!(r.body.is_empty());

        // Same capture with CRLF, preamble, epilogue and transport padding.
        let mut body = b"This is a preamble.\r\n".to_vec();
        body.extend_from_slice(&crlf(GCLOUD_BODY));
        let padded =
            String::from_utf8(body)
                .unwrap()
                .replacen("243142==\r\n", "243142==  \t\r\n", 1);
        let with_epilogue =
            format!("{padded}epilogue\r\n--===============2279194272988243142==\r\n");
        let again = parse_requests(GCLOUD_CT, with_epilogue.as_bytes()).unwrap();
        assert_eq!(again, reqs);
    }

    #[test]
    fn parses_python_client_request_with_folded_content_id() {
        let json = "{\"name\":\"vm-1\",\"description\":\"a\\r\\nb\",\"x\":\"--\"}";
        let body = format!(
            "--===============7330845974216740156==\r\n\
             Content-Type: application/http\r\n\
             MIME-Version: 1.0\r\n\
             Content-Transfer-Encoding: binary\r\n\
             Content-ID: <5f3c6a1e-2b4d-4c8e-9f10-3a2b1c0d9e8f +\r\n 1>\r\n\
             \r\n\
             POST /compute/v1/projects/p/zones/us-central1-a/instances?alt=json HTTP/1.1\r\n\
             Content-Type: application/json\r\n\
             MIME-Version: 1.0\r\n\
             Host: compute.googleapis.com\r\n\
             content-length: {}\r\n\
             \r\n\
             {json}\r\n\
             --===============7330845974216740156==--",
            json.len()
        );
        let ct = "multipart/mixed; boundary=\"===============7330845974216740156==\"";
        let reqs = parse_requests(ct, body.as_bytes()).unwrap();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(
            r.content_id.as_deref(),
            Some("5f3c6a1e-2b4d-4c8e-9f10-3a2b1c0d9e8f + 1")
        );
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.path_and_query,
            "/compute/v1/projects/p/zones/us-central1-a/instances?alt=json"
        );
        assert_eq!(r.body, json.as_bytes());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["name"], "vm-1");
    }

    #[test]
    fn content_length_bounds_a_body_with_line_breaks() {
        // The body ends in "\r\n" itself; Content-Length keeps it, and bare-LF framing works too.
        let payload = b"{\"a\":\"x\"}\r\n";
        let mut body =
            b"--b\nContent-Type: application/http\n\nPOST /p HTTP/1.1\nContent-Length: 11\n\n"
                .to_vec();
        body.extend_from_slice(payload);
        body.extend_from_slice(b"\n--b--\n");
        let reqs = parse_requests("multipart/mixed; boundary=b", &body).unwrap();
        assert_eq!(reqs[0].body, payload);

        // Without Content-Length only the line break before the delimiter is dropped.
        let body = b"--b\r\nContent-Type: application/http\r\n\r\nPOST /p HTTP/1.1\r\n\r\nline1\r\nline2\r\n\r\n--b--";
        let reqs = parse_requests("multipart/mixed; boundary=b", body).unwrap();
        assert_eq!(reqs[0].body, b"line1\r\nline2\r\n");

        // A Content-Length larger than what is there is tolerated: the bytes present are used.
        let body = b"--b\r\nContent-Type: application/http\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 99\r\n\r\n{}\r\n--b--";
        let reqs = parse_requests("multipart/mixed; boundary=b", body).unwrap();
        assert_eq!(reqs[0].body, b"{}");
    }

    #[test]
    fn lookalike_boundaries_inside_bodies_do_not_split() {
        let payload = b"x\r\n--bb\r\n--b-\r\n --b\r\n--b x\r\n";
        let mut body =
            b"--b\r\nContent-Type: application/http\r\n\r\nPUT /p HTTP/1.1\r\n\r\n".to_vec();
        body.extend_from_slice(payload);
        body.extend_from_slice(b"\r\n--b--\r\n");
        let reqs = parse_requests("multipart/mixed; boundary=b", &body).unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].body, payload);
    }

    #[test]
    fn gzip_inner_body_is_decoded_and_header_dropped() {
        let json = br#"{"name":"fw-1"}"#;
        let packed = gzip(json);
        let mut body = format!(
            "--b\r\nContent-Type: application/http\r\nContent-ID: <g+0>\r\n\r\n\
             POST /compute/v1/projects/p/global/firewalls HTTP/1.1\r\n\
             Content-Encoding: gzip\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n",
            packed.len()
        )
        .into_bytes();
        body.extend_from_slice(&packed);
        body.extend_from_slice(b"\r\n--b--\r\n");
        let reqs = parse_requests("multipart/mixed; boundary=b", &body).unwrap();
        assert_eq!(reqs[0].body, json);
        assert_eq!(reqs[0].header("content-encoding"), None);
        assert_eq!(reqs[0].header("content-length"), Some("15"));
        assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    }

    #[test]
    fn gzip_errors() {
        let e = gunzip(3, &gzip(&[0u8; 5000]), 4096).unwrap_err();
        assert!(matches!(e, MultipartError::BodyTooLarge { part: 3, .. }));
        assert!(e.to_string().contains("batch part 3"), "{e}");
        assert_eq!(gunzip(1, &gzip(&[7u8; 4096]), 4096).unwrap().len(), 4096);

        let body = b"--b\r\nContent-Type: application/http\r\n\r\nPOST /p HTTP/1.1\r\nContent-Encoding: gzip\r\n\r\nnot gzip\r\n--b--";
        let e = request_err("multipart/mixed; boundary=b", body);
        assert!(e.contains("batch part 1") && e.contains("gzip"), "{e}");

        let body = b"--b\r\nContent-Type: application/http\r\n\r\nPOST /p HTTP/1.1\r\nContent-Encoding: br\r\n\r\nx\r\n--b--";
        let e = request_err("multipart/mixed; boundary=b", body);
        assert!(e.contains("unsupported Content-Encoding \"br\""), "{e}");
    }

    #[test]
    fn missing_closing_boundary_is_tolerated_but_zero_parts_is_not() {
        let ct = "multipart/mixed; boundary=b";
        let part = "--b\r\nContent-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        for body in [
            part.to_owned(),
            format!("{part}\r\n"),
            format!("{part}\r\n--b\r\n"),
            format!("{part}\r\n--b"),
        ] {
            let reqs = parse_requests(ct, body.as_bytes()).unwrap();
            assert_eq!(reqs.len(), 1, "{body:?}");
            assert_eq!(reqs[0].path_and_query, "/x");
            assert!(reqs[0].body.is_empty());
        }
        for body in ["", "--b--\r\n", "preamble only\r\n", "--b\r\n", "--bx\r\n"] {
            let e = parse_requests(ct, body.as_bytes()).unwrap_err();
            assert!(matches!(e, MultipartError::NoParts { .. }), "{body:?}: {e}");
            assert!(
                e.to_string().contains("no parts delimited by \"--b\""),
                "{e}"
            );
        }
    }

    #[test]
    fn request_errors_name_the_part_and_the_problem() {
        let ct = "multipart/mixed; boundary=b";
        let good = "--b\r\nContent-Type: application/http\r\n\r\nGET /ok HTTP/1.1\r\n\r\n\r\n";
        let with_second = |second: &str| format!("{good}--b\r\n{second}\r\n--b--\r\n");

        let e = request_err(
            ct,
            with_second(
                "Content-Type: application/http\r\n\r\nGET https://compute.googleapis.com/compute/v1/projects/p HTTP/1.1\r\n",
            )
            .as_bytes(),
        );
        assert!(e.contains("batch part 2") && e.contains("full URL"), "{e}");

        let e = request_err(
            ct,
            with_second("Content-Type: application/json\r\n\r\nGET /x HTTP/1.1\r\n").as_bytes(),
        );
        assert!(
            e.contains("batch part 2")
                && e.contains("must be application/http")
                && e.contains("application/json"),
            "{e}"
        );

        let e = request_err(
            ct,
            with_second("MIME-Version: 1.0\r\n\r\nGET /x HTTP/1.1\r\n").as_bytes(),
        );
        assert!(e.contains("batch part 2") && e.contains("got none"), "{e}");

        for garbage in [
            "GARBAGE",
            "GET /x",
            "GET /x HTTP/1.1 extra",
            "G(T /x HTTP/1.1",
            "GET x HTTP/1.1",
            "GET /x FTP/1",
        ] {
            let e = parse_requests(
                ct,
                with_second(&format!(
                    "Content-Type: application/http\r\n\r\n{garbage}\r\n"
                ))
                .as_bytes(),
            )
            .unwrap_err();
            assert!(
                matches!(e, MultipartError::BadRequestLine { part: 2, .. }),
                "{garbage}: {e}"
            );
            assert!(e.to_string().contains("malformed HTTP request line"), "{e}");
            assert!(e.to_string().contains(garbage), "{e}");
        }

        let e = request_err(
            ct,
            with_second(
                "Content-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\nno colon here\r\n\r\n",
            )
            .as_bytes(),
        );
        assert!(
            e.contains("malformed HTTP header line \"no colon here\""),
            "{e}"
        );

        let e = request_err(ct, b"--b\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n--b--");
        assert!(
            e.contains("batch part 1: malformed part header line \"GET /x HTTP/1.1\""),
            "{e}"
        );

        let e = request_err(ct, b"--b\r\nContent-Type: application/http\r\n--b--");
        assert!(e.contains("batch part 1 has no HTTP message"), "{e}");

        let e = request_err(
            ct,
            b"--b\r\nContent-Type: application/http\r\n\r\n\r\n--b--",
        );
        assert!(e.contains("no request line"), "{e}");

        let e = request_err(
            ct,
            b"--b\r\n\r\n--b\r\nContent-Type: application/http\r\n\r\nGET /x HTTP/1.1\r\n\r\n--b--",
        );
        assert!(e.contains("batch part 1 is empty"), "{e}");

        let e = request_err(
            ct,
            with_second("Content-Type: application/http\r\nContent-Transfer-Encoding: base64\r\n\r\nR0VU\r\n").as_bytes(),
        );
        assert!(
            e.contains("unsupported Content-Transfer-Encoding \"base64\""),
            "{e}"
        );

        let e = request_err(
            ct,
            with_second("Content-Type: application/http\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 1x\r\n\r\n{}").as_bytes(),
        );
        assert!(e.contains("invalid Content-Length \"1x\""), "{e}");

        let huge = format!("GET /x HTTP/1.1 {}", "y".repeat(10_000));
        let e = request_err(
            ct,
            with_second(&format!("Content-Type: application/http\r\n\r\n{huge}\r\n")).as_bytes(),
        );
        assert!(
            e.len() < 400,
            "error messages quote a bounded excerpt: {}",
            e.len()
        );
    }

    // ---- responses ------------------------------------------------------------------------

    #[test]
    fn parses_gcloud_style_response() {
        let json =
            "{\n  \"kind\": \"compute#project\",\n  \"name\": \"tf-playground-svpc-net\"\n}\n";
        let body = format!(
            "--batch_Jb3bVoGPVJU_AAk6LTJR_8w\r\n\
             Content-Type: application/http\r\n\
             Content-ID: <response-34573baf-914d-42df-bada-02a1d76cf771+0>\r\n\
             \r\n\
             HTTP/1.1 200 OK\r\n\
             Content-Type: application/json; charset=UTF-8\r\n\
             Vary: Origin\r\n\
             Vary: X-Origin\r\n\
             Vary: Referer\r\n\
             Content-Length: {}\r\n\
             \r\n\
             {json}\r\n\
             --batch_Jb3bVoGPVJU_AAk6LTJR_8w--\r\n",
            json.len()
        );
        let ct = "multipart/mixed; boundary=batch_Jb3bVoGPVJU_AAk6LTJR_8w";
        let resps = parse_responses(ct, body.as_bytes()).unwrap();
        assert_eq!(resps.len(), 1);
        let r = &resps[0];
        assert_eq!(
            r.content_id.as_deref(),
            Some("34573baf-914d-42df-bada-02a1d76cf771+0")
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        assert_eq!(r.headers.iter().filter(|(n, _)| n == "Vary").count(), 3);
        assert_eq!(r.body, json.as_bytes());
    }

    #[test]
    fn parses_shuffled_multi_status_response() {
        let not_found = r#"{"error":{"code":404,"message":"The resource 'projects/p/global/firewalls/a' was not found","errors":[{"reason":"notFound"}]}}"#;
        let conflict = r#"{"error":{"code":409,"message":"The resource 'projects/p/global/firewalls/b' already exists","errors":[{"reason":"alreadyExists"}]}}"#;
        let ok = r#"{"kind":"compute#operation","name":"operation-1","status":"RUNNING"}"#;
        let body = format!(
            "preamble\n--xyz\nContent-Type: application/http\nContent-ID: <response-u+2>\n\n\
             HTTP/1.1 409 Conflict\nContent-Type: application/json; charset=UTF-8\n\n{conflict}\n\
             --xyz\r\nContent-Type: application/http\r\nContent-ID: <response-u+0>\r\n\r\n\
             HTTP/1.1 404 Not Found\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{not_found}\r\n\
             --xyz\nContent-Type: application/http\ncontent-id: <response-u+1>\n\n\
             HTTP/1.1 200 OK\nContent-Type: application/json; charset=UTF-8\n\n{ok}\n\
             --xyz--\nepilogue",
            not_found.len()
        );
        let resps = parse_responses("multipart/mixed; boundary=xyz", body.as_bytes()).unwrap();
        let got: Vec<(Option<&str>, u16, &[u8])> = resps
            .iter()
            .map(|r| (r.content_id.as_deref(), r.status, r.body.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("u+2"), 409, conflict.as_bytes()),
                (Some("u+0"), 404, not_found.as_bytes()),
                (Some("u+1"), 200, ok.as_bytes()),
            ]
        );
    }

    #[test]
    fn response_errors() {
        let ct = "multipart/mixed; boundary=b";
        for (line, what) in [
            ("HTTP/1.1 OK", "three digits"),
            ("HTTP/1.1 20 OK", "three digits"),
            ("HTTP/1.1 099 X", "between 100 and 999"),
            ("200 OK", "HTTP/1.1"),
        ] {
            let body = format!("--b\r\nContent-Type: application/http\r\n\r\n{line}\r\n\r\n--b--");
            let e = parse_responses(ct, body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("batch part 1: malformed HTTP status line") && e.contains(what),
                "{e}"
            );
        }
        let e = parse_responses(ct, b"--b\r\nContent-Type: application/http\r\n\r\n--b--")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no status line"), "{e}");
        // A response Content-ID without the response- prefix is kept as is.
        let body = b"--b\r\nContent-Type: application/http\r\nContent-ID: <odd>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n--b--";
        let r = parse_responses(ct, body).unwrap();
        assert_eq!(r[0].content_id.as_deref(), Some("odd"));
        assert_eq!(r[0].status, 204);
    }

    #[test]
    fn encode_responses_exact_bytes() {
        let parts = vec![
            InnerResponse {
                content_id: Some("abc + 1".into()),
                status: 404,
                headers: vec![("Vary".into(), "Origin".into())],
                body: b"{}".to_vec(),
            },
            InnerResponse {
                content_id: None,
                status: 200,
                headers: vec![
                    ("Content-Type".into(), "text/plain".into()),
                    ("Content-Length".into(), "999".into()),
                ],
                body: Vec::new(),
            },
        ];
        let out = String::from_utf8(encode_responses("batch_x", &parts)).unwrap();
        assert_eq!(
            out,
            "--batch_x\r\n\
             Content-Type: application/http\r\n\
             Content-ID: <response-abc + 1>\r\n\
             \r\n\
             HTTP/1.1 404 Not Found\r\n\
             Content-Type: application/json; charset=UTF-8\r\n\
             Vary: Origin\r\n\
             Content-Length: 2\r\n\
             \r\n\
             {}\r\n\
             --batch_x\r\n\
             Content-Type: application/http\r\n\
             \r\n\
             HTTP/1.1 200 OK\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 0\r\n\
             \r\n\
             \r\n\
             --batch_x--\r\n"
        );
    }

    #[test]
    fn encode_requests_sanitises_framing_breakers() {
        let req = InnerRequest {
            content_id: Some("<id\r\n+0>".into()),
            method: "GET".into(),
            path_and_query: "/a b".into(),
            headers: vec![
                ("X-Evil".into(), "v\r\n--b--".into()),
                ("bad name".into(), "dropped".into()),
            ],
            body: Vec::new(),
        };
        let out = encode_requests("b", &[req]);
        let parsed = parse_requests("multipart/mixed; boundary=b", &out).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].content_id.as_deref(), Some("id  +0"));
        assert_eq!(parsed[0].path_and_query, "/a%20b");
        assert_eq!(parsed[0].header("x-evil"), Some("v  --b--"));
        assert_eq!(parsed[0].header("bad name"), None);
    }

    #[test]
    fn hostile_inputs_finish_quickly() {
        let ct = format!("multipart/mixed; boundary=\"{}\"", "-".repeat(70));
        let mut body = Vec::new();
        for _ in 0..20_000 {
            body.extend_from_slice(&[b'-'; 71]);
            body.push(b'\n');
        }
        assert!(parse_requests(&ct, &body).is_err());

        // One header folded over 100k continuation lines.
        let mut body =
            b"--b\nContent-Type: application/http\n\nGET /x HTTP/1.1\nX-Long: a\n".to_vec();
        for _ in 0..100_000 {
            body.extend_from_slice(b" b\n");
        }
        body.extend_from_slice(b"\n--b--\n");
        let reqs = parse_requests("multipart/mixed; boundary=b", &body).unwrap();
        assert_eq!(
            reqs[0].header("x-long").map(str::len),
            Some(1 + 2 * 100_000)
        );

        // Many empty-ish parts.
        let body = "--b\n".repeat(50_000);
        assert!(parse_requests("multipart/mixed; boundary=b", body.as_bytes()).is_err());
    }

    // ---- property tests -------------------------------------------------------------------

    fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
        let chunk = prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"--".to_vec()),
            Just(b"\r\n--".to_vec()),
            Just(b"\r\n--batch_".to_vec()),
            Just(b"\n--batch_0123456789abcdef0123456789abcdef--\n".to_vec()),
            Just(b"{\"name\": \"x\", \"items\": [1, 2]}".to_vec()),
            "[ -~]{0,12}".prop_map(String::into_bytes),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(chunk, 0..16).prop_map(|chunks| chunks.concat())
    }

    fn headers_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop_oneof![
            Just("Content-Type".to_owned()),
            Just("Accept".to_owned()),
            Just("User-Agent".to_owned()),
            Just("Vary".to_owned()),
            Just("ETag".to_owned()),
            "x-[a-z0-9-]{1,12}",
        ];
        let value = "[!-~]( ?[!-~]){0,15}";
        prop::collection::vec((name, value), 0..5)
    }

    fn content_id_strategy() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-f0-9-]{1,36}(\\+| \\+ )[0-9]{1,3}")
    }

    fn request_strategy() -> impl Strategy<Value = InnerRequest> {
        (
            content_id_strategy(),
            prop_oneof![
                Just("GET"),
                Just("POST"),
                Just("PATCH"),
                Just("PUT"),
                Just("DELETE")
            ],
            "/[a-zA-Z0-9/_.~-]{0,40}(\\?[a-zA-Z0-9=&%._-]{0,20})?",
            headers_strategy(),
            body_strategy(),
        )
            .prop_map(|(content_id, method, path, headers, body)| InnerRequest {
                content_id,
                method: method.to_owned(),
                path_and_query: path,
                headers,
                body,
            })
    }

    fn response_strategy() -> impl Strategy<Value = InnerResponse> {
        (
            content_id_strategy(),
            100u16..600,
            headers_strategy(),
            body_strategy(),
        )
            .prop_map(|(content_id, status, headers, body)| InnerResponse {
                content_id,
                status,
                headers,
                body,
            })
    }

    fn assert_requests_round_trip(sent: &[InnerRequest], got: &[InnerRequest]) {
        assert_eq!(sent.len(), got.len());
        for (s, g) in sent.iter().zip(got) {
            assert_eq!(g.content_id, s.content_id);
            assert_eq!(g.method, s.method);
            assert_eq!(g.path_and_query, s.path_and_query);
            assert_eq!(without_content_length(&g.headers), s.headers);
            assert_eq!(
                g.header("content-length"),
                Some(s.body.len().to_string().as_str())
            );
            assert_eq!(g.body, s.body);
        }
    }

    fn assert_responses_round_trip(sent: &[InnerResponse], got: &[InnerResponse]) {
        assert_eq!(sent.len(), got.len());
        for (s, g) in sent.iter().zip(got) {
            assert_eq!(g.content_id, s.content_id);
            assert_eq!(g.status, s.status);
            let mut expected = s.headers.clone();
            if s.header("content-type").is_none() {
                expected.insert(
                    0,
                    (
                        "Content-Type".to_owned(),
                        DEFAULT_RESPONSE_CONTENT_TYPE.to_owned(),
                    ),
                );
            }
            assert_eq!(without_content_length(&g.headers), expected);
            assert_eq!(g.body, s.body);
        }
    }

    proptest! {
        #[test]
        fn requests_round_trip(reqs in prop::collection::vec(request_strategy(), 1..6)) {
            let boundary = new_boundary();
            let ct = format!("multipart/mixed; boundary={boundary}");
            let crlf_body = encode_requests(&boundary, &reqs);
            assert_requests_round_trip(&reqs, &parse_requests(&ct, &crlf_body).unwrap());
            let lf_body = encode_requests_with(&boundary, &reqs, "\n");
            assert_requests_round_trip(&reqs, &parse_requests(&ct, &lf_body).unwrap());
            let quoted = format!("Multipart/Mixed; charset=utf-8; boundary=\"{boundary}\"");
            assert_requests_round_trip(&reqs, &parse_requests(&quoted, &crlf_body).unwrap());
        }

        #[test]
        fn responses_round_trip(resps in prop::collection::vec(response_strategy(), 1..6)) {
            let boundary = new_boundary();
            let ct = format!("multipart/mixed; boundary={boundary}");
            let crlf_body = encode_responses(&boundary, &resps);
            assert_responses_round_trip(&resps, &parse_responses(&ct, &crlf_body).unwrap());
            let lf_body = encode_responses_with(&boundary, &resps, "\n");
            assert_responses_round_trip(&resps, &parse_responses(&ct, &lf_body).unwrap());
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(
            body in prop::collection::vec(any::<u8>(), 0..2048),
            ct in "[ -~]{0,60}",
        ) {
            let _ = parse_requests(&ct, &body);
            let _ = parse_responses(&ct, &body);
            let _ = parse_requests("multipart/mixed; boundary=b", &body);
            let mut framed = b"--b\r\nContent-Type: application/http\r\n\r\n".to_vec();
            framed.extend_from_slice(&body);
            let _ = parse_requests("multipart/mixed; boundary=b", &framed);
            let _ = parse_responses("multipart/mixed; boundary=b", &framed);
        }

        #[test]
        fn parse_never_panics_on_mutated_batches(
            reqs in prop::collection::vec(request_strategy(), 1..4),
            edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut body = encode_requests("b", &reqs);
            for (at, byte) in edits {
                let len = body.len();
                body[at % len] = byte;
            }
            let len = body.len();
            body.truncate(cut % (len + 1));
            let _ = parse_requests("multipart/mixed; boundary=b", &body);
            let _ = parse_responses("multipart/mixed; boundary=b", &body);
        }
    }
}
