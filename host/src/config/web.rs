//! The settings of the tracking API's web face: which browser origins a source takes
//! (`[sources.NAME] allowed_origins`) and which peers may speak for a client
//! (`[hub] trusted_proxies`). Both are checked when the file is read, so a typo is an error with
//! its line and column, not an origin that never matches.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// `allowed_origins = ["https://shop.example"]` or `"*"`: the browser origins whose pages may
/// send this source's events. Absent or empty: no browser page may (server SDKs send no
/// `Origin` header and are not affected).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    #[default]
    None,
    /// `"*"`: any origin (the write key is public in a page anyway; this only drops the check).
    Any,
    /// Origins as browsers send them: `scheme://host[:port]`, lowercase, no default port.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Whether a request whose `Origin` header is `origin` may send this source's events.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::None => false,
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.iter().any(|o| o == origin),
        }
    }
}

/// The form browsers put in `Origin` (RFC 6454 serialisation), or why `text` is not an origin.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text.trim())
        .map_err(|e| format!("`{text}` is not an origin like https://shop.example ({e})"))?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    let origin = url.origin();
    if !bare || !origin.is_tuple() || !url.username().is_empty() {
        return Err(format!(
            "`{text}` is not an origin: write scheme://host[:port] only, like https://shop.example"
        ));
    }
    Ok(origin.ascii_serialization())
}

impl<'de> Deserialize<'de> for AllowedOrigins {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let list = match Raw::deserialize(d)? {
            Raw::One(s) if s == "*" => return Ok(AllowedOrigins::Any),
            Raw::One(s) => vec![s],
            Raw::Many(list) if list.iter().any(|s| s == "*") => return Ok(AllowedOrigins::Any),
            Raw::Many(list) => list,
        };
        let list = list
            .iter()
            .map(|s| normalize_origin(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::de::Error::custom)?;
        Ok(if list.is_empty() {
            AllowedOrigins::None
        } else {
            AllowedOrigins::List(list)
        })
    }
}

/// `trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]`: peers whose `X-Forwarded-For` (and
/// `X-Forwarded-Proto`/`-Host`) the hub believes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client's address: `peer` itself, unless `peer` is a trusted proxy; then the
    /// `X-Forwarded-For` hops are read from the nearest (rightmost) back, and the first one that
    /// is not itself a trusted proxy is the client (a client can write anything at the left of
    /// the header, so hops left of the first untrusted one are never believed). If every hop is
    /// trusted, the leftmost is taken.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.contains(peer) {
            return canonical(peer);
        }
        let Some(header) = forwarded_for else {
            return canonical(peer);
        };
        let hops: Vec<IpAddr> = header
            .split(',')
            .map_while(|hop| parse_hop(hop.trim()))
            .collect();
        hops.iter()
            .rev()
            .find(|ip| !self.contains(**ip))
            .or(hops.first())
            .copied()
            .map(canonical)
            .unwrap_or(canonical(peer))
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        serde::de::Error::custom(format!(
                            "trusted_proxies: `{s}` is not an address or CIDR range like 10.0.0.0/8"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_as_browsers_send_them() {
        let parse = |toml: &str| {
            #[derive(Deserialize)]
            struct T {
                o: AllowedOrigins,
            }
            toml::from_str::<T>(toml).map(|t| t.o)
        };
        assert_eq!(parse(r#"o = "*""#).unwrap(), AllowedOrigins::Any);
        let list = parse(r#"o = ["HTTPS://Shop.Example:443", "http://127.0.0.1:8080/"]"#).unwrap();
        assert_eq!(
            list,
            AllowedOrigins::List(vec![
                "https://shop.example".into(),
                "http://127.0.0.1:8080".into()
            ])
        );
        assert!(list.allows("http://127.0.0.1:8080"));
        assert!(!list.allows("http://127.0.0.1:8081"));
        assert!(!list.allows("null"));
        assert!(!AllowedOrigins::None.allows("https://shop.example"));
        let e = parse(r#"o = ["https://shop.example/checkout"]"#).unwrap_err();
        assert!(e.to_string().contains("scheme://host[:port] only"), "{e}");
        assert!(parse(r#"o = ["shop.example"]"#).is_err());
    }

    #[test]
    fn client_ip_reads_forwarded_for_only_from_trusted_proxies() {
        #[derive(Deserialize)]
        struct T {
            p: TrustedProxies,
        }
        let t: T = toml::from_str(r#"p = ["10.0.0.0/8", "127.0.0.1"]"#).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = t.p;
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            p.client_ip(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        // Through two trusted proxies: the first untrusted hop from the right.
        let xff = Some("6.6.6.6, 198.51.100.7, 10.1.2.3");
        assert_eq!(p.client_ip(ip("127.0.0.1"), xff), ip("198.51.100.7"));
        assert_eq!(
            p.client_ip(ip("::ffff:127.0.0.1"), Some("198.51.100.7:5555")),
            ip("198.51.100.7")
        );
        assert_eq!(p.client_ip(ip("127.0.0.1"), None), ip("127.0.0.1"));
        assert_eq!(
            p.client_ip(ip("127.0.0.1"), Some("10.0.0.1, 10.0.0.2")),
            ip("10.0.0.1")
        );
        assert_eq!(
            p.client_ip(ip("127.0.0.1"), Some("garbage")),
            ip("127.0.0.1")
        );
        assert!(toml::from_str::<T>(r#"p = ["10.0.0.0/33"]"#).is_err());
    }
}
