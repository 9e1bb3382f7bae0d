//! Limits at the HTTP door: the per-client-address rate limit of the REST
//! routes, and who the client is behind a proxy. A request from a proxy
//! named in `TRUSTED_PROXIES` is the address its `X-Forwarded-For` names
//! (the rightmost entry that is not itself a trusted proxy); from anyone
//! else, the socket's peer address, whatever headers it sends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Most client addresses tracked at once; past it, idle ones are forgotten.
const MAX_TRACKED: usize = 100_000;
/// An address unseen this long has a full bucket again: it can be forgotten.
const IDLE: Duration = Duration::from_secs(60);

/// The proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`:
/// addresses or CIDR ranges, comma-separated).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("TRUSTED_PROXIES: {s:?} is not an address or a CIDR range")
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client's address: `peer`, unless `peer` is a trusted proxy and
    /// `forwarded` (the `X-Forwarded-For` header) names someone before it.
    pub fn client(&self, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
        if !self.trusts(&peer) {
            return peer;
        }
        let Some(forwarded) = forwarded else {
            return peer;
        };
        let mut client = peer;
        for entry in forwarded.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !self.trusts(&ip) {
                break;
            }
        }
        client
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per client address.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`; false when it is over its rate.
    pub fn allow(&self, client: IpAddr) -> bool {
        self.allow_at(client, Instant::now())
    }

    fn allow_at(&self, client: IpAddr, now: Instant) -> bool {
        // A poisoned lock only means another request panicked mid-update of a
        // counter: the map is still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&client) {
            buckets.retain(|_, b| now.duration_since(b.at) < IDLE);
            if buckets.len() >= MAX_TRACKED {
                // Every tracked address is busy: forget them all rather than grow.
                buckets.clear();
            }
        }
        let b = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let t = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let xff = Some("203.0.113.9, 10.1.2.3");
        assert_eq!(t.client(ip("127.0.0.1"), xff), ip("203.0.113.9"));
        assert_eq!(
            t.client(ip("198.51.100.7"), xff),
            ip("198.51.100.7"),
            "not a proxy"
        );
        assert_eq!(t.client(ip("127.0.0.1"), None), ip("127.0.0.1"));
        // A client cannot hide behind a forged first entry: the rightmost
        // untrusted address is the one the proxy saw.
        let forged = Some("1.1.1.1, 203.0.113.9");
        assert_eq!(t.client(ip("127.0.0.1"), forged), ip("203.0.113.9"));
        assert_eq!(t.client(ip("127.0.0.1"), Some("junk")), ip("127.0.0.1"));
        assert!(TrustedProxies::parse("nginx").is_err());
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), xff),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn each_address_has_its_own_bucket() {
        let l = RateLimiter::new(1, 2);
        let now = Instant::now();
        assert!(l.allow_at(ip("10.0.0.1"), now));
        assert!(l.allow_at(ip("10.0.0.1"), now));
        assert!(!l.allow_at(ip("10.0.0.1"), now), "burst spent");
        assert!(l.allow_at(ip("10.0.0.2"), now), "another address");
        assert!(
            l.allow_at(ip("10.0.0.1"), now + Duration::from_secs(1)),
            "refilled"
        );
    }
}
