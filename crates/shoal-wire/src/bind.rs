//! Where the driver listens: the address spec users write (`"0.0.0.0"`, `"10.1.2.3:40000-40100"`,
//! `"eth0"`, `":40000-40100"`, `""` for automatic), the default interface choice, and binding
//! the first free port of a range.

use crate::error::ServerError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, ToSocketAddrs};
use std::str::FromStr;

/// The host part of a [`BindSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// The address of the interface carrying the default route (see [`default_address`]).
    Auto,
    /// This address; an unspecified one (`0.0.0.0`, `::`) listens on all interfaces and
    /// advertises the automatic choice.
    Ip(IpAddr),
    /// The first IPv4 address (else global IPv6 address) of this interface.
    Interface(String),
}

/// A listening address: host and an inclusive port range (`0..=0`: any free port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindSpec {
    pub host: Host,
    pub ports: (u16, u16),
}

impl Default for BindSpec {
    fn default() -> Self {
        BindSpec {
            host: Host::Auto,
            ports: (0, 0),
        }
    }
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Auto => f.write_str("auto")?,
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            Host::Ip(ip) => write!(f, "{ip}")?,
            Host::Interface(name) => f.write_str(name)?,
        }
        match self.ports {
            (0, 0) => Ok(()),
            (a, b) if a == b => write!(f, ":{a}"),
            (a, b) => write!(f, ":{a}-{b}"),
        }
    }
}

impl FromStr for BindSpec {
    type Err = ServerError;

    fn from_str(spec: &str) -> Result<Self, ServerError> {
        let bad = |reason: &str| ServerError::BadAddress {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let text = spec.trim();
        // A bare IPv6 address has several colons and no port.
        if let Ok(ip) = text.parse::<Ipv6Addr>() {
            return Ok(BindSpec {
                host: Host::Ip(IpAddr::V6(ip)),
                ports: (0, 0),
            });
        }
        let (host, ports) = if let Some(rest) = text.strip_prefix('[') {
            let (ip, tail) = rest.split_once(']').ok_or_else(|| bad("'[' without ']'"))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| bad("not an IPv6 address in [...]"))?;
            let ports = match tail {
                "" => None,
                t => Some(
                    t.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':' after ']'"))?,
                ),
            };
            (Host::Ip(IpAddr::V6(ip)), ports)
        } else {
            let (host, ports) = match text.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (text, None),
            };
            let host = if host.is_empty() || host == "auto" {
                Host::Auto
            } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
                Host::Ip(IpAddr::V4(ip))
            } else if is_interface_name(host) {
                Host::Interface(host.to_string())
            } else {
                return Err(bad("not an IPv4 address, [IPv6] address or interface name"));
            };
            (host, ports)
        };
        let ports = match ports {
            None => (0, 0),
            Some(p) => parse_ports(p).map_err(|r| bad(&r))?,
        };
        Ok(BindSpec { host, ports })
    }
}

fn is_interface_name(name: &str) -> bool {
    // Linux limits names to 15 bytes (IFNAMSIZ - 1); they contain no '/' or whitespace.
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c))
}

fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number (0-65535)"))
    };
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("port range {lo}-{hi} is empty"));
    }
    if lo == 0 && hi != 0 {
        return Err("port 0 (any free port) cannot start a range".into());
    }
    Ok((lo, hi))
}

/// The address workers are told to connect to when nothing is configured, and why it was chosen:
/// the interface carrying the default route, else the address the host name resolves to, else
/// any interface's address, and loopback only if nothing else exists.
pub fn default_address() -> (IpAddr, String) {
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    for (route_file, v4) in [("/proc/net/route", true), ("/proc/net/ipv6_route", false)] {
        let Ok(table) = std::fs::read_to_string(route_file) else {
            continue;
        };
        for iface in default_route_interfaces(&table, v4) {
            if let Some(ip) = interface_address(&interfaces, &iface, v4) {
                return (ip, format!("{iface}, the interface of the default route"));
            }
        }
    }
    if let Some(name) = host_name() {
        if let Ok(addrs) = (name.as_str(), 0).to_socket_addrs() {
            let mut addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            addrs.sort_by_key(|ip| ip.is_ipv6()); // IPv4 first
            if let Some(ip) = addrs.into_iter().find(|ip| !ip.is_loopback()) {
                return (ip, format!("the address of host name {name}"));
            }
        }
    }
    let mut others: Vec<&if_addrs::Interface> = interfaces
        .iter()
        .filter(|i| !i.is_loopback() && !i.is_link_local())
        .collect();
    others.sort_by_key(|i| i.ip().is_ipv6());
    if let Some(i) = others.first() {
        return (
            i.ip(),
            format!("{}, the first interface with an address", i.name),
        );
    }
    (
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "loopback: this host has no other address, so only local workers can connect".into(),
    )
}

/// Interfaces of default routes in a `/proc/net/route` (`v4`) or `/proc/net/ipv6_route` table,
/// lowest metric first.
fn default_route_interfaces(table: &str, v4: bool) -> Vec<String> {
    let mut routes: Vec<(u64, String)> = table
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if v4 {
                // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
                let (iface, dest, flags, metric, mask) = (
                    cols.first()?,
                    cols.get(1)?,
                    cols.get(3)?,
                    cols.get(6)?,
                    cols.get(7)?,
                );
                let up = u32::from_str_radix(flags, 16).ok()? & 0x1 != 0;
                if *dest != "00000000" || *mask != "00000000" || !up {
                    return None;
                }
                Some((metric.parse().ok()?, iface.to_string()))
            } else {
                // dest dest_len src src_len next_hop metric refcnt use flags iface
                let (dest, len, metric, iface) =
                    (cols.first()?, cols.get(1)?, cols.get(5)?, cols.get(9)?);
                if dest.bytes().any(|b| b != b'0') || *len != "00" || *iface == "lo" {
                    return None;
                }
                Some((u64::from_str_radix(metric, 16).ok()?, iface.to_string()))
            }
        })
        .collect();
    routes.sort();
    routes.into_iter().map(|(_, iface)| iface).collect()
}

fn interface_address(interfaces: &[if_addrs::Interface], name: &str, v4: bool) -> Option<IpAddr> {
    interfaces
        .iter()
        .filter(|i| i.name == name && !i.is_loopback() && !i.is_link_local())
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() == v4)
}

pub(crate) fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The addresses a spec resolves to: where to bind, what to tell workers, and why.
pub(crate) fn resolve(spec: &BindSpec) -> Result<(IpAddr, IpAddr, String), ServerError> {
    match &spec.host {
        Host::Auto => {
            let (ip, why) = default_address();
            Ok((ip, ip, why))
        }
        Host::Ip(ip) if ip.is_unspecified() => {
            let (advertised, why) = default_address();
            Ok((
                *ip,
                advertised,
                format!("all interfaces; advertising {why}"),
            ))
        }
        Host::Ip(ip) => Ok((*ip, *ip, "as configured".into())),
        Host::Interface(name) => {
            let interfaces = if_addrs::get_if_addrs().map_err(|e| ServerError::BadAddress {
                spec: spec.to_string(),
                reason: format!("cannot list network interfaces: {e}"),
            })?;
            let found = interface_address(&interfaces, name, true)
                .or_else(|| interface_address(&interfaces, name, false))
                .or_else(|| {
                    // Loopback only when asked for by name ("lo").
                    interfaces.iter().find(|i| &i.name == name).map(|i| i.ip())
                });
            match found {
                Some(ip) => Ok((ip, ip, format!("interface {name}"))),
                None => {
                    let mut names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
                    names.sort();
                    names.dedup();
                    Err(ServerError::BadAddress {
                        spec: spec.to_string(),
                        reason: format!(
                            "no interface {name:?} with an address here (interfaces: {})",
                            names.join(", ")
                        ),
                    })
                }
            }
        }
    }
}

/// Bind the first free port of the spec's range on `ip`.
pub(crate) fn bind(ip: IpAddr, spec: &BindSpec) -> Result<TcpListener, ServerError> {
    let (lo, hi) = spec.ports;
    let mut last = None;
    for port in lo..=hi {
        match TcpListener::bind((ip, port)) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => {
                return Err(ServerError::Bind {
                    addr: std::net::SocketAddr::new(ip, port).to_string(),
                    source: e,
                })
            }
        }
    }
    let range = if lo == hi {
        format!("{lo}")
    } else {
        format!("{lo}-{hi}")
    };
    let host = match ip {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Err(ServerError::Bind {
        addr: format!("{host}:{range}"),
        source: last.unwrap_or_else(|| std::io::Error::other("empty port range")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> BindSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn specs_parse_into_host_and_ports() {
        assert_eq!(spec(""), BindSpec::default());
        assert_eq!(spec("auto"), BindSpec::default());
        assert_eq!(
            spec("0.0.0.0"),
            BindSpec {
                host: Host::Ip(Ipv4Addr::UNSPECIFIED.into()),
                ports: (0, 0)
            }
        );
        assert_eq!(
            spec("10.1.2.3:40000-40100"),
            BindSpec {
                host: Host::Ip(Ipv4Addr::new(10, 1, 2, 3).into()),
                ports: (40000, 40100)
            }
        );
        assert_eq!(
            spec("eth0:5000"),
            BindSpec {
                host: Host::Interface("eth0".into()),
                ports: (5000, 5000)
            }
        );
        assert_eq!(spec(":40000-40100").host, Host::Auto);
        assert_eq!(spec("::").host, Host::Ip(Ipv6Addr::UNSPECIFIED.into()));
        assert_eq!(spec("[::1]:7").ports, (7, 7));
        for s in [
            "",
            "0.0.0.0",
            "10.1.2.3:40000-40100",
            "eth0:5000",
            "[::1]:7",
        ] {
            let parsed = spec(s);
            assert_eq!(spec(&parsed.to_string()), parsed, "{s}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, what) in [
            ("1.2.3.4:99999", "not a port"),
            ("1.2.3.4:10-5", "empty"),
            ("1.2.3.4:0-5", "cannot start a range"),
            ("[::1", "without ']'"),
            ("no/such thing", "interface name"),
        ] {
            let err = s.parse::<BindSpec>().unwrap_err().to_string();
            assert!(err.contains(what), "{s}: {err}");
            assert!(err.contains("hint:"), "{s}: {err}");
        }
    }

    #[test]
    fn default_routes_are_read_from_the_kernel_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                  eth1\t00000000\t010200C0\t0003\t0\t0\t600\t00000000\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\n\
                  eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                  down\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\n";
        assert_eq!(default_route_interfaces(v4, true), ["eth0", "eth1"]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                  fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ens3\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(default_route_interfaces(v6, false), ["ens3"]);
    }

    #[test]
    fn the_default_address_is_not_loopback_when_the_host_has_another() {
        let (ip, why) = default_address();
        let others = if_addrs::get_if_addrs()
            .unwrap()
            .iter()
            .any(|i| !i.is_loopback() && !i.is_link_local());
        assert_eq!(ip.is_loopback(), !others, "{ip} ({why})");
    }

    #[test]
    fn a_port_range_skips_ports_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let range = BindSpec {
            host: Host::Ip(Ipv4Addr::LOCALHOST.into()),
            ports: (port, port.saturating_add(20)),
        };
        let got = bind(Ipv4Addr::LOCALHOST.into(), &range).unwrap();
        assert_ne!(got.local_addr().unwrap().port(), port);
        let single = BindSpec {
            ports: (port, port),
            ..range
        };
        let err = bind(Ipv4Addr::LOCALHOST.into(), &single)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}
