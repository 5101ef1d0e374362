//! A small blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! Every request leaves through the host, which checks it against the plugin's allowed hosts and
//! fills in `{{secret:NAME}}` placeholders in header values. A refused request comes back as
//! [`HttpError::Denied`] (or, with some guest toolchains, as a transport error).

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::CallError;

/// HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

/// Why a request produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL could not be parsed.
    InvalidUrl(String),
    /// The host refused the request: the destination is not on the plugin's allowlist.
    Denied(String),
    /// Connecting, sending or receiving failed (DNS, refused connection, reset).
    Transport(String),
    /// No response within the request's timeout.
    Timeout,
    /// The response body was larger than the client accepts.
    TooLarge(usize),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            HttpError::Denied(m) => write!(f, "request denied by the hub: {m}"),
            HttpError::Transport(m) => write!(f, "HTTP transport error: {m}"),
            HttpError::Timeout => write!(f, "HTTP request timed out"),
            HttpError::TooLarge(n) => write!(f, "HTTP response body over {n} bytes"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Transport problems are transient; a denied host or a bad URL is the operator's to fix.
impl From<HttpError> for CallError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::InvalidUrl(_) | HttpError::Denied(_) => {
                CallError::InvalidConfig(e.to_string())
            }
            HttpError::Transport(_) | HttpError::Timeout | HttpError::TooLarge(_) => {
                CallError::Transient(crate::Retry {
                    reason: e.to_string(),
                    after_ms: None,
                })
            }
        }
    }
}

/// Largest response body read, 32 MiB; the host caps what a plugin may return separately.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// An outgoing request, built fluently and sent with [`Request::send`].
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl Request {
    pub fn new(method: Method, url: &str) -> Self {
        Request {
            method,
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
    pub fn get(url: &str) -> Self {
        Self::new(Method::Get, url)
    }
    pub fn post(url: &str) -> Self {
        Self::new(Method::Post, url)
    }
    pub fn put(url: &str) -> Self {
        Self::new(Method::Put, url)
    }
    pub fn patch(url: &str) -> Self {
        Self::new(Method::Patch, url)
    }
    pub fn delete(url: &str) -> Self {
        Self::new(Method::Delete, url)
    }

    /// Adds a header (repeated names are kept).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// `Authorization: Bearer TOKEN`; pass `ctx.secret_placeholder(..)` to keep the secret out.
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// `Authorization: Basic base64(user:password)`.
    pub fn basic_auth(self, user: &str, password: &str) -> Self {
        let encoded = base64_encode(format!("{user}:{password}").as_bytes());
        self.header("authorization", &format!("Basic {encoded}"))
    }

    /// Serialises `body` as JSON and sets `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Self {
        self.body = serde_json::to_vec(body).unwrap_or_default();
        self.header("content-type", "application/json")
    }

    /// Sets a raw body.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Time allowed to connect and for the first byte of the response (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        #[cfg(target_arch = "wasm32")]
        {
            wasi_start(self)?.finish()
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            Url::parse(&self.url)?;
            Err(HttpError::Transport(
                "HTTP is only available inside a plugin running in the hub".to_string(),
            ))
        }
    }
}

/// Sends `requests` at once and returns their answers in the same order: the host sends them
/// side by side (each on a connection of its own, within `[hub.plugin_limits]
/// connections_per_call`), so an API that takes one request per user or client (GA4's
/// Measurement Protocol) costs one round trip for all of them rather than one each. The
/// plugin waits for all of them; keep the number small (a few to a few tens).
pub fn send_all(requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
    #[cfg(target_arch = "wasm32")]
    {
        let started: Vec<Result<InFlight, HttpError>> =
            requests.into_iter().map(wasi_start).collect();
        started
            .into_iter()
            .map(|s| s.and_then(InFlight::finish))
            .collect()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        requests.into_iter().map(Request::send).collect()
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names are lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response built by hand, e.g. in a plugin's unit tests of how it reads an API's answers:
    /// `Response::new(429, &[("retry-after", "2")], r#"{"error":"slow down"}"#)`.
    pub fn new(status: u16, headers: &[(&str, &str)], body: impl AsRef<[u8]>) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: body.as_ref().to_vec(),
        }
    }

    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Parses the body as JSON; the error says what was expected and shows the start of the body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let text = self.text();
            let start: String = text.chars().take(200).collect();
            CallError::Failed(format!(
                "unexpected response body (HTTP {}): {e}; body starts with: {start}",
                self.status
            ))
        })
    }
}

/// The parts of a URL that wasi:http needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub https: bool,
    pub authority: String,
    pub path_and_query: String,
}

impl Url {
    pub(crate) fn parse(url: &str) -> Result<Url, HttpError> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(HttpError::InvalidUrl(format!(
                "`{url}` must start with http:// or https://"
            )));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..split];
        if authority.is_empty() || authority.contains('@') || authority.contains(' ') {
            return Err(HttpError::InvalidUrl(format!("`{url}` has no valid host")));
        }
        let mut path_and_query = rest[split..].to_string();
        if path_and_query.is_empty() {
            path_and_query = "/".to_string();
        } else if path_and_query.starts_with('?') {
            path_and_query.insert(0, '/');
        }
        Ok(Url {
            https,
            authority: authority.to_string(),
            path_and_query,
        })
    }
}

/// A request handed to the host, its body written; the host sends it while the plugin goes
/// on (so several can be in flight, see [`send_all`]).
#[cfg(target_arch = "wasm32")]
struct InFlight {
    pending: crate::bindings::wasi::http::types::FutureIncomingResponse,
    /// Whether the body was written; a refused request closes the body stream early, and its
    /// response's error then says why.
    written: Result<(), HttpError>,
    authority: String,
}

#[cfg(target_arch = "wasm32")]
fn map_code(code: crate::bindings::wasi::http::types::ErrorCode, authority: &str) -> HttpError {
    use crate::bindings::wasi::http::types::ErrorCode;
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied(format!(
            "{authority} is not an allowed host for this plugin"
        )),
        ErrorCode::ConnectionTimeout
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout => HttpError::Timeout,
        other => HttpError::Transport(format!("{other:?}")),
    }
}

#[cfg(target_arch = "wasm32")]
fn wasi_start(req: Request) -> Result<InFlight, HttpError> {
    let url = Url::parse(&req.url)?;
    use crate::bindings::wasi::http::outgoing_handler;
    use crate::bindings::wasi::http::types::{
        Fields, Method as WMethod, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };

    let mut entries: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    // The whole body is known: say how long it is rather than streaming it chunked, which some
    // APIs refuse.
    let sends_body =
        !req.body.is_empty() || matches!(req.method, Method::Post | Method::Put | Method::Patch);
    if sends_body && !req.headers.iter().any(|(k, _)| k == "content-length") {
        entries.push((
            "content-length".to_string(),
            req.body.len().to_string().into_bytes(),
        ));
    }
    let fields = Fields::from_list(&entries)
        .map_err(|e| HttpError::InvalidUrl(format!("invalid header: {e:?}")))?;
    let outgoing = OutgoingRequest::new(fields);
    let method = match req.method {
        Method::Get => WMethod::Get,
        Method::Post => WMethod::Post,
        Method::Put => WMethod::Put,
        Method::Patch => WMethod::Patch,
        Method::Delete => WMethod::Delete,
        Method::Head => WMethod::Head,
    };
    let bad = |what: &str| HttpError::InvalidUrl(format!("invalid {what} in `{}`", req.url));
    outgoing.set_method(&method).map_err(|_| bad("method"))?;
    outgoing
        .set_scheme(Some(if url.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|_| bad("scheme"))?;
    outgoing
        .set_authority(Some(&url.authority))
        .map_err(|_| bad("host"))?;
    outgoing
        .set_path_with_query(Some(&url.path_and_query))
        .map_err(|_| bad("path"))?;
    let body = outgoing
        .body()
        .map_err(|_| HttpError::Transport("request body already taken".into()))?;

    let options = RequestOptions::new();
    let nanos = req.timeout.as_nanos().min(u64::MAX as u128) as u64;
    let _ = options.set_connect_timeout(Some(nanos));
    let _ = options.set_first_byte_timeout(Some(nanos));
    let _ = options.set_between_bytes_timeout(Some(nanos));

    let authority = url.authority;
    let pending = outgoing_handler::handle(outgoing, Some(options))
        .map_err(|code| map_code(code, &authority))?;
    let written: Result<(), HttpError> = (|| {
        {
            let stream = body
                .write()
                .map_err(|_| HttpError::Transport("request body stream unavailable".into()))?;
            for chunk in req.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::Transport(format!("writing request body: {e:?}")))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|code| map_code(code, &authority))
    })();
    Ok(InFlight {
        pending,
        written,
        authority,
    })
}

#[cfg(target_arch = "wasm32")]
impl InFlight {
    /// Waits for the response and reads all of it.
    fn finish(self) -> Result<Response, HttpError> {
        use crate::bindings::wasi::http::types::IncomingBody;
        use crate::bindings::wasi::io::streams::StreamError;
        let InFlight {
            pending,
            written,
            authority,
        } = self;
        let incoming = loop {
            match pending.get() {
                Some(result) => break result,
                None => pending.subscribe().block(),
            }
        };
        let incoming =
            incoming.map_err(|_| HttpError::Transport("response already taken".into()))?;
        let response = match (incoming, written) {
            (Err(code), _) => return Err(map_code(code, &authority)),
            (Ok(_), Err(write_error)) => return Err(write_error),
            (Ok(response), Ok(())) => response,
        };

        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let incoming_body = response
            .consume()
            .map_err(|_| HttpError::Transport("response body already taken".into()))?;
        let mut bytes = Vec::new();
        {
            let stream = incoming_body
                .stream()
                .map_err(|_| HttpError::Transport("response body stream unavailable".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        bytes.extend_from_slice(&chunk);
                        if bytes.len() > MAX_RESPONSE_BYTES {
                            return Err(HttpError::TooLarge(MAX_RESPONSE_BYTES));
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Transport(format!(
                            "reading response body: {}",
                            e.to_debug_string()
                        )))
                    }
                }
            }
        }
        let _ = IncomingBody::finish(incoming_body);
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

fn base64_encode(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("https://api.example.com:8443/v3/x?a=1").unwrap();
        assert_eq!(
            u,
            Url {
                https: true,
                authority: "api.example.com:8443".into(),
                path_and_query: "/v3/x?a=1".into()
            }
        );
        let u = Url::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(u.path_and_query, "/");
        assert!(!u.https);
        assert_eq!(Url::parse("http://h?x=1").unwrap().path_and_query, "/?x=1");
        assert!(matches!(
            Url::parse("ftp://x"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            Url::parse("https:///path"),
            Err(HttpError::InvalidUrl(_))
        ));
        assert!(matches!(
            Url::parse("https://user@evil.com/"),
            Err(HttpError::InvalidUrl(_))
        ));
    }

    #[test]
    fn basic_auth_is_rfc7617() {
        // RFC 7617's example.
        let r = Request::get("https://x").basic_auth("Aladdin", "open sesame");
        assert_eq!(r.headers[0].1, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"a"), "YQ==");
    }

    #[test]
    fn transport_errors_are_transient_and_denials_are_config() {
        assert!(matches!(
            CallError::from(HttpError::Timeout),
            CallError::Transient(_)
        ));
        assert!(matches!(
            CallError::from(HttpError::Denied("x".into())),
            CallError::InvalidConfig(_)
        ));
    }
}
