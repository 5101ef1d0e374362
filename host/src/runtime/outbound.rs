//! The gate every outgoing request of a plugin passes: the HTTP policy by name and port, then
//! by resolved address (so a public name that resolves to a private address is refused), then
//! secret placeholders are filled in, and only then does the request leave. Each call has a
//! budget of connections open at once, requests in all and response bytes, and all calls share
//! the hub's outbound connection allowance, so one call cannot take the descriptors the hub's
//! own listeners need; a request over budget fails at once, inside the plugin, saying which.
//!
//! Plain HTTP connects to the very address that was checked. HTTPS connects by name, and the
//! certificate check binds the connection to that name: a name rebound to an internal address
//! between check and connect fails the TLS handshake rather than reaching the internal service.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::net::{Denied, HttpPolicy};
use super::secrets::Scrubber;
use super::Limits;

/// Per-instance outbound HTTP gate.
pub(crate) struct PluginHttpHooks {
    pub plugin: Arc<str>,
    pub policy: Arc<HttpPolicy>,
    pub secrets: Arc<Vec<(String, String)>>,
    pub scrubber: Arc<Scrubber>,
    /// The hub's outbound connections not in use (shared by every call).
    pub hub_connections: Arc<Semaphore>,
    pub limits: Arc<Limits>,
    /// Requests this call has made.
    pub requests_made: u32,
    /// This call's connection and received-bytes budget, made at its first request (most calls
    /// make none).
    pub budget: Option<Arc<CallBudget>>,
    /// The instance's open connections between requests, shared by its calls.
    pub kept: Arc<KeptConnections>,
}

/// What one call may still do on the network.
pub(crate) struct CallBudget {
    connections: Arc<Semaphore>,
    received: AtomicU64,
    received_cap: u64,
}

/// A plugin instance's connections whose last response was read to its end, by what the
/// plugin asked for (`scheme://authority`): the next request there, from the same call or a
/// later one, goes on one of them (HTTP/1.1 keep-alive) instead of a new TCP connection and
/// TLS handshake. A destination sending a batch as many requests (GA4: one per client, 25
/// events at most) paid both for each, and an event stream, calling its destination every few
/// tens of milliseconds, paid both for each batch. Never shared between instances (another
/// destination, or the same plugin with other settings): each has its own. A connection
/// closes when the server hangs up, when it has been idle [`KEEP_IDLE`] (a sweep runs while
/// any is kept), or with its instance; until then it holds its share of
/// `[hub.plugin_limits] hub_connections`.
pub(crate) struct KeptConnections {
    idle: std::sync::Mutex<HashMap<String, Vec<Pooled>>>,
    keep_idle: Duration,
    /// Whether a sweep task is running for these connections.
    sweeping: std::sync::atomic::AtomicBool,
}

impl Default for KeptConnections {
    fn default() -> Self {
        KeptConnections::with_idle_limit(KEEP_IDLE)
    }
}

/// An open connection a request may be sent on.
struct Pooled {
    /// Where it is connected: the checked `scheme://address` (plain HTTP) or name (HTTPS).
    target: String,
    sender: SendRequest<WasiBody>,
    /// When it was last handed back.
    since: std::time::Instant,
}

/// Idle connections an instance keeps per place it asked for.
const IDLE_PER_HOST: usize = 4;

/// How long an idle connection is kept: below Node.js servers' default idle timeout (5 s,
/// `server.keepAliveTimeout`), as the `agentkeepalive` agent does (its `freeSocketTimeout`,
/// 4,000 ms, "to avoid ECONNRESET"), so the hub does not send on a connection the server is
/// closing at that moment (a request that may have arrived fails rather than go twice). Long
/// enough for a stream's next batch, tens of milliseconds later, or a sync's next call.
const KEEP_IDLE: Duration = Duration::from_secs(4);

impl KeptConnections {
    fn with_idle_limit(keep_idle: Duration) -> Self {
        KeptConnections {
            idle: std::sync::Mutex::default(),
            keep_idle,
            sweeping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn fresh(&self, pooled: &Pooled) -> bool {
        !pooled.sender.is_closed() && pooled.since.elapsed() < self.keep_idle
    }

    /// An idle connection to `asked` the server has not closed and that is not too old.
    fn take(&self, asked: &str) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(asked)?;
        // Closed: the server hung up. One not closed may not be ready yet either (its task has
        // not yet seen the last response end); `send` waits for it, and sends elsewhere if it
        // closes meanwhile.
        while let Some(pooled) = list.pop() {
            if self.fresh(&pooled) {
                return Some(pooled);
            }
        }
        None
    }

    /// Keeps `pooled` for the next request to `asked`, and makes sure a sweep will close it
    /// if it is not taken again.
    fn put(self: &Arc<Self>, asked: String, mut pooled: Pooled) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(asked).or_default();
            if list.len() >= IDLE_PER_HOST {
                return;
            }
            pooled.since = std::time::Instant::now();
            list.push(pooled);
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            // A response body can be dropped off the runtime (with a plugin's store): then the
            // next connection handed back on it starts the sweep.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(sweep(Arc::downgrade(self)))),
                Err(_) => self.sweeping.store(false, Ordering::Release),
            }
        }
    }

    /// Drops (so closes) the connections idle too long or closed; how many are left.
    fn sweep(&self) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|p| self.fresh(p));
            !list.is_empty()
        });
        idle.values().map(Vec::len).sum()
    }
}

/// Closes an instance's connections as they pass their idle limit, until none is left (or the
/// instance is gone: it holds only a weak reference). Without it an instance that stopped
/// calling (a stream with nothing to send at night) kept them until the server hung up.
async fn sweep(kept: std::sync::Weak<KeptConnections>) {
    loop {
        let every = match kept.upgrade() {
            Some(k) => k.keep_idle / 2,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(k) = kept.upgrade() else { return };
        if k.sweep() > 0 {
            continue;
        }
        k.sweeping.store(false, Ordering::Release);
        // One handed back between the sweep and the store above started no sweep of its own.
        if k.sweep() == 0 || k.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

impl CallBudget {
    fn new(limits: &Limits) -> Self {
        CallBudget {
            connections: Arc::new(Semaphore::new(limits.connections_per_call)),
            received: AtomicU64::new(0),
            received_cap: limits.received_bytes_per_call,
        }
    }
}

/// The error a plugin sees for a request over budget: `internal-error` with this text.
fn over_budget(what: String) -> HttpError {
    HttpError::InternalError(Some(format!("switchyard: {what}")))
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for PluginHttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        let plugin = self.plugin.clone();
        let policy = self.policy.clone();
        let secrets = self.secrets.clone();
        let scrubber = self.scrubber.clone();
        let limits = self.limits.clone();
        // Counted here, as the plugin asks, not when the request task gets to run.
        let over_requests = self.requests_made >= limits.requests_per_call;
        self.requests_made = self.requests_made.saturating_add(1);
        let budget = self
            .budget
            .get_or_insert_with(|| Arc::new(CallBudget::new(&limits)))
            .clone();
        let hub_connections = self.hub_connections.clone();
        let kept = self.kept.clone();
        Box::new(async move {
            if over_requests {
                return Err(over_budget(format!(
                    "this call made its {} outgoing requests ([hub.plugin_limits] requests_per_call)",
                    limits.requests_per_call
                )));
            }
            let asked = place(request.uri());
            // An idle connection of this call needs no new permits; otherwise they are taken
            // before any name lookup or socket, so a request over budget costs nothing.
            let reused = kept.take(&asked);
            let taken = match reused {
                Some(_) => None,
                None => Some(permits(&budget, &hub_connections, &plugin, &limits)?),
            };
            let method = request.method().clone();
            let span = tracing::debug_span!("plugin_http", plugin = %plugin, %method, host = %scrubber.scrub(request.uri().host().unwrap_or_default()));
            let request = match gate(request, &policy, &secrets)
                .instrument(span.clone())
                .await
            {
                Ok(r) => r,
                Err(denied) => {
                    tracing::warn!(plugin = %plugin, "outbound request refused: {}", scrubber.scrub(&denied.to_string()));
                    return Err(HttpError::HttpRequestDenied);
                }
            };
            let target = place(request.uri());
            // Reused only where this request would connect now: a name that resolves elsewhere
            // since gets a connection of its own.
            let uri = request.uri().clone();
            let (sender, was_kept) = match reused {
                Some(pooled) if pooled.target == target => (pooled.sender, true),
                _ => {
                    let taken = match taken {
                        Some(p) => p,
                        None => permits(&budget, &hub_connections, &plugin, &limits)?,
                    };
                    let sender = connect(uri.clone(), options, taken)
                        .instrument(span.clone())
                        .await?;
                    (sender, false)
                }
            };
            let response = match send(sender, request, options)
                .instrument(span.clone())
                .await
            {
                Ok(response) => response,
                // The server closed the kept connection as it was taken up again (its
                // keep-alive ran out): the request did not leave, so it goes once more on a
                // new connection.
                Err(Failure::Unsent(request, error)) if was_kept => {
                    tracing::debug!(plugin = %plugin, "kept connection closed ({error}), sending on a new one");
                    let taken = permits(&budget, &hub_connections, &plugin, &limits)?;
                    let sender = connect(uri, options, taken)
                        .instrument(span.clone())
                        .await?;
                    send(sender, *request, options)
                        .instrument(span.clone())
                        .await
                        .map_err(Failure::into_error)?
                }
                Err(failure) => return Err(failure.into_error()),
            };
            span.in_scope(|| {
                tracing::debug!(plugin = %plugin, status = response.status().as_u16(), "response")
            });
            let (parts, (incoming, sender)) = response.into_parts();
            let between_bytes = options
                .and_then(|o| o.between_bytes_timeout)
                .unwrap_or(DEFAULT_TIMEOUT)
                .max(Duration::from_nanos(1));
            let mut timeout = tokio::time::interval(between_bytes);
            timeout.reset();
            let body = Keeping {
                incoming,
                timeout,
                back: Some((
                    kept,
                    asked,
                    Pooled {
                        target,
                        sender,
                        since: std::time::Instant::now(),
                    },
                )),
            };
            Ok((
                http::Response::from_parts(
                    parts,
                    CountedBody {
                        inner: body.boxed_unsync(),
                        budget,
                    }
                    .boxed_unsync(),
                ),
                // The connection runs on a task of its own (see `connect`): nothing to drive.
                Box::new(async { Ok(()) })
                    as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// Where a request goes, `scheme://authority`: the key of a call's idle connections.
fn place(uri: &http::Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    )
}

/// wasmtime-wasi-http's default for the connect, first-byte and between-bytes timeouts a
/// request does not set (the call's wall-clock limit still applies).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A new connection's permits: one of the call's connections and one of the hub's.
fn permits(
    budget: &CallBudget,
    hub_connections: &Arc<Semaphore>,
    plugin: &str,
    limits: &Limits,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), HttpError> {
    let Ok(call_permit) = budget.connections.clone().try_acquire_owned() else {
        return Err(over_budget(format!(
            "this call has {} outgoing connections open already ([hub.plugin_limits] connections_per_call)",
            limits.connections_per_call
        )));
    };
    let Ok(hub_permit) = hub_connections.clone().try_acquire_owned() else {
        tracing::warn!(plugin = %plugin, "outbound request refused: the hub's plugin connections are all in use ([hub.plugin_limits] hub_connections)");
        return Err(over_budget(
            "the hub's outgoing connections for plugins are all in use ([hub.plugin_limits] hub_connections)".into(),
        ));
    };
    Ok((call_permit, hub_permit))
}

/// A byte stream a connection runs over: TCP, or TLS over it.
trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// Opens a connection for a gated request, as wasmtime-wasi-http's `default_send_request`
/// does (TCP to the request's authority, TLS by name with the webpki roots, HTTP/1.1), but
/// drives it on a task of its own holding `permits`, so it outlives one response. It closes
/// when its last sender is dropped (see [`KeptConnections`]).
async fn connect(
    uri: http::Uri,
    options: Option<RequestOptions>,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) -> Result<SendRequest<WasiBody>, HttpError> {
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    let tls = uri.scheme() == Some(&Scheme::HTTPS);
    let authority = match authority.port() {
        Some(_) => authority.to_string(),
        None => format!("{authority}:{}", if tls { 443 } else { 80 }),
    };
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let tcp =
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&authority))
            .await
        {
            Ok(stream) => stream.map_err(HttpError::Connect)?,
            Err(_) => return Err(HttpError::ConnectionTimeout),
        };
    // A request leaves as two writes (head, then body). On a connection that has carried one
    // before, Nagle's algorithm holds the second until the first is acknowledged, and the
    // server delays that acknowledgement (40 ms on Linux): each batch of an event stream took
    // 50-60 ms longer on a kept connection than on a new one until this was set.
    tcp.set_nodelay(true).map_err(HttpError::Connect)?;
    let stream: Box<dyn Transport> = if tls {
        let name = server_name(&authority)?;
        let stream = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, tcp)
            .await
            .map_err(HttpError::Tls)?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    let (sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new()
            .handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;
    tokio::spawn(
        async move {
            if let Err(e) = connection.await {
                tracing::debug!("plugin connection ended: {e}");
            }
            drop(permits);
        }
        .in_current_span(),
    );
    Ok(sender)
}

/// Sends a request on a connection (path only on the wire, as `default_send_request` does);
/// the response comes back with the connection, to be kept once its body is read.
async fn send(
    mut sender: SendRequest<WasiBody>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<http::Response<(hyper::body::Incoming, SendRequest<WasiBody>)>, Failure> {
    let path = http::Uri::builder()
        .path_and_query(
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        )
        .build();
    match path {
        Ok(path) => *request.uri_mut() = path,
        Err(_) => return Err(Failure::Sent(HttpError::HttpRequestUriInvalid)),
    }
    let first_byte = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    let attempt = async move {
        if let Err(e) = sender.ready().await {
            return Err(Failure::Unsent(Box::new(request), HttpError::from(e)));
        }
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response.map(|incoming| (incoming, sender))),
            Err(mut e) => {
                let request = e.take_message();
                let error = HttpError::from(e.into_error());
                Err(match request {
                    Some(request) => Failure::Unsent(Box::new(request), error),
                    None => Failure::Sent(error),
                })
            }
        }
    };
    match tokio::time::timeout(first_byte, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Sent(HttpError::ConnectionReadTimeout)),
    }
}

/// Why a request got no response.
enum Failure {
    /// It never left (the connection was closed before it could): it can go again.
    Unsent(Box<http::Request<WasiBody>>, HttpError),
    /// It left, or may have: it must not be sent twice.
    Sent(HttpError),
}

impl Failure {
    fn into_error(self) -> HttpError {
        match self {
            Failure::Unsent(_, e) | Failure::Sent(e) => e,
        }
    }
}

/// The TLS settings every plugin connection uses: the webpki roots, as wasmtime-wasi-http's.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// The name a certificate must carry for `host:port` (an IP literal, bracketed for IPv6, or a
/// DNS name).
fn server_name(authority: &str) -> Result<rustls::pki_types::ServerName<'static>, HttpError> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    }
    let host = authority
        .rsplit_once(':')
        .map(|(host, _)| host)
        .unwrap_or(authority);
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| HttpError::HttpRequestUriInvalid)
}

/// A response body that hands its connection back to the instance's idle list once read to the
/// end (a body dropped before its end takes the connection with it: what is left unread
/// would come before the next response). Fails a read that waits longer than the request's
/// between-bytes timeout.
struct Keeping {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
    back: Option<(Arc<KeptConnections>, String, Pooled)>,
}

impl Keeping {
    fn keep(&mut self) {
        if let Some((kept, asked, pooled)) = self.back.take() {
            kept.put(asked, pooled);
        }
    }
}

impl Body for Keeping {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                self.keep();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.back = None;
                Poll::Ready(Some(Err(if e.is_timeout() {
                    HttpError::HttpResponseTimeout
                } else {
                    HttpError::from(e)
                })))
            }
            Poll::Pending => {
                if self.timeout.poll_tick(cx).is_ready() {
                    self.back = None;
                    return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for Keeping {
    fn drop(&mut self) {
        // Read to the end without the final poll (an empty body, or a reader that stopped at
        // `is_end_stream`): the connection is free all the same.
        if self.incoming.is_end_stream() {
            self.keep();
        }
    }
}

/// Checks a request and prepares it to leave: returns it with secrets filled in and, for plain
/// HTTP, aimed at the checked address.
async fn gate(
    mut request: http::Request<WasiBody>,
    policy: &HttpPolicy,
    secrets: &[(String, String)],
) -> Result<http::Request<WasiBody>, Denied> {
    let mut uri = request.uri().clone();
    let mut tls = uri.scheme() == Some(&Scheme::HTTPS);
    let mut host = uri_host(&uri, policy)?;
    let mut port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    policy.check_name(&host, port)?;

    // The grant is by the name the plugin asked for; a reroute then sends the request elsewhere,
    // and the address check below applies to where it really goes.
    if let Some(target) = policy.reroute(&host, port) {
        let mut parts = uri.into_parts();
        parts.scheme = target.scheme().cloned();
        parts.authority = target.authority().cloned();
        uri = http::Uri::from_parts(parts)
            .map_err(|e| Denied::Unresolved(host.clone(), format!("reroute: {e}")))?;
        tls = uri.scheme() == Some(&Scheme::HTTPS);
        host = uri_host(&uri, policy)?;
        port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        *request.uri_mut() = uri.clone();
    }

    let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Denied::Unresolved(host.clone(), e.to_string()))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Denied::Unresolved(host, "no addresses".into()));
    }
    for addr in &addrs {
        policy.check_addr(&host, port, addr.ip())?;
    }

    fill_secrets(request.headers_mut(), secrets);

    if !tls {
        // Connect to the address just checked, not to whatever the name resolves to next.
        let mut parts = uri.into_parts();
        let authority = match addrs[0] {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        parts.authority = Authority::try_from(authority.as_str()).ok();
        if let Ok(pinned) = http::Uri::from_parts(parts) {
            *request.uri_mut() = pinned;
        }
    }
    Ok(request)
}

/// A response body that counts what it yields against the call's received-bytes budget.
struct CountedBody {
    inner: WasiBody,
    budget: Arc<CallBudget>,
}

impl Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let len = data.len() as u64;
                let total = self.budget.received.fetch_add(len, Ordering::Relaxed) + len;
                if total > self.budget.received_cap {
                    return Poll::Ready(Some(Err(over_budget(format!(
                        "this call received more than {} response bytes ([hub.plugin_limits] received_bytes_per_call)",
                        self.budget.received_cap
                    )))));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn uri_host(uri: &http::Uri, policy: &HttpPolicy) -> Result<String, Denied> {
    Ok(uri
        .host()
        .ok_or_else(|| Denied::NotGranted("(no host)".into(), policy.describe()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

/// Replaces `{{secret:NAME}}` in header values with the instance's secret of that name.
fn fill_secrets(headers: &mut http::HeaderMap, secrets: &[(String, String)]) {
    if secrets.is_empty() {
        return;
    }
    for value in headers.values_mut() {
        let Ok(text) = value.to_str() else { continue };
        if !text.contains("{{secret:") {
            continue;
        }
        let mut filled = text.to_string();
        for (name, secret) in secrets {
            filled = filled.replace(&format!("{{{{secret:{name}}}}}"), secret);
        }
        if let Ok(v) = http::HeaderValue::from_str(&filled) {
            let mut v = v;
            v.set_sensitive(true);
            *value = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server that reports each connection the client closes, and a way to open
    /// connections to it as the hub does.
    async fn server() -> (
        impl Fn() -> Pin<Box<dyn Future<Output = SendRequest<WasiBody>>>>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                    let _ = closed_tx.send(());
                });
            }
        });
        let open = move || -> Pin<Box<dyn Future<Output = SendRequest<WasiBody>>>> {
            Box::pin(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (sender, connection) = hyper::client::conn::http1::handshake::<_, WasiBody>(
                    wasmtime_wasi_http::io::TokioIo::new(tcp),
                )
                .await
                .unwrap();
                tokio::spawn(connection);
                sender
            })
        };
        (open, closed)
    }

    fn pooled(sender: SendRequest<WasiBody>) -> Pooled {
        Pooled {
            target: "http://127.0.0.1".into(),
            sender,
            since: std::time::Instant::now(),
        }
    }

    #[tokio::test]
    async fn a_kept_connection_closes_once_idle_too_long() {
        let (open, mut closed) = server().await;
        let kept = Arc::new(KeptConnections::with_idle_limit(Duration::from_millis(300)));
        kept.put("http://a".into(), pooled(open().await));
        // Taken and handed back while fresh: the same connection, still open.
        let again = kept.take("http://a").expect("a fresh connection is kept");
        kept.put("http://a".into(), again);
        assert!(closed.try_recv().is_err());
        // Not taken again: the sweep closes it, then stops.
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("closed by the sweep");
        assert!(kept.take("http://a").is_none());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while kept.sweeping.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "the sweep never stopped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A connection kept after the sweep stopped gets a sweep of its own.
        kept.put("http://a".into(), pooled(open().await));
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("closed by a new sweep");
    }

    #[tokio::test]
    async fn kept_connections_close_with_their_instance_and_are_capped_per_place() {
        let (open, mut closed) = server().await;
        let kept = Arc::new(KeptConnections::default());
        for _ in 0..IDLE_PER_HOST + 1 {
            kept.put("http://a".into(), pooled(open().await));
        }
        // The one over the cap is not kept: closed at once.
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("the connection over the cap closed");
        assert!(closed.try_recv().is_err());
        drop(kept);
        for _ in 0..IDLE_PER_HOST {
            tokio::time::timeout(Duration::from_secs(5), closed.recv())
                .await
                .expect("closed with the instance");
        }
    }

    #[test]
    fn tls_settings_build_and_names_are_read_from_authorities() {
        // Builds with the crate's TLS provider (a second one enabled elsewhere would panic here).
        assert!(!tls_config().alpn_protocols.iter().any(|p| p == b"h2"));
        use rustls::pki_types::ServerName;
        assert!(matches!(
            server_name("graph.facebook.com:443"),
            Ok(ServerName::DnsName(n)) if n.as_ref() == "graph.facebook.com"
        ));
        assert!(matches!(
            server_name("[::1]:8443"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1:443"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(server_name("bad name:443").is_err());
    }

    #[test]
    fn fills_placeholders_only_for_known_secrets() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer {{secret:token}}".parse().unwrap());
        h.insert("x-other", "{{secret:unknown}}".parse().unwrap());
        fill_secrets(&mut h, &[("token".into(), "abc".into())]);
        assert_eq!(h["authorization"], "Bearer abc");
        assert!(h["authorization"].is_sensitive());
        assert_eq!(h["x-other"], "{{secret:unknown}}");
    }
}
