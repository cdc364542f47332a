//! The own HTTP/1.1 transport (`optbench_core::h1`) against servers that frame their answers
//! every way HTTP/1.1 allows, break them, or close kept-alive connections; and the same run
//! over both transports, recorded alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use optbench_core::client::{Endpoint, Prompt, RequestSettings};
use optbench_core::mock::{MockBehavior, MockServer};
use optbench_core::record::ErrorKind;
use optbench_core::runner::{run_load_test, HttpTransport, LoadTestConfig, LoadTestOutcome, Progress};
use optbench_core::schedule::Schedule;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn config(base_url: &str, n: usize, concurrency: usize, transport: HttpTransport) -> LoadTestConfig {
    LoadTestConfig {
        request: RequestSettings {
            base_url: base_url.to_string(),
            model: "m".into(),
            endpoint: Endpoint::Completions,
            api_key: None,
            max_tokens: 8,
            temperature: 0.0,
            ignore_eos: true,
            extra_body: Default::default(),
            request_timeout: Some(Duration::from_secs(10)),
        },
        schedule: Schedule::Closed { concurrency },
        num_requests: n,
        warmup: 0,
        time_limit: None,
        journal: None,
        base_urls: Vec::new(),
        routing: Default::default(),
        sessions: None,
        preconnect: false,
        http_transport: transport,
    }
}

async fn run(config: LoadTestConfig) -> LoadTestOutcome {
    let prompts = vec![Prompt::Text("hello there".into())];
    run_load_test(config, prompts, Arc::new(Progress::default()), CancellationToken::new(), None).await.unwrap()
}

/// The SSE events of a two-token answer with its usage, and `[DONE]`.
fn events() -> Vec<String> {
    vec![
        "data: {\"choices\":[{\"text\":\" a\"}],\"usage\":{\"completion_tokens\":1}}\n\n".into(),
        "data: {\"choices\":[{\"text\":\" b\",\"finish_reason\":\"length\"}],\"usage\":{\"completion_tokens\":2}}\n\n"
            .into(),
        "data: [DONE]\n\n".into(),
    ]
}

/// The events as a chunked body cut into chunks of `size` bytes (each with an extension on
/// its size line), ended by the last chunk and a trailer.
fn chunked(size: usize) -> Vec<u8> {
    let body = events().concat().into_bytes();
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:X};ext=1\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    out
}

/// A server that reads each connection's requests and answers every one with `response`;
/// after `answers_per_connection` answers it closes the connection (after reading the next
/// request, if `close_after_next_request`: the race a kept-alive connection loses). Returns
/// its base URL and the count of connections it accepted.
async fn server(
    response: Vec<u8>,
    answers_per_connection: usize,
    close_after_next_request: bool,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let response = Arc::new(response);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::Relaxed);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                for _ in 0..answers_per_connection {
                    if read_request(&mut socket, &mut buf).await.is_none() {
                        return;
                    }
                    if socket.write_all(&response).await.is_err() {
                        return;
                    }
                }
                if close_after_next_request {
                    let _ = read_request(&mut socket, &mut buf).await;
                }
            });
        }
    });
    (base, accepted)
}

/// Reads one request (head and `Content-Length` body); `None` at the connection's end.
async fn read_request(socket: &mut tokio::net::TcpStream, buf: &mut [u8]) -> Option<()> {
    let mut have = 0;
    loop {
        let n = socket.read(&mut buf[have..]).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        let text = String::from_utf8_lossy(&buf[..have]);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if have >= end + 4 + length {
                return Some(());
            }
        }
    }
}

fn head(status: &str, headers: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Type: text/event-stream\r\n{headers}\r\n").into_bytes()
}

fn assert_answered(out: &LoadTestOutcome, n: usize) {
    assert_eq!(out.records.len(), n);
    for r in &out.records {
        assert!(r.is_success(), "{:?}: {:?}", r.error_kind, r.error_message);
        assert_eq!(r.output_text, " a b");
        assert_eq!((r.output_tokens, r.chunk_tokens.as_slice()), (Some(2), &[1, 1][..]));
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert!(r.first_byte_ns <= r.first_token_ns && r.first_token_ns <= r.done_ns);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_of_the_body_gives_the_same_answer() {
    let body = events().concat().into_bytes();
    let length = [head("200 OK", &format!("Content-Length: {}\r\n", body.len())), body.clone()].concat();
    let to_close = [head("200 OK", "Connection: close\r\n"), body.clone()].concat();
    // An interim 100 answer before the real one is skipped.
    let interim = [b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), length.clone()].concat();
    let mut cases = vec![
        ("content-length".to_string(), length, 3),
        ("close-delimited".into(), to_close, 1),
        ("1xx first".into(), interim, 3),
    ];
    // Chunks that cut events, lines and the CRLF anywhere: 1, 5 and 7 bytes, and one chunk.
    for size in [1, 5, 7, 4096] {
        let response = [head("200 OK", "Transfer-Encoding: chunked\r\n"), chunked(size)].concat();
        cases.push((format!("chunks of {size} bytes"), response, 3));
    }
    for (name, response, per_connection) in cases {
        let (base, accepted) = server(response, per_connection, false).await;
        let out = run(config(&base, 3, 1, HttpTransport::Auto)).await;
        assert_answered(&out, 3);
        // Kept-alive answers reuse one connection; answers that end with the close cannot.
        let expected = if per_connection == 1 { 3 } else { 1 };
        assert_eq!(accepted.load(Ordering::Relaxed), expected, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_the_server_closes_is_not_a_failed_request() {
    // The server closes each connection after one answer, either at once (the pool sees the
    // close and opens another) or only once the next request arrived on it (that request
    // is sent again on a new connection); no request fails either way.
    let response = [head("200 OK", "Transfer-Encoding: chunked\r\n"), chunked(64)].concat();
    for close_after_next_request in [false, true] {
        let (base, accepted) = server(response.clone(), 1, close_after_next_request).await;
        let out = run(config(&base, 4, 1, HttpTransport::Auto)).await;
        assert_answered(&out, 4);
        assert_eq!(accepted.load(Ordering::Relaxed), 4, "close after next request: {close_after_next_request}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_fail_with_what_arrived_kept() {
    let first = events()[0].clone();
    // A Content-Length longer than what is sent before the server closes.
    let cut =
        [head("200 OK", &format!("Content-Length: {}\r\n", first.len() + 100)), first.clone().into_bytes()].concat();
    // A chunk size that is not hexadecimal, after a good chunk.
    let bad_size = [
        head("200 OK", "Transfer-Encoding: chunked\r\n"),
        format!("{:x}\r\n{first}\r\n1z\r\n", first.len()).into_bytes(),
    ]
    .concat();
    // A head that is not HTTP.
    let not_http = b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec();
    for (response, kind, message) in [
        (cut, ErrorKind::StreamReset, "closed the connection inside the body"),
        (bad_size, ErrorKind::StreamReset, "chunk size is not hexadecimal"),
        (not_http, ErrorKind::ConnectionReset, "not HTTP/1.x"),
    ] {
        let (base, _) = server(response, 1, false).await;
        let out = run(config(&base, 1, 1, HttpTransport::Auto)).await;
        let r = &out.records[0];
        assert_eq!(r.error_kind, Some(kind), "{:?}", r.error_message);
        assert!(r.error_message.as_deref().unwrap().contains(message), "{:?}", r.error_message);
        if kind == ErrorKind::StreamReset {
            // The token that arrived before the break is kept.
            assert_eq!(r.output_text, " a");
            assert_eq!(r.chunk_times_ns.len(), 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_record_the_same_run() {
    let behavior = MockBehavior {
        ttft: Duration::from_millis(5),
        gap: Duration::from_millis(1),
        tokens: 12,
        ..MockBehavior::default()
    };
    let mut outs = Vec::new();
    for transport in [HttpTransport::Auto, HttpTransport::Reqwest] {
        let server = MockServer::start_dedicated("127.0.0.1:0", behavior.clone()).unwrap();
        let mut cfg = config(&server.base_url(), 24, 6, transport);
        cfg.request.max_tokens = 12;
        cfg.preconnect = true;
        let out = run(cfg).await;
        // Both open the connections before the clock, and none during the run.
        assert_eq!(out.preconnect.connections_opened_during_run, 0, "{transport:?}: {:?}", out.preconnect);
        assert_eq!(server.connections_accepted(), out.preconnect.connections_opened, "{transport:?}");
        outs.push(out);
    }
    let summary = |out: &LoadTestOutcome| {
        out.records
            .iter()
            .map(|r| (r.is_success(), r.output_text.clone(), r.output_tokens, r.chunk_tokens.clone(), r.http_status))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&outs[0]), summary(&outs[1]));
    assert!(outs[0].records.iter().all(|r| r.is_success() && r.chunk_times_ns.len() == 12));
}
