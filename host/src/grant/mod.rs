//! What an operator grants a module, and nothing else: the HTTP destinations it may call and the
//! secrets it may read. Grants are given by the operator (`wasmq grant`), never by an invocation,
//! and stored in the broker beside the module. A module with no grant reaches nothing.
//!
//! A destination rule is `scheme://host[:port]`:
//!
//! - `host` is a name (`api.partner.example`, matched exactly, case-insensitively), a leading
//!   wildcard (`*.cdn.example`: any name below `cdn.example`, not `cdn.example` itself), an IP
//!   address (`127.0.0.1`, `[::1]`) or a range (`10.0.0.0/8`);
//! - without a port, the rule covers the scheme's default port only (80 or 443).
//!
//! Names resolve to addresses when a request is made; an address that is not public (loopback,
//! private, link-local, …) is refused unless a rule names that address or its range
//! ([`Grant::allows_address`]), so a public name cannot be pointed at the worker's own network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most destination rules one grant may hold.
pub const MAX_RULES: usize = 64;

/// Most secrets one grant may name.
pub const MAX_SECRETS: usize = 64;

/// Longest secret name, in bytes.
pub const MAX_SECRET_NAME: usize = 128;

/// What one module may reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// HTTP destinations (`https://api.partner.example`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// Names of secrets it may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// Why a grant was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrantError(String);

impl GrantError {
    /// A refusal saying `why`.
    pub fn new(why: impl Into<String>) -> Self {
        GrantError(why.into())
    }
}

impl Grant {
    /// Whether the grant gives nothing at all.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.secrets.is_empty()
    }

    /// Checks the counts and the secret names.
    pub fn check(&self) -> Result<(), GrantError> {
        if self.http.len() > MAX_RULES {
            return Err(GrantError(format!(
                "a grant holds at most {MAX_RULES} HTTP destinations ({} given)",
                self.http.len()
            )));
        }
        if self.secrets.len() > MAX_SECRETS {
            return Err(GrantError(format!(
                "a grant names at most {MAX_SECRETS} secrets ({} given)",
                self.secrets.len()
            )));
        }
        for name in &self.secrets {
            check_secret_name(name)?;
        }
        Ok(())
    }

    /// Adds `other`'s rules and secrets that this grant lacks.
    pub fn merge(&mut self, other: &Grant) {
        for rule in &other.http {
            if !self.http.contains(rule) {
                self.http.push(rule.clone());
            }
        }
        for secret in &other.secrets {
            if !self.secrets.contains(secret) {
                self.secrets.push(secret.clone());
            }
        }
        self.sort();
    }

    /// Orders the rules by their text and the secrets by name, as every listing shows them.
    pub fn sort(&mut self) {
        self.http.sort_by_cached_key(|r| r.to_string());
        self.secrets.sort();
    }

    /// Removes `other`'s rules and secrets from this grant.
    pub fn remove(&mut self, other: &Grant) {
        self.http.retain(|r| !other.http.contains(r));
        self.secrets.retain(|s| !other.secrets.contains(s));
    }

    /// Whether a request to `host` on `port` over `scheme` is covered by a rule (before its
    /// addresses are known). `host` is the request's host: a name or an IP literal (IPv6 with
    /// or without brackets).
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        let host = Host::of_request(host);
        self.http
            .iter()
            .any(|rule| rule.covers(scheme, &host, port))
    }

    /// Whether the request may connect to `address`: a public address always may (once the
    /// request itself is allowed); any other only when a rule for this scheme and port names it
    /// or its range.
    pub fn allows_address(&self, scheme: Scheme, address: IpAddr, port: u16) -> bool {
        is_public(address)
            || self.http.iter().any(|rule| {
                rule.scheme == scheme
                    && rule.port() == port
                    && matches!(&rule.host, HostPattern::Net(net) if net.contains(address))
            })
    }
}

/// Checks a secret's name: 1–128 bytes of ASCII letters, digits and `_`, not starting with a
/// digit (the shape of an environment variable, which is what operators expect).
pub fn check_secret_name(name: &str) -> Result<(), GrantError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(GrantError(format!(
            "secret name `{}` must be 1–{MAX_SECRET_NAME} ASCII letters, digits and `_`, not starting with a digit",
            name.escape_debug()
        )))
    }
}

/// Checks a destination host as an egress limit names it — a DNS name or an IP address — and
/// returns it the way requests are matched against it: lowercase, without a trailing dot or
/// IPv6 brackets.
pub fn normalize_host(host: &str) -> Result<String, GrantError> {
    if let Host::Name(_) = Host::of_request(host) {
        check_name(host).map_err(|why| GrantError(format!("`{}` {why}", host.escape_debug())))?;
    }
    Ok(canonical_host(host))
}

/// A request's host the way grants and egress limits match it: an IP address without
/// brackets, or a name lowercase without a trailing dot.
pub fn canonical_host(host: &str) -> String {
    match Host::of_request(host) {
        Host::Address(ip) => ip.to_string(),
        Host::Name(name) => name,
    }
}

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP (port 80 by default).
    Http,
    /// HTTP over TLS (port 443 by default).
    Https,
}

impl Scheme {
    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One destination a module may call: `scheme://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpRule {
    scheme: Scheme,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HostPattern {
    /// An exact name, lowercase, without a trailing dot.
    Name(String),
    /// `*.suffix`: stores `.suffix`.
    Below(String),
    /// An address or a range.
    Net(IpNet),
}

/// The request's host, parsed once.
enum Host {
    Name(String),
    Address(IpAddr),
}

impl Host {
    fn of_request(host: &str) -> Host {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => Host::Address(ip),
            Err(_) => Host::Name(host.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

impl HttpRule {
    /// The port the rule covers.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    fn covers(&self, scheme: Scheme, host: &Host, port: u16) -> bool {
        self.scheme == scheme
            && self.port() == port
            && match (&self.host, host) {
                (HostPattern::Name(n), Host::Name(h)) => n == h,
                (HostPattern::Below(suffix), Host::Name(h)) => {
                    h.len() > suffix.len() && h.ends_with(suffix.as_str())
                }
                (HostPattern::Net(net), Host::Address(ip)) => net.contains(*ip),
                _ => false,
            }
    }
}

impl fmt::Display for HttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            HostPattern::Name(n) => write!(f, "{n}")?,
            HostPattern::Below(s) => write!(f, "*{s}")?,
            HostPattern::Net(net) => write!(f, "{net}")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl FromStr for HttpRule {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            GrantError(format!(
                "HTTP destination `{}` {why}; write `https://api.example`, `https://*.example.com:8443`, `http://10.0.0.7:8080` or `http://10.0.0.0/8`",
                s.escape_debug()
            ))
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("has no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("must start with `http://` or `https://`")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // `host[/bits][:port]`, an IPv6 host in brackets.
        let (host, bits, port) = {
            let (host, after) = match rest.strip_prefix('[') {
                Some(r) => {
                    let end = r.find(']').ok_or_else(|| bad("has an unclosed `[`"))?;
                    (&r[..end], &r[end + 1..])
                }
                None => rest.split_at(rest.find([':', '/']).unwrap_or(rest.len())),
            };
            let (bits, port) = match after.strip_prefix('/') {
                Some(r) => {
                    let (b, p) = r.split_at(r.find(':').unwrap_or(r.len()));
                    (Some(b), p)
                }
                None => (None, after),
            };
            let port = match port.strip_prefix(':') {
                Some(p) => Some(p),
                None if port.is_empty() => None,
                None => return Err(bad("names a path")),
            };
            (host, bits, port)
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("has a port that is not 1–65535"))
            })
            .transpose()?;
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if host.contains(['?', '#', '@']) {
            return Err(bad("names more than a scheme, a host and a port"));
        }
        let pattern = if let Ok(address) = host.parse::<IpAddr>() {
            let address = canonical(address);
            let full = if address.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= full)
                    .ok_or_else(|| bad("names a range whose prefix length does not parse"))?,
                None => full,
            };
            HostPattern::Net(IpNet { address, bits })
        } else if bits.is_some() {
            return Err(bad("names a path or a range that does not parse"));
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_name(suffix).map_err(|why| bad(&why))?;
            HostPattern::Below(format!(".{}", suffix.to_ascii_lowercase()))
        } else {
            check_name(host).map_err(|why| bad(&why))?;
            HostPattern::Name(host.trim_end_matches('.').to_ascii_lowercase())
        };
        Ok(HttpRule {
            scheme,
            host: pattern,
            port,
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.');
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err("has a host that is not a DNS name".to_owned())
    }
}

impl Serialize for HttpRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HttpRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An address range: an address and how many leading bits are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct IpNet {
    address: IpAddr,
    bits: u8,
}

impl IpNet {
    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    a[..whole] == b[..whole]
        && (rest == 0 || {
            let mask = 0xffu8 << (8 - rest);
            a[whole] & mask == b[whole] & mask
        })
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.address.is_ipv4() { 32 } else { 128 };
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}")?,
            IpAddr::V6(a) => write!(f, "[{a}]")?,
        }
        if self.bits != full {
            write!(f, "/{}", self.bits)?;
        }
        Ok(())
    }
}

/// IPv4 written as IPv6 (`::ffff:127.0.0.1`) is IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is an address on the public internet: not loopback, private, link-local,
/// shared (CGNAT), documentation, benchmarking, multicast, broadcast, reserved or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                    // "this network"
        || a == 10                              // private
        || a == 127                             // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)               // link-local
        || (a == 172 && (16..32).contains(&b))  // private
        || (a == 192 && b == 0 && c == 0)       // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)       // documentation
        || (a == 192 && b == 168)               // private
        || (a == 198 && (18..20).contains(&b))  // benchmarking
        || (a == 198 && b == 51 && c == 100)    // documentation
        || (a == 203 && b == 0 && c == 113)     // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4() {
        // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::a.b.c.d) reach IPv4.
        if s[..6] == [0; 6] {
            return !ip.is_loopback() && !ip.is_unspecified() && is_public_v4(v4);
        }
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (Teredo, ORCHID, …)
        || s[0] == 0x0100 && s[1..4] == [0; 3]) // discard-only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> HttpRule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn grant(rules: &[&str]) -> Grant {
        Grant {
            http: rules.iter().map(|r| rule(r)).collect(),
            secrets: Vec::new(),
        }
    }

    #[test]
    fn rules_round_trip_through_their_text() {
        for s in [
            "https://api.partner.example",
            "https://*.cdn.example:443",
            "http://10.0.0.7:8080",
            "http://10.0.0.0/8",
            "http://[::1]:8080",
            "https://[fd00::]/8",
        ] {
            assert_eq!(rule(s).to_string(), s);
        }
        assert_eq!(
            rule("HTTPS://API.Example./").to_string(),
            "https://api.example"
        );
    }

    #[test]
    fn malformed_rules_are_refused_naming_the_problem() {
        for (s, why) in [
            ("api.example", "has no scheme"),
            ("ftp://api.example", "must start with"),
            ("https://", "has no host"),
            ("https://api.example:0", "port"),
            ("https://api.example:99999", "port"),
            ("https://api.example/path", "path"),
            ("https://user@api.example", "more than"),
            ("https://a..b", "not a DNS name"),
            ("http://10.0.0.0/33", "prefix length"),
            ("http://[::1", "unclosed"),
        ] {
            let err = s.parse::<HttpRule>().unwrap_err().to_string();
            assert!(err.contains(why), "{s}: {err}");
        }
    }

    #[test]
    fn a_rule_covers_its_scheme_host_and_port_only() {
        let g = grant(&["https://api.partner.example", "https://*.cdn.example:8443"]);
        assert!(g.allows(Scheme::Https, "api.partner.example", 443));
        assert!(g.allows(Scheme::Https, "API.Partner.Example.", 443));
        assert!(!g.allows(Scheme::Http, "api.partner.example", 80));
        assert!(!g.allows(Scheme::Https, "api.partner.example", 8443));
        assert!(!g.allows(Scheme::Https, "evil.partner.example", 443));
        assert!(!g.allows(Scheme::Https, "api.partner.example.evil", 443));
        assert!(g.allows(Scheme::Https, "img.cdn.example", 8443));
        assert!(g.allows(Scheme::Https, "a.b.cdn.example", 8443));
        assert!(!g.allows(Scheme::Https, "cdn.example", 8443));
        assert!(!g.allows(Scheme::Https, "evilcdn.example", 8443));
        assert!(!g.allows(Scheme::Https, "img.cdn.example", 443));
        assert!(!Grant::default().allows(Scheme::Https, "api.partner.example", 443));
    }

    #[test]
    fn non_public_addresses_need_a_rule_naming_them() {
        let named = grant(&["http://partner.test:8080"]);
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(named.allows(Scheme::Http, "partner.test", 8080));
        assert!(!named.allows_address(Scheme::Http, loopback, 8080));
        assert!(named.allows_address(Scheme::Http, "93.184.216.34".parse().unwrap(), 8080));

        let explicit = grant(&["http://partner.test:8080", "http://127.0.0.1:8080"]);
        assert!(explicit.allows_address(Scheme::Http, loopback, 8080));
        assert!(!explicit.allows_address(Scheme::Http, loopback, 8081));
        assert!(!explicit.allows_address(Scheme::Http, "127.0.0.2".parse().unwrap(), 8080));
        assert!(explicit.allows(Scheme::Http, "127.0.0.1", 8080));
        assert!(explicit.allows_address(Scheme::Http, "::ffff:127.0.0.1".parse().unwrap(), 8080));

        let range = grant(&["http://10.0.0.0/8:8080", "http://[fd00::]/8:8080"]);
        assert!(range.allows(Scheme::Http, "10.2.3.4", 8080));
        assert!(range.allows(Scheme::Http, "[fd12::1]", 8080));
        assert!(!range.allows(Scheme::Http, "11.0.0.1", 8080));
    }

    #[test]
    fn the_address_classes_an_attacker_would_aim_at_are_not_public() {
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(s.parse().unwrap()), "{s} counted as public");
        }
        for s in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111"] {
            assert!(is_public(s.parse().unwrap()), "{s} counted as not public");
        }
    }

    #[test]
    fn hosts_are_normalized_as_requests_are_matched() {
        assert_eq!(
            normalize_host("API.Partner.Example.").unwrap(),
            "api.partner.example"
        );
        assert_eq!(normalize_host("[::1]").unwrap(), "::1");
        assert_eq!(normalize_host("10.0.0.7").unwrap(), "10.0.0.7");
        assert!(normalize_host("https://api.example").is_err());
        assert!(normalize_host("api.example:443").is_err());
        assert!(normalize_host("").is_err());
    }

    #[test]
    fn grants_check_their_counts_and_secret_names() {
        let mut g = Grant {
            secrets: vec!["PARTNER_TOKEN".into()],
            ..Grant::default()
        };
        assert!(g.check().is_ok());
        for bad in ["", "1ABC", "A-B", "A B", &"X".repeat(129)] {
            g.secrets = vec![bad.to_owned()];
            assert!(g.check().is_err(), "{bad:?}");
        }
        g.secrets.clear();
        g.http = (0..=MAX_RULES)
            .map(|i| rule(&format!("https://h{i}.example")))
            .collect();
        assert!(g.check().unwrap_err().to_string().contains("at most 64"));
    }
}
