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
//! - join acks count the room's members and list them (`present`, the joiner included);
//!   presence messages name only other, existing connections with their users, and each
//!   presence view (the ack's list plus every change after it, per connection or per
//!   user, sent at once or batched over a window) continues without a repeated joined or
//!   an unknown left and ends equal to the room;
//! - rejoins with `since`/`epoch` (same epoch, another, none, past the end) replay exactly
//!   the missed messages when `recovered: true`, nothing or the whole history otherwise,
//!   and recover whenever the history must hold the messages and never past its count
//!   or age;
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
        assert!(total.presence_entries > 100, "{total:?}");
        assert!(total.presence_views > 100, "{total:?}");
        // per-user views, and presence batched over a window in a third of the runs
        assert!(total.user_views > 100, "{total:?}");
        assert!(total.batched_runs > 100, "{total:?}");
        assert!(total.presence_batches > 50, "{total:?}");
        // history is off here: rejoins are never recovered from it
        assert!(total.not_recovered > 100, "{total:?}");
    }
}

#[test]
fn simulation_with_history_and_big_rooms() {
    let config = SimConfig {
        max_peers: 400,
        rooms: 3,
        steps: 300,
        history: true,
        ..SimConfig::default()
    };
    let mut total = SimReport::default();
    for seed in 0..20 {
        let result = std::panic::catch_unwind(|| run_seed(seed, &config));
        match result {
            Ok(r) => total.add(&r),
            Err(e) => {
                eprintln!("big-room simulation failed for seed {seed}");
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("big rooms with history, 20 seeds: {total:?}");
    // What it claims to reach: busy rooms, presence in them, recovery from the history
    // under its byte budget (both outcomes), slow consumers.
    assert!(total.room_deliveries > 2_000, "{total:?}");
    assert!(total.presence_entries > 800, "{total:?}");
    assert!(total.presence_views > 50, "{total:?}");
    assert!(total.recovered > 20, "{total:?}");
    assert!(total.not_recovered > 50, "{total:?}");
    assert!(total.replayed > 150, "{total:?}");
    assert!(total.must_not_recover > 0, "{total:?}");
    assert!(total.slow_closes > 0, "{total:?}");
}

/// Recovery with history that only its count and age limit (a large byte budget), so the
/// model knows when a rejoin must be recovered.
#[test]
fn simulation_of_recovery_against_the_history_limits() {
    let config = SimConfig {
        history: true,
        history_budget: 1 << 20,
        // room for a whole history's replay
        max_buffered: 64 << 10,
        ..SimConfig::default()
    };
    let mut total = SimReport::default();
    for seed in 0..200 {
        let result = std::panic::catch_unwind(|| run_seed(seed, &config));
        match result {
            Ok(r) => total.add(&r),
            Err(e) => {
                eprintln!(
                    "recovery simulation failed for seed {seed}; replay with this test's config"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!("recovery, 200 seeds: {total:?}");
    assert!(total.must_recover > 100, "{total:?}");
    assert!(total.must_not_recover > 10, "{total:?}");
    assert!(total.recovered > 100, "{total:?}");
    assert!(total.not_recovered > 100, "{total:?}");
    assert!(total.replayed > 200, "{total:?}");
    assert!(total.presence_views > 100, "{total:?}");
}
