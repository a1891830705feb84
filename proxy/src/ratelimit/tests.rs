use std::time::Duration;

use super::*;

fn limit(rate: f64, burst: u32, key: RateLimitKey, max_keys: usize) -> RateLimit {
    RateLimit {
        requests_per_second: rate,
        burst,
        key,
        max_keys,
    }
}

fn ip(n: u32) -> Key<'static> {
    Key::Ip(IpAddr::from(n.to_be_bytes()))
}

#[test]
fn burst_then_one_per_interval() {
    for key in [RateLimitKey::ClientIp, RateLimitKey::Global] {
        let limiter = RateLimiter::new(&limit(10.0, 5, key, 100));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check(t0, ip(1)).is_ok());
        }
        let refused = limiter.check(t0, ip(1)).unwrap_err();
        // The next token is 100 ms away.
        assert_eq!(refused.retry_after_nanos, 100_000_000);
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(limiter
            .check(t0 + Duration::from_millis(99), ip(1))
            .is_err());
        assert!(limiter
            .check(t0 + Duration::from_millis(100), ip(1))
            .is_ok());
        assert!(limiter
            .check(t0 + Duration::from_millis(100), ip(1))
            .is_err());
        // Idle long enough: the whole burst again, never more.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..5 {
            assert!(limiter.check(later, ip(1)).is_ok());
        }
        assert!(limiter.check(later, ip(1)).is_err());
        assert_eq!(limiter.limited(), 4);
    }
}

#[test]
fn keys_are_independent() {
    let limiter = RateLimiter::new(&limit(1.0, 1, RateLimitKey::ClientIp, 100));
    let t0 = Instant::now();
    assert!(limiter.check(t0, ip(1)).is_ok());
    assert!(limiter.check(t0, ip(1)).is_err());
    assert!(limiter.check(t0, ip(2)).is_ok());
    assert!(limiter.check(t0, Key::Bytes(b"a")).is_ok());
    assert!(limiter.check(t0, Key::Bytes(b"a")).is_err());
    assert!(limiter.check(t0, Key::Bytes(b"b")).is_ok());
}

#[test]
fn an_address_is_one_key_in_either_form() {
    let limiter = RateLimiter::new(&limit(1.0, 1, RateLimitKey::ClientIp, 100));
    let t0 = Instant::now();
    let v4: IpAddr = "192.0.2.7".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    assert!(limiter.check(t0, Key::Ip(v4)).is_ok());
    assert!(limiter.check(t0, Key::Ip(mapped)).is_err());
    // Neighbours, the IPv4-compatible form and the same bytes as a header value are others.
    for other in [
        "192.0.2.8",
        "::192.0.2.7",
        "2001:db8::7",
        "::ffff:192.0.2.9",
    ] {
        let other: IpAddr = other.parse().unwrap();
        assert!(limiter.check(t0, Key::Ip(other)).is_ok(), "{other}");
    }
    assert!(limiter.check(t0, Key::Bytes(b"192.0.2.7")).is_ok());
    // Two limiters hash the same address differently (each has its own random keys).
    let other = RateLimiter::new(&limit(1.0, 1, RateLimitKey::ClientIp, 100));
    assert_ne!(limiter.hash(Key::Ip(v4)), other.hash(Key::Ip(v4)));
    eprintln!("192.0.2.7 and ::ffff:192.0.2.7 share one bucket; 4 other addresses and a header value do not");
}

#[test]
fn sustained_rate_is_exact() {
    // 1,000 requests offered every millisecond for 10 s at 50 rps, burst 10: 10 + 50·10 allowed.
    let limiter = RateLimiter::new(&limit(50.0, 10, RateLimitKey::ClientIp, 100));
    let t0 = Instant::now();
    let allowed = (0..10_000u64)
        .filter(|ms| {
            limiter
                .check(t0 + Duration::from_millis(*ms), ip(7))
                .is_ok()
        })
        .count();
    assert!((509..=511).contains(&allowed), "{allowed}");
}

#[test]
fn retry_after_rounds_up_long_waits() {
    let limiter = RateLimiter::new(&limit(0.1, 1, RateLimitKey::Global, 1));
    let t0 = Instant::now();
    assert!(limiter.check(t0, Key::Global).is_ok());
    let refused = limiter.check(t0 + Duration::from_millis(500), Key::Global);
    assert_eq!(refused.unwrap_err().retry_after_secs(), 10);
}

#[test]
fn keys_stay_bounded_and_recent_keys_are_kept() {
    for max_keys in [1, 2, 3, 1000, 5000, 100_000] {
        let limiter = RateLimiter::new(&limit(1.0, 1, RateLimitKey::ClientIp, max_keys));
        let t0 = Instant::now();
        for n in 0..(3 * max_keys as u32 + 10) {
            let _ = limiter.check(t0, ip(n));
            if n % 997 == 0 {
                assert!(limiter.keys() <= max_keys);
            }
        }
        assert!(
            limiter.keys() <= max_keys,
            "{} > {max_keys}",
            limiter.keys()
        );
    }
    // A key in steady use is never evicted by a flood of new ones.
    let limiter = RateLimiter::new(&limit(0.001, 1, RateLimitKey::ClientIp, 1000));
    let t0 = Instant::now();
    assert!(limiter.check(t0, ip(u32::MAX)).is_ok());
    for n in 0..100_000 {
        let _ = limiter.check(t0, ip(n));
        if n % 100 == 0 {
            assert!(limiter.check(t0, ip(u32::MAX)).is_err());
        }
    }
}

#[test]
fn client_ip_from_trusted_proxies_only() {
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
    let mut headers = HeaderMap::new();
    headers.append(
        &X_FORWARDED_FOR,
        HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
    );
    headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
    assert_eq!(client_ip(peer, false, &trusted, &headers), peer);
    assert_eq!(
        client_ip(peer, true, &trusted, &headers),
        "2.2.2.2".parse::<IpAddr>().unwrap()
    );
    headers.insert(
        &X_FORWARDED_FOR,
        HeaderValue::from_static("[2001:db8::1]:80"),
    );
    assert_eq!(
        client_ip(peer, true, &trusted, &headers),
        "2001:db8::1".parse::<IpAddr>().unwrap()
    );
    headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("junk, 10.0.0.7"));
    assert_eq!(
        client_ip(peer, true, &trusted, &headers),
        "10.0.0.7".parse::<IpAddr>().unwrap()
    );
    headers.clear();
    assert_eq!(client_ip(peer, true, &trusted, &headers), peer);
}

#[test]
fn carried_while_unchanged() {
    let config = limit(1.0, 1, RateLimitKey::ClientIp, 10);
    let first = RateLimiter::carry(Some(&config), None).unwrap();
    let t0 = Instant::now();
    assert!(first.check(t0, ip(1)).is_ok());
    assert!(first.check(t0, ip(1)).is_err());
    let same = RateLimiter::carry(Some(&config), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(&first, &same));
    let changed = limit(2.0, 1, RateLimitKey::ClientIp, 10);
    let new = RateLimiter::carry(Some(&changed), Some(&first)).unwrap();
    assert!(!Arc::ptr_eq(&first, &new));
    assert_eq!(new.limited(), 1);
    assert!(RateLimiter::carry(None, Some(&first)).is_none());
}

#[test]
fn extreme_values_do_not_panic() {
    for (rate, burst) in [
        (0.001, 1_000_000),
        (1e6, 1),
        (1e6, 1_000_000),
        (f64::NAN, 0),
    ] {
        let limiter = RateLimiter::new(&limit(rate, burst, RateLimitKey::Global, 1));
        let t0 = Instant::now();
        let _ = limiter.check(t0, Key::Global);
        let _ = limiter.check(t0 + Duration::from_secs(1 << 40), Key::Global);
    }
}
