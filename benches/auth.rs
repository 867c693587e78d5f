//! Criterion benchmarks of authentication: what verifying a token costs once per connection,
//! and what the permission check costs on every frame.
//!
//! `cargo bench --bench auth`

use std::collections::HashMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use roomlog::auth::{Anonymous, Authenticator, Credentials, NameOnly, TokenAuth};
use roomlog::clock::SystemClock;
use roomlog::event::RoomId;
use roomlog::token::{Claims, RoomGrant, Secrets};

fn grants(n: usize) -> Vec<RoomGrant> {
    (0..n).map(|i| RoomGrant { pattern: format!("team-{i}-*"), write: i % 2 == 0 }).collect()
}

fn token_costs(c: &mut Criterion) {
    let secrets = Secrets::new([7; 32], Some(([9; 32], u64::MAX)));
    let exp = 4_000_000_000;
    let claims = Claims { user: "alice".into(), rooms: grants(4), admin: false, exp, session: None, files: Vec::new() };
    let token = secrets.issue(&claims);
    let mut group = c.benchmark_group("auth");
    group.bench_function("verify a token (per connection)", |b| {
        b.iter(|| secrets.verify(std::hint::black_box(&token), 1_800_000_000_000).expect("valid"))
    });
    let auth = TokenAuth {
        secrets: Secrets::new([7; 32], None),
        anonymous: Anonymous::None,
        clock: Arc::new(SystemClock),
        sessions: std::sync::OnceLock::new(),
        reserved: Default::default(),
    };
    let with_token = Credentials { query: HashMap::from([("token".to_owned(), token.clone())]) };
    group.bench_function("authenticate with a token (per connection)", |b| {
        b.iter(|| auth.authenticate(std::hint::black_box(&with_token)).expect("valid"))
    });
    let by_name = Credentials { query: HashMap::from([("name".to_owned(), "alice".to_owned())]) };
    group.bench_function("authenticate by name, no token (per connection)", |b| {
        b.iter(|| NameOnly.authenticate(std::hint::black_box(&by_name)).expect("valid"))
    });
    let identity = auth.authenticate(&with_token).expect("valid");
    let room = RoomId::parse("team-2-general").expect("room");
    group.bench_function("may_write, 4 room patterns (per frame)", |b| {
        b.iter(|| identity.may_write(std::hint::black_box(&room)))
    });
    let many = roomlog::auth::Identity { grants: Some(grants(64)), ..identity.clone() };
    let last = RoomId::parse("team-62-general").expect("room");
    group.bench_function("may_write, 64 room patterns (per frame)", |b| {
        b.iter(|| many.may_write(std::hint::black_box(&last)))
    });
    group.finish();
}

criterion_group!(benches, token_costs);
criterion_main!(benches);
