//! Who the client is: the TCP peer, or, when the peer is a trusted proxy
//! (`auth.trusted_proxies`: a tunnel such as cloudflared or ngrok, a reverse proxy), the address
//! its forwarding header names. The failure limit and the per-address connection limit count
//! by this address, so that one stranger behind a tunnel does not use up everyone's budget.
//!
//! Headers are read only from a trusted peer: from anyone else they are the client's own word,
//! and a client that could name its address would get a fresh budget per request. Order:
//! `CF-Connecting-IP` (Cloudflare's, one address), then `Forwarded` (RFC 7239), then
//! `X-Forwarded-For`; in a list, the last entry that is not itself a trusted proxy (entries
//! further left were written by the client, and may be forged). A header that cannot be read
//! leaves the peer's address.

use std::net::{IpAddr, SocketAddr};

use warp::http::HeaderMap;
use warp::Filter;

/// The client's address, as the module documentation says.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let values =
        |name: &str| -> Vec<&str> { headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>() };
    if let Some(ip) = values("cf-connecting-ip").last().and_then(|v| v.trim().parse().ok()) {
        return ip;
    }
    // Entries in the order the hops added them (several header lines are one list).
    let forwarded: Vec<Option<IpAddr>> = values("forwarded")
        .iter()
        .flat_map(|line| line.split(','))
        .map(|element| element.split(';').find_map(|pair| forwarded_for(pair.trim())).flatten())
        .collect();
    let forwarded = if forwarded.is_empty() {
        values("x-forwarded-for").iter().flat_map(|l| l.split(',')).map(|e| parse_node(e.trim())).collect()
    } else {
        forwarded
    };
    // From the right: the nearest hop that is not a trusted proxy itself.
    for entry in forwarded.iter().rev() {
        match entry {
            Some(ip) if trusted.contains(ip) => continue,
            Some(ip) => return *ip,
            None => return peer,
        }
    }
    peer
}

/// The address of a `for=` pair of a `Forwarded` element, if it is one.
fn forwarded_for(pair: &str) -> Option<Option<IpAddr>> {
    let (key, value) = pair.split_once('=')?;
    key.trim().eq_ignore_ascii_case("for").then(|| parse_node(value.trim().trim_matches('"')))
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_node(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| text.strip_prefix('[').and_then(|rest| rest.split_once(']')).and_then(|(ip, _)| ip.parse().ok()))
}

/// The client's address of a request (see [`client_ip`]); `None` when it did not come over TCP.
pub fn client(
    trusted: std::sync::Arc<[IpAddr]>,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = std::convert::Infallible> + Clone {
    super::listen::peer().and(warp::header::headers_cloned()).map(
        move |peer: Option<SocketAddr>, headers: HeaderMap| peer.map(|peer| client_ip(peer.ip(), &headers, &trusted)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn headers_count_only_from_a_trusted_proxy() {
        let trusted = [ip("127.0.0.1")];
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("10.0.0.2"), "an untrusted peer's header is ignored");
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"), "no proxy trusted: the default");
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client_and_forged_entries_are_skipped() {
        let trusted = [ip("127.0.0.1"), ip("10.0.0.1")];
        let peer = ip("127.0.0.1");
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.1")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("198.51.100.7"));
        let h = headers(&[("forwarded", "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("2001:db8::7"));
        let h = headers(&[("cf-connecting-ip", "198.51.100.8"), ("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(client_ip(peer, &h, &trusted), ip("198.51.100.8"));
        let h = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(client_ip(peer, &h, &trusted), peer, "unreadable: the peer");
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }
}
