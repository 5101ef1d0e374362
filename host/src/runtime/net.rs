//! Which hosts a plugin may call: the manifest asks, the operator grants, and a request must
//! pass both, first by name and port, then by the address the name resolves to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The outbound HTTP policy of one configured plugin instance.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    /// Effective host patterns: the operator's grants that the manifest also asks for.
    granted: Vec<HostPattern>,
    /// Exact `host:port` pairs the operator allows to reach private, loopback or link-local
    /// addresses.
    private_ok: Vec<String>,
    /// Operator reroutes: requests for a granted `host[:port]` go to another base URL instead
    /// (a staging API, a proxy, or a local fake in tests), after the grant check by name.
    reroutes: Vec<Reroute>,
}

/// One `host[:port]=URL` reroute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reroute {
    from: HostPattern,
    /// Scheme and authority of the target, e.g. `http://127.0.0.1:8080`.
    pub to: http::Uri,
}

impl std::str::FromStr for Reroute {
    type Err = String;

    /// `api.sendgrid.com=http://127.0.0.1:8080` (any port) or `api.sendgrid.com:443=...`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (from, to) = s
            .split_once('=')
            .ok_or_else(|| format!("reroute `{s}` must be HOST[:PORT]=http(s)://HOST:PORT"))?;
        let to: http::Uri = to
            .trim()
            .parse()
            .map_err(|e| format!("reroute `{s}`: target is not a URL: {e}"))?;
        if to.scheme().is_none() || to.authority().is_none() {
            return Err(format!(
                "reroute `{s}`: target must be a scheme and host, like http://127.0.0.1:8080"
            ));
        }
        let from = HostPattern::parse(from);
        if from.host.contains('*') {
            return Err(format!("reroute `{s}`: the source must be one exact host"));
        }
        Ok(Reroute { from, to })
    }
}

/// `reroute = ["HOST[:PORT]=URL", ...]` in the project file is parsed once, as it is read (the
/// file's line and column come with an error).
impl<'de> serde::Deserialize<'de> for Reroute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a request was refused; the plugin sees `HTTP request denied`, the log sees this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0} is not among the plugin's granted hosts ({1})")]
    NotGranted(String, String),
    #[error("{0} resolves to the non-public address {1}; allow it with `allow_private_hosts = [\"{0}\"]`")]
    PrivateAddress(String, IpAddr),
    #[error("{0} did not resolve: {1}")]
    Unresolved(String, String),
}

impl HttpPolicy {
    /// `manifest_hosts` are what the plugin asks for; `operator_hosts` what the operator grants
    /// (None: everything the manifest asks for by name; a bare `*` is never granted implicitly).
    pub fn new(
        manifest_hosts: &[String],
        operator_hosts: Option<&[String]>,
        allow_private: &[String],
    ) -> Self {
        let asked: Vec<HostPattern> = manifest_hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect();
        let granted = match operator_hosts {
            None => asked.iter().filter(|p| p.host != "*").cloned().collect(),
            Some(list) => list
                .iter()
                .map(|h| HostPattern::parse(h))
                .filter(|g| asked.iter().any(|a| a.covers(g)))
                .collect(),
        };
        HttpPolicy {
            granted,
            private_ok: allow_private
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            reroutes: Vec::new(),
        }
    }

    /// Adds operator reroutes. The target still has to pass the address check, so a loopback
    /// fake needs its exact `host:port` in the private allowance too.
    pub fn with_reroutes(mut self, reroutes: Vec<Reroute>) -> Self {
        self.reroutes = reroutes;
        self
    }

    /// Where a request for `host:port` really goes, when the operator rerouted it.
    pub fn reroute(&self, host: &str, port: u16) -> Option<&http::Uri> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.reroutes
            .iter()
            .find(|r| r.from.host == host && r.from.port.is_none_or(|p| p == port))
            .map(|r| &r.to)
    }

    /// Allows nothing.
    pub fn deny_all() -> Self {
        HttpPolicy::default()
    }

    /// The granted patterns, for `plugin info` and errors.
    pub fn describe(&self) -> String {
        if self.granted.is_empty() {
            return "none".to_string();
        }
        self.granted
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// First check: the request's host and port against the grants.
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), Denied> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.granted.iter().any(|p| p.matches(&host, port)) {
            Ok(())
        } else {
            Err(Denied::NotGranted(
                format!("{host}:{port}"),
                self.describe(),
            ))
        }
    }

    /// Second check: every address the name resolved to must be public, unless the operator
    /// allowed this exact `host:port`.
    pub fn check_addr(&self, host: &str, port: u16, ip: IpAddr) -> Result<(), Denied> {
        let key = format!("{}:{port}", host.trim_end_matches('.').to_ascii_lowercase());
        if is_public(ip) || self.private_ok.contains(&key) {
            Ok(())
        } else {
            Err(Denied::PrivateAddress(key, ip))
        }
    }
}

/// `api.example.com`, `api.example.com:8443`, `*.example.com`, or `*` (any host, any port).
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    fn parse(s: &str) -> Self {
        let s = s.trim().to_ascii_lowercase();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(&s)
            .trim_end_matches('/')
            .to_string();
        // `[::1]:8080`, `host:443`, `host`
        if let Some(rest) = s.strip_prefix('[') {
            if let Some((h, p)) = rest.split_once("]:") {
                return HostPattern {
                    host: h.to_string(),
                    port: p.parse().ok(),
                };
            }
            return HostPattern {
                host: rest.trim_end_matches(']').to_string(),
                port: None,
            };
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => match p.parse() {
                Ok(port) => HostPattern {
                    host: h.to_string(),
                    port: Some(port),
                },
                Err(_) => HostPattern {
                    host: s.clone(),
                    port: None,
                },
            },
            _ => HostPattern {
                host: s,
                port: None,
            },
        }
    }

    fn host_matches(&self, host: &str) -> bool {
        if self.host == "*" {
            return true;
        }
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => self.host == host,
        }
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        if !self.host_matches(host) {
            return false;
        }
        match self.port {
            Some(p) => p == port,
            // A bare `*` means any port; a named host without a port means the web's ports.
            None => self.host == "*" || port == 443 || port == 80,
        }
    }

    /// Whether a grant `g` falls within what this (asked) pattern allows.
    fn covers(&self, g: &HostPattern) -> bool {
        if g.host.starts_with('*') {
            return self == g || self.host == "*";
        }
        match g.port {
            Some(port) => self.matches(&g.host, port),
            None => self.host_matches(&g.host) && (self.port.is_none()),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local, CGNAT,
/// unique-local, documentation, multicast or unspecified). An IPv6 address that carries an IPv4
/// address (see [`embedded_v4`]) is judged by what it carries: on a network with NAT64, a 6to4
/// relay or IPv4-compatible routing, `[64:ff9b::7f00:1]` reaches 127.0.0.1.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Embedded::None => is_public_v6(v6),
            Embedded::One(v4) => is_public_v4(v4),
            // Teredo: the packet goes to the server, and the server relays it to the client.
            Embedded::Two(server, client) => is_public_v4(server) && is_public_v4(client),
            Embedded::Local => false,
        },
    }
}

/// What IPv4 address(es) an IPv6 address embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedded {
    None,
    One(Ipv4Addr),
    /// Teredo's server and (de-obfuscated) client.
    Two(Ipv4Addr, Ipv4Addr),
    /// NAT64 local-use `64:ff9b:1::/48` (RFC 8215): where the IPv4 address sits depends on the
    /// prefix length the network chose, and the prefix is never routed publicly, so the whole
    /// range is non-public.
    Local,
}

/// Unwraps every form that embeds IPv4 in IPv6: IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated
/// `::ffff:0:a.b.c.d` (SIIT), IPv4-compatible `::a.b.c.d` (deprecated, `::` and `::1`
/// included: they unwrap to 0.0.0.0/8, non-public as they should be), NAT64 well-known
/// `64:ff9b::/96` (RFC 6052) and local-use `64:ff9b:1::/48` (RFC 8215), 6to4 `2002::/16`
/// (RFC 3056) and Teredo `2001::/32` (RFC 4380).
fn embedded_v4(v6: Ipv6Addr) -> Embedded {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] // mapped
        | [0, 0, 0, 0, 0xffff, 0, hi, lo] // translated
        | [0, 0, 0, 0, 0, 0, hi, lo] // compatible
        | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Embedded::One(v4(hi, lo)), // NAT64 well-known
        [0x64, 0xff9b, 1, ..] => Embedded::Local,
        [0x2002, hi, lo, ..] => Embedded::One(v4(hi, lo)),
        // Teredo: the server's address in bits 32-63, the client's in bits 96-127, inverted.
        [0x2001, 0, shi, slo, _, _, chi, clo] => Embedded::Two(v4(shi, slo), v4(!chi, !clo)),
        _ => Embedded::None,
    }
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    !(v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still routed inside some networks)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
        || (s[0] == 0x3fff && (s[1] & 0xf000) == 0) // documentation 3fff::/20
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking 2001:2::/48
        || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard-only 100::/64
        || (s[0] == 0x64 && s[1] == 0xff9b)) // the rest of NAT64's 64:ff9b::/32, unassigned
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments 192.0.0/24
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
        || o[0] >= 240)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn manifest_hosts_are_granted_by_default_but_not_star() {
        let p = HttpPolicy::new(&s(&["api.sendgrid.com", "*"]), None, &[]);
        assert!(p.check_name("api.sendgrid.com", 443).is_ok());
        assert!(p.check_name("API.SendGrid.com.", 443).is_ok());
        assert!(p.check_name("api.sendgrid.com", 8080).is_err());
        assert!(p.check_name("evil.com", 443).is_err());
    }

    #[test]
    fn operator_grants_intersect_with_manifest() {
        let p = HttpPolicy::new(
            &s(&["*.api.mailchimp.com"]),
            Some(&s(&["us14.api.mailchimp.com", "evil.com"])),
            &[],
        );
        assert!(p.check_name("us14.api.mailchimp.com", 443).is_ok());
        assert!(p.check_name("us15.api.mailchimp.com", 443).is_err());
        assert!(p.check_name("evil.com", 443).is_err());
        let star = HttpPolicy::new(&s(&["*"]), Some(&s(&["127.0.0.1:9000"])), &[]);
        assert!(star.check_name("127.0.0.1", 9000).is_ok());
        assert!(star.check_name("127.0.0.1", 9001).is_err());
        assert!(HttpPolicy::new(&s(&["*"]), None, &[])
            .check_name("x.com", 443)
            .is_err());
    }

    #[test]
    fn reroutes_apply_to_granted_hosts_by_exact_name() {
        let r: Reroute = "api.sendgrid.com=http://127.0.0.1:9000".parse().unwrap();
        let p = HttpPolicy::new(&s(&["api.sendgrid.com"]), None, &[]).with_reroutes(vec![r]);
        assert_eq!(
            p.reroute("API.sendgrid.com", 443).map(|u| u.to_string()),
            Some("http://127.0.0.1:9000/".to_string())
        );
        assert!(p.reroute("sendgrid.com", 443).is_none());
        assert!("*.x.com=http://a:1".parse::<Reroute>().is_err());
        assert!("api.x.com=/relative".parse::<Reroute>().is_err());
        assert!("api.x.com".parse::<Reroute>().is_err());
    }

    #[test]
    fn wildcard_needs_a_label() {
        let p = HttpPolicy::new(&s(&["*.example.com"]), None, &[]);
        assert!(p.check_name("a.example.com", 443).is_ok());
        assert!(p.check_name("example.com", 443).is_err());
        assert!(p.check_name("badexample.com", 443).is_err());
    }

    #[test]
    fn private_addresses_need_an_exact_allowance() {
        let p = HttpPolicy::new(
            &s(&["*"]),
            Some(&s(&["localhost:9000"])),
            &s(&["localhost:9000"]),
        );
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.check_addr("localhost", 9000, lo).is_ok());
        assert!(p.check_addr("localhost", 9001, lo).is_err());
        assert!(p.check_addr("rebind.example", 443, lo).is_err());
        for bad in [
            "10.0.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in ["1.1.1.1", "2606:4700::1111", "93.184.216.34"] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    fn public(ip: &str) -> bool {
        is_public(ip.parse().unwrap())
    }

    #[test]
    fn ipv4_mapped_and_translated_are_judged_by_their_ipv4() {
        for bad in [
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
        ] {
            assert!(!public(bad), "{bad}");
        }
        assert!(public("::ffff:93.184.216.34"));
        for bad in ["::ffff:0:127.0.0.1", "::ffff:0:192.168.0.1"] {
            assert!(!public(bad), "{bad}");
        }
        assert!(public("::ffff:0:93.184.216.34"));
    }

    #[test]
    fn ipv4_compatible_is_judged_by_its_ipv4() {
        for bad in [
            "::127.0.0.1",
            "::7f00:1",
            "::10.0.0.1",
            "::169.254.169.254",
            "::",
            "::1",
        ] {
            assert!(!public(bad), "{bad}");
        }
        assert!(public("::93.184.216.34"));
    }

    #[test]
    fn nat64_well_known_prefix_is_judged_by_its_ipv4() {
        for bad in [
            "64:ff9b::7f00:1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(!public(bad), "{bad}");
        }
        assert!(public("64:ff9b::93.184.216.34"));
        // Elsewhere in 64:ff9b::/32 nothing is assigned.
        assert!(!public("64:ff9b:0:1::5db8:d822"));
    }

    #[test]
    fn nat64_local_use_prefix_is_never_public() {
        // RFC 8215: 64:ff9b:1::/48; the IPv4 address sits where the local prefix length puts it.
        for bad in [
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:7f00:1::",
            "64:ff9b:1::5db8:d822",
        ] {
            assert!(!public(bad), "{bad}");
        }
    }

    #[test]
    fn six_to_four_is_judged_by_its_ipv4() {
        for bad in [
            "2002:7f00:1::",
            "2002:7f00:0001::1",
            "2002:a00:1::1",
            "2002:a9fe:a9fe::",
        ] {
            assert!(!public(bad), "{bad}");
        }
        assert!(public("2002:5db8:d822::1"));
    }

    #[test]
    fn teredo_is_judged_by_server_and_client() {
        // Server 65.54.227.120 (public); client 127.0.0.1 obfuscated (each bit inverted).
        assert!(!public("2001:0:4136:e378:8000:63bf:80ff:fffe"));
        // Server loopback, client public 93.184.216.34 (inverted a247:27dd).
        assert!(!public("2001:0:7f00:1:8000:63bf:a247:27dd"));
        // Both public.
        assert!(public("2001:0:4136:e378:8000:63bf:a247:27dd"));
    }

    #[test]
    fn other_non_public_ipv6_ranges() {
        for bad in [
            "fec0::1",
            "3fff::1",
            "2001:2::1",
            "100::1",
            "ff02::1",
            "fe80::1",
            "fd12::1",
        ] {
            assert!(!public(bad), "{bad}");
        }
        assert!(public("2a00:1450:4001::1"));
    }
}
