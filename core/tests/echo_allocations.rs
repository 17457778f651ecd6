//! A busy connection's echo path allocates nothing per message (issue 6: "no
//! per-message allocation"), counted with a global allocator rather than inferred from
//! pointers, which the allocator's own reuse of a freed block can fake.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use roomcast_core::connection::{Connection, ConnectionConfig, WsEvent};
use roomcast_core::rng::Rng;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; the counter is a thread-local
// `Cell` with a const initializer, so touching it never allocates or reenters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// One echo as the native adapter runs it; returns the allocations the server side made.
fn echo(server: &mut Connection, client: &mut Connection, wire: &[u8], binary: bool) -> u64 {
    let before = allocations();
    server.handle_read(wire);
    match server.poll_event() {
        Some(WsEvent::Text(t)) => server.send_text(t.as_str()).unwrap(),
        Some(WsEvent::Binary(b)) => server.send_binary(&b).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
    assert!(server.poll_event().is_none());
    let frame = server.poll_transmit().expect("the echo");
    assert!(server.poll_transmit().is_none());
    // Written: the adapter drops the frame, then goes idle.
    let out = frame.clone();
    drop(frame);
    server.shrink_idle();
    let made = allocations() - before;
    client.handle_read(&out);
    drop(out);
    match client.poll_event() {
        Some(WsEvent::Text(_)) if !binary => {}
        Some(WsEvent::Binary(_)) if binary => {}
        other => panic!("echo came back as {other:?}"),
    }
    made
}

fn masked(client: &mut Connection, payload: &[u8], binary: bool) -> Vec<u8> {
    if binary {
        client.send_binary(payload).unwrap();
    } else {
        client
            .send_text(std::str::from_utf8(payload).unwrap())
            .unwrap();
    }
    let frame = client.poll_transmit().unwrap();
    frame.to_vec()
}

#[test]
fn a_busy_echo_allocates_nothing_per_message() {
    for (size, binary) in [(20, false), (512, false), (512, true), (16 * 1024, true)] {
        let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(9));
        let mut server = Connection::server(ConnectionConfig::default());
        let payload = vec![b'a'; size];
        let wire = masked(&mut client, &payload, binary);
        let per_message: Vec<u64> = (0..8)
            .map(|_| echo(&mut server, &mut client, &wire, binary))
            .collect();
        assert!(
            per_message[0] > 0,
            "the first message allocates its buffers"
        );
        assert_eq!(
            per_message[3..],
            [0; 5],
            "{size} B (binary: {binary}): allocations per echo {per_message:?}"
        );
    }
}

#[test]
fn a_quiet_connection_starts_over() {
    let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(10));
    let mut server = Connection::server(ConnectionConfig::default());
    let wire = masked(&mut client, b"hello", false);
    for _ in 0..4 {
        echo(&mut server, &mut client, &wire, false);
    }
    // A heartbeat and nothing else: the kept buffers go, so the next message allocates.
    server.send_ping(b"").unwrap();
    while server.poll_transmit().is_some() {}
    server.shrink_idle();
    assert!(echo(&mut server, &mut client, &wire, false) > 0);
}
