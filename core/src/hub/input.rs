//! One vocabulary for everything that changes a hub, as str0m's `Input`: what the
//! adapter observed (a connection, a message, written bytes, a closed socket, a deadline)
//! and what the application asks (the server API). Fed through
//! [`Hub::handle`](super::Hub::handle) with the current time, so every mutation is
//! stamped with the adapter's clock and nothing reads a clock behind its back.

use serde_json::value::RawValue;

use std::sync::Arc;

use super::backplane::{AppendTicket, BackplaneError, Loaded};
use super::types::{ConnId, ConnectRequest, Delivery, DisconnectReason, Forward, RoomOptions};

/// An input to [`Hub::handle`](super::Hub::handle).
#[derive(Debug)]
#[non_exhaustive]
pub enum Input<'a> {
    // --- what the adapter observed ---------------------------------------------------
    /// A handshake passed: admit the connection (answers [`Handled::Connected`]).
    Connect(ConnectRequest),
    /// A text message from a connection: one protocol request.
    Text {
        /// The sender.
        conn: ConnId,
        /// The message.
        text: &'a str,
    },
    /// A binary message from a connection (its length is all protocol v1 needs).
    Binary {
        /// The sender.
        conn: ConnId,
        /// Its length in bytes.
        len: usize,
    },
    /// Any frame from the peer (pong, ping, data): it is alive.
    Activity {
        /// The connection.
        conn: ConnId,
    },
    /// Bytes of this connection's output reached the socket.
    Flushed {
        /// The connection.
        conn: ConnId,
        /// How many.
        bytes: usize,
    },
    /// The socket is gone.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: DisconnectReason,
    },
    /// A publish another node forwarded through a backplane.
    Remote {
        /// The node's id, as the backplane names it.
        node: u64,
        /// The publish.
        forward: &'a Forward,
    },
    /// The backplane's answer to an [`Output::Append`](super::Output::Append).
    Appended {
        /// The append's ticket.
        ticket: AppendTicket,
        /// The room's epoch and the seq given to the message, or why not.
        result: Result<(Arc<str>, u64), BackplaneError>,
    },
    /// One message of a followed room's log, as the backplane published it.
    Logged {
        /// The room.
        room: &'a str,
        /// Its epoch.
        epoch: &'a str,
        /// The message's seq.
        seq: u64,
        /// Its body (opaque: written by the publishing node's hub).
        body: &'a str,
    },
    /// The backplane's answer to an [`Output::Load`](super::Output::Load).
    Loaded {
        /// The room.
        room: &'a str,
        /// Position and entries.
        loaded: Loaded,
    },
    /// An [`Output::Load`](super::Output::Load) failed (the backplane is unreachable).
    LoadFailed {
        /// The room.
        room: &'a str,
    },
    /// The backplane reconnected: check every followed room for what was missed.
    BackplaneResync,
    /// A command another node sent ([`Output::Control`](super::Output::Control)).
    Control {
        /// The command.
        control: &'a super::Control,
    },
    /// The deadline of [`Hub::poll_timeout`](super::Hub::poll_timeout) (or a later time)
    /// was reached.
    Timeout,
    /// The adapter finished a batch of inputs: held room messages go out.
    EndBatch,

    // --- what the application asks (the server API) ----------------------------------
    /// Put a connection in a room (created if missing); it is told with `joined`
    /// once the protocol has that message.
    Join {
        /// The connection.
        conn: ConnId,
        /// The room.
        room: &'a str,
        /// Whether it receives the room's presence events.
        presence: bool,
    },
    /// Take a connection out of a room.
    Leave {
        /// The connection.
        conn: ConnId,
        /// The room.
        room: &'a str,
    },
    /// Take a connection out of every room.
    LeaveAll {
        /// The connection.
        conn: ConnId,
    },
    /// Subscribe a connection to a channel.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// The channel.
        channel: &'a str,
    },
    /// Unsubscribe a connection from a channel.
    Unsubscribe {
        /// The connection.
        conn: ConnId,
        /// The channel.
        channel: &'a str,
    },
    /// Create (or update) a room that stays until removed.
    CreateRoom {
        /// The room.
        room: &'a str,
        /// Its data and member limit.
        options: RoomOptions,
    },
    /// Remove a room: its members leave it, its history goes.
    RemoveRoom {
        /// The room.
        room: &'a str,
    },
    /// Create a channel linking these rooms.
    CreateChannel {
        /// The channel.
        channel: &'a str,
        /// Rooms to link.
        rooms: &'a [&'a str],
    },
    /// Link a room to a channel.
    LinkRoom {
        /// The channel.
        channel: &'a str,
        /// The room.
        room: &'a str,
    },
    /// Unlink a room from a channel.
    UnlinkRoom {
        /// The channel.
        channel: &'a str,
        /// The room.
        room: &'a str,
    },
    /// Send an event from the server (`from: null`); answers [`Handled::Delivered`].
    Send {
        /// Who receives it.
        to: Recipient<'a>,
        /// Event name.
        event: &'a str,
        /// Raw JSON data (`None` is `null`).
        data: Option<&'a RawValue>,
        /// Connections that do not receive it.
        exclude: &'a [ConnId],
    },
    /// Send text verbatim to a room's members (see [`Hub::send_raw_to_room`](super::Hub::send_raw_to_room)).
    SendRaw {
        /// The room.
        room: &'a str,
        /// The text.
        text: &'a str,
        /// Connections that do not receive it.
        exclude: &'a [ConnId],
    },
    /// Close a connection with this code and reason.
    Disconnect {
        /// The connection.
        conn: ConnId,
        /// Close code.
        code: u16,
        /// Close reason (cut to 123 bytes).
        reason: &'a str,
    },
    /// Set an application metadata entry on a connection.
    SetMetadata {
        /// The connection.
        conn: ConnId,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Close every connection with 1001.
    Shutdown,
    /// The application's answer to an [`Output::Decide`](super::Output::Decide).
    Decided {
        /// The decision's ticket.
        ticket: super::Ticket,
        /// What it decided.
        answer: super::Answer,
    },
}

/// Who a server send reaches.
#[derive(Debug, Clone, Copy)]
pub enum Recipient<'a> {
    /// Every member of a room.
    Room(&'a str),
    /// A channel's receivers.
    Channel(&'a str),
    /// Every connection of a user.
    User(&'a str),
    /// One connection.
    Conn(ConnId),
    /// Every connection.
    All,
}

/// What [`Hub::handle`](super::Hub::handle) reports besides the outputs it queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Done; the outputs say the rest.
    Done,
    /// A connection was admitted under this id.
    Connected(ConnId),
    /// A server send reached this many connections.
    Delivered(Delivery),
}
