//! fastwebsockets peer of the roomcast benchmark suite: hyper 1 upgrades, fastwebsockets
//! frames, as in the library's own examples.
//!
//! Tiny benchmark protocol: `/echo` echoes (through `FragmentCollector`); on `/room` the
//! text `sub` subscribes and any other text is sent to every subscriber (the sender
//! included when subscribed); each connection has a writer task fed by a channel.

#[path = "common.rs"]
mod common;

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use fastwebsockets::{upgrade, FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use slab::Slab;
use tokio::sync::mpsc;

type Room = Rc<RefCell<Slab<mpsc::UnboundedSender<Bytes>>>>;

fn main() {
    common::run(|listener| async move {
        let room: Room = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let room = room.clone();
            tokio::task::spawn_local(async move {
                let service = service_fn(move |req| handle(req, room.clone()));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

async fn handle(
    mut req: Request<Incoming>,
    room: Room,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let path = req.uri().path().to_owned();
    if path != "/echo" && path != "/room" {
        let mut resp = Response::new(Empty::new());
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return Ok(resp);
    }
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn_local(async move {
        let Ok(ws) = fut.await else { return };
        if path == "/echo" {
            let _ = echo(FragmentCollector::new(ws)).await;
        } else {
            serve_room(ws, room).await;
        }
    });
    Ok(response)
}

async fn echo(
    mut ws: FragmentCollector<TokioIo<hyper::upgrade::Upgraded>>,
) -> Result<(), WebSocketError> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn serve_room(ws: fastwebsockets::WebSocket<TokioIo<hyper::upgrade::Upgraded>>, room: Room) {
    let (mut rx_half, mut tx_half) = ws.split(tokio::io::split);
    rx_half.set_auto_pong(false);
    rx_half.set_auto_close(false);
    let (tx, mut queue) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::task::spawn_local(async move {
        while let Some(first) = queue.recv().await {
            if tx_half
                .write_frame(Frame::text(Payload::Borrowed(&first)))
                .await
                .is_err()
            {
                return;
            }
            while let Ok(next) = queue.try_recv() {
                if tx_half
                    .write_frame(Frame::text(Payload::Borrowed(&next)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let mut member = None;
    let mut no_send = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
    loop {
        let frame = match rx_half.read_frame(&mut no_send).await {
            Ok(f) => f,
            Err(_) => break,
        };
        match frame.opcode {
            OpCode::Text => {
                if &frame.payload[..] == b"sub" {
                    if member.is_none() {
                        member = Some(room.borrow_mut().insert(tx.clone()));
                    }
                } else {
                    let msg = Bytes::copy_from_slice(&frame.payload);
                    for (_, sub) in room.borrow().iter() {
                        let _ = sub.send(msg.clone());
                    }
                }
            }
            OpCode::Close => break,
            _ => {}
        }
    }
    if let Some(key) = member {
        room.borrow_mut().remove(key);
    }
    drop(tx);
    writer.abort();
}
