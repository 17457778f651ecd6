//! tokio-tungstenite peer of the roomcast benchmark suite, with 4 KiB read and write
//! buffers (its 128 KiB default read buffer makes it slow and fat).
//!
//! Tiny benchmark protocol: `/echo` echoes; on `/room` the text `sub` subscribes and any
//! other text is sent to every subscriber (the sender included when subscribed).

#[path = "common.rs"]
mod common;

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use slab::Slab;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Room = Rc<RefCell<Slab<mpsc::UnboundedSender<Message>>>>;

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

async fn serve(stream: tokio::net::TcpStream, room: Room) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(Some(64 << 20));
    let mut path = String::new();
    // The error type is tungstenite's (an HTTP response), not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    if path != "/room" {
        // Echo: the library's forward loop, one message at a time.
        while let Some(Ok(msg)) = stream.next().await {
            if (msg.is_text() || msg.is_binary()) && sink.send(msg).await.is_err() {
                break;
            }
        }
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let mut member: Option<usize> = None;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str() == "sub" {
                        if member.is_none() {
                            member = Some(room.borrow_mut().insert(tx.clone()));
                        }
                    } else {
                        let msg = Message::Text(t);
                        for (_, sub) in room.borrow().iter() {
                            let _ = sub.send(msg.clone());
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            Some(first) = rx.recv() => {
                // Queue everything pending into the write buffer, then flush once.
                if sink.feed(first).await.is_err() {
                    break;
                }
                let mut ok = true;
                while let Ok(next) = rx.try_recv() {
                    if sink.feed(next).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok || sink.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(key) = member {
        room.borrow_mut().remove(key);
    }
}
