//! Deterministic simulation of one hub and many fake peers on a virtual clock.
//!
//! Each seed drives a random mix of connects, joins, leaves, subscriptions, publishes to
//! rooms, channels and users, garbage input, silent peers, slow readers, disconnects and
//! time jumps, and checks after every step that:
//! - every room member receives every room message exactly once, in seq order, and the
//!   excluded sender never gets its own message;
//! - nobody receives a room message after leaving it (or a message after being closed);
//! - a channel message reaches each subscriber / linked-room member exactly once;
//! - user messages reach every connection of the user but the sender;
//! - heartbeat expiry happens exactly when due, and only to silent peers;
//! - only the slow reader is closed as a slow consumer;
//! - the hub's indexes stay consistent, and it is empty once everyone has gone.
//!
//! `ROOMCAST_SIM_SEEDS=N` runs N seeds (default 1000); `ROOMCAST_SIM_SEED=S` replays one.

mod support;

use support::sim::{run_seed, SimConfig, SimReport};

#[test]
fn simulation_many_seeds() {
    if let Ok(seed) = std::env::var("ROOMCAST_SIM_SEED") {
        let seed: u64 = seed.parse().expect("ROOMCAST_SIM_SEED is a u64");
        let report = run_seed(seed, &SimConfig::default());
        eprintln!("seed {seed}: {report:?}");
        return;
    }
    let seeds: u64 = std::env::var("ROOMCAST_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut total = SimReport::default();
    for seed in 0..seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed, &SimConfig::default()));
        if let Ok(r) = &result {
            total.add(r);
        }
        if let Err(e) = result {
            eprintln!(
                "simulation failed for seed {seed}; replay with:\n  ROOMCAST_SIM_SEED={seed} cargo test -p roomcast-core --test sim"
            );
            std::panic::resume_unwind(e);
        }
    }
    eprintln!("{seeds} seeds: {total:?}");
    if seeds >= 100 {
        // the runs must actually reach every path they claim to check
        assert!(total.room_deliveries > 10_000, "{total:?}");
        assert!(total.targeted_deliveries > 1_000, "{total:?}");
        assert!(total.presence > 100, "{total:?}");
        assert!(total.errors > 100, "{total:?}");
        assert!(total.heartbeat_reaps > 50, "{total:?}");
        assert!(total.slow_closes > 10, "{total:?}");
        assert!(total.bursts > 100, "coalesced bursts: {total:?}");
    }
}

#[test]
fn simulation_with_history_and_big_rooms() {
    let config = SimConfig {
        max_peers: 400,
        rooms: 3,
        steps: 300,
        history: true,
    };
    for seed in 0..20 {
        let result = std::panic::catch_unwind(|| run_seed(seed, &config));
        if let Err(e) = result {
            eprintln!("big-room simulation failed for seed {seed}");
            std::panic::resume_unwind(e);
        }
    }
}
