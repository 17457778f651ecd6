//! roomcast-tiny: the tiny benchmark protocol served with roomcast-core's public API, for
//! the room workloads (`roomcast` has no such endpoint; its `--echo` mode serves the
//! echo workloads).
//!
//! Built like roomcast-tokio's socket tasks: the core [`RequestParser`] and [`accept`] for
//! the upgrade, one core [`Connection`] per socket, reads through one per-thread scratch
//! buffer, a room message encoded once as an [`Outgoing`] frame shared by every receiver
//! (`Connection::send_frame`), and everything queued for a socket drained into one
//! vectored write. What it leaves out is the hub (JSON protocol, the hub task and its
//! command channel): `roomcast-json` measures those.
//!
//! Tiny protocol: `/echo` echoes; on `/room` the text `sub` subscribes and any other text
//! is sent to every subscriber (the sender included when subscribed).

#[path = "common.rs"]
mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use roomcast_core::connection::{Connection, ConnectionConfig, WsEvent};
use roomcast_core::handshake::{accept, RequestParser, ServerPolicy};
use roomcast_core::Outgoing;
use slab::Slab;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

type Room = Rc<RefCell<Slab<mpsc::UnboundedSender<Bytes>>>>;

/// Most buffers handed to one `writev`.
const MAX_IOV: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 64 * 1024].into_boxed_slice());
}

fn main() {
    common::run(|listener| async move {
        let room: Room = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(serve(stream, room.clone()));
        }
    });
}

/// Reads once into the scratch buffer and feeds the bytes to `conn`.
fn poll_read_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    conn: &mut Connection,
) -> Poll<std::io::Result<usize>> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let mut buf = ReadBuf::new(&mut s[..]);
        ready!(Pin::new(reader).poll_read(cx, &mut buf))?;
        conn.handle_read(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    })
}

/// Writes as much of `out` as one vectored write takes.
fn poll_writev<W: AsyncWrite + Unpin>(
    writer: &mut W,
    cx: &mut Context<'_>,
    out: &VecDeque<Bytes>,
    offset: usize,
) -> Poll<std::io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); MAX_IOV];
    let mut n = 0;
    for (i, b) in out.iter().take(MAX_IOV).enumerate() {
        slices[i] = IoSlice::new(if i == 0 { &b[offset..] } else { b });
        n += 1;
    }
    Pin::new(writer).poll_write_vectored(cx, &slices[..n])
}

async fn serve(stream: TcpStream, room: Room) {
    let (mut reader, mut writer) = stream.into_split();
    let mut parser = RequestParser::default();
    let mut head = vec![0u8; 2048];
    let (req, early) = loop {
        let n = match reader.read(&mut head).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match parser.feed(&head[..n]) {
            Ok(None) => {}
            Ok(Some((req, used))) => break (req, head[used..n].to_vec()),
            Err(e) => {
                let _ = writer.write_all(&e.reject().response_bytes()).await;
                return;
            }
        }
    };
    drop(head);
    let is_room = match req.path.as_str() {
        "/room" => true,
        "/echo" => false,
        _ => {
            let _ = writer
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
            return;
        }
    };
    match accept(&req, &ServerPolicy::default()) {
        Ok(a) => {
            if writer.write_all(&a.response_bytes()).await.is_err() {
                return;
            }
        }
        Err(r) => {
            let _ = writer.write_all(&r.response_bytes()).await;
            return;
        }
    }
    let mut conn = Connection::server(ConnectionConfig {
        max_message_size: 64 << 20,
        ..ConnectionConfig::default()
    });
    conn.handle_read(&early);
    drop(early);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let mut member = None;
    let mut out: VecDeque<Bytes> = VecDeque::new();
    let mut offset = 0;
    loop {
        while let Some(ev) = conn.poll_event() {
            match ev {
                WsEvent::Text(t) if !is_room => {
                    let _ = conn.send_text(t.as_str());
                }
                WsEvent::Binary(b) if !is_room => {
                    let _ = conn.send_binary(&b);
                }
                WsEvent::Text(t) => {
                    if t.as_str() == "sub" {
                        if member.is_none() {
                            member = Some(room.borrow_mut().insert(tx.clone()));
                        }
                    } else {
                        let frame = Outgoing::from_text(t.as_str()).frame().clone();
                        for (_, sub) in room.borrow().iter() {
                            let _ = sub.send(frame.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        while let Some(b) = conn.poll_transmit() {
            out.push_back(b);
        }
        if conn.is_closed() && out.is_empty() {
            break;
        }
        tokio::select! {
            r = poll_fn(|cx| poll_read_into(&mut reader, cx, &mut conn)) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            r = poll_fn(|cx| poll_writev(&mut writer, cx, &out, offset)), if !out.is_empty() => match r {
                Ok(0) | Err(_) => break,
                Ok(mut n) => {
                    while n > 0 {
                        let left = out[0].len() - offset;
                        if n >= left {
                            n -= left;
                            offset = 0;
                            out.pop_front();
                        } else {
                            offset += n;
                            n = 0;
                        }
                    }
                }
            },
            Some(first) = rx.recv() => {
                let _ = conn.send_frame(first);
                while let Ok(next) = rx.try_recv() {
                    let _ = conn.send_frame(next);
                }
            }
        }
    }
    if let Some(key) = member {
        room.borrow_mut().remove(key);
    }
    let _ = writer.shutdown().await;
}
