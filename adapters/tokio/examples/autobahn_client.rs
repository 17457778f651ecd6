//! Drives the native client through the Autobahn test suite's fuzzing server (for
//! `kosoku -m fuzzingserver` or `wstest -m fuzzingserver`): fetch the case count, echo
//! every message of every case back as it came (text as text, binary as binary), then
//! ask the server to write its report.
//!
//! ```text
//! cargo run -p roomcast-tokio --example autobahn_client -- ws://127.0.0.1:9001 roomcast
//! ```
//!
//! Exits non-zero only if the fuzzing server cannot be reached or answers nonsense; the
//! verdict of each case is in the server's report.

use std::process::ExitCode;

use roomcast_tokio::client::{Client, ClientError, ClientOptions, Message};

/// Autobahn's largest messages are 16 MiB; leave room.
const MAX_MESSAGE: usize = 64 << 20;

async fn echo_case(url: &str) -> Result<(), ClientError> {
    let options = ClientOptions {
        protocols: Vec::new(),
        max_message_size: MAX_MESSAGE,
        ..ClientOptions::default()
    };
    let mut client = Client::connect_with(url, options).await?;
    loop {
        match client.recv().await {
            Ok(Message::Text(text)) => client.send_text(text.as_str()).await?,
            Ok(Message::Binary(data)) => client.send_binary(data).await?,
            Err(ClientError::Closed(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

async fn case_count(base: &str) -> Result<u32, String> {
    let mut client = Client::connect(&format!("{base}/getCaseCount"))
        .await
        .map_err(|e| format!("cannot reach the fuzzing server at {base}: {e}"))?;
    match client.recv().await {
        Ok(Message::Text(t)) => t
            .as_str()
            .trim()
            .parse()
            .map_err(|_| format!("bad case count {:?}", t.as_str())),
        other => Err(format!("expected the case count, got {other:?}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let agent = args.next().unwrap_or_else(|| "roomcast".to_owned());
    let count = match case_count(&base).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("running {count} cases as agent {agent:?}");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = echo_case(&url).await {
            // Failing connections is what many cases test; the report judges them.
            eprintln!("case {case}: {e}");
        }
    }
    let report = format!("{base}/updateReports?agent={agent}");
    match Client::connect(&report).await {
        Ok(mut c) => {
            // The server closes once the report is written.
            while c.recv().await.is_ok() {}
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot ask for the report: {e}");
            ExitCode::FAILURE
        }
    }
}
