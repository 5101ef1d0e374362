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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{Authority, Scheme};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Semaphore;
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
}

/// What one call may still do on the network.
pub(crate) struct CallBudget {
    connections: Arc<Semaphore>,
    received: AtomicU64,
    received_cap: u64,
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
        Box::new(async move {
            if over_requests {
                return Err(over_budget(format!(
                    "this call made its {} outgoing requests ([hub.plugin_limits] requests_per_call)",
                    limits.requests_per_call
                )));
            }
            // Before any name lookup or socket: a request over budget costs nothing.
            let Ok(call_permit) = budget.connections.clone().try_acquire_owned() else {
                return Err(over_budget(format!(
                    "this call has {} outgoing connections open already ([hub.plugin_limits] connections_per_call)",
                    limits.connections_per_call
                )));
            };
            let Ok(hub_permit) = hub_connections.try_acquire_owned() else {
                tracing::warn!(plugin = %plugin, "outbound request refused: the hub's plugin connections are all in use ([hub.plugin_limits] hub_connections)");
                return Err(over_budget(
                    "the hub's outgoing connections for plugins are all in use ([hub.plugin_limits] hub_connections)".into(),
                ));
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
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options)
                .instrument(span.clone())
                .await?;
            span.in_scope(|| {
                tracing::debug!(plugin = %plugin, status = response.status().as_u16(), "response")
            });
            // The connection lives as long as its I/O task: so do its permits.
            let io = async move {
                let result = io.await;
                drop((call_permit, hub_permit));
                result
            };
            Ok((
                response.map(|body| {
                    CountedBody {
                        inner: body.boxed_unsync(),
                        budget,
                    }
                    .boxed_unsync()
                }),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
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
