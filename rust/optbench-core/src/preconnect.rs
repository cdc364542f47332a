//! Opening the HTTP client's connection pool before a run's clock starts.
//!
//! A load test that starts cold opens its connections inside its first requests: at
//! concurrency 256 the first wave waits for 256 handshakes and for the server to accept them,
//! and that wait lands in those requests' TTFT. [`preconnect`] sends as many concurrent
//! `GET /v1/models` as the load shape can hold in flight ([`connections_wanted`]), split over
//! the base URLs, waits for every answer's headers while their bodies stay unread (so each GET
//! holds a connection of its own), then reads each answer to its end, so the client's pool holds that many
//! kept-alive connections when the first measured request goes out. Any HTTP answer (a 404
//! from a server without `/v1/models` too) leaves its connection in the pool. It is bounded
//! ([`PRECONNECT_TIMEOUT`], or the per-request deadline when shorter), and a failure is a
//! warning in the report, never a failed run.
//!
//! [`ConnectionCounter`] is a connector layer that counts the TCP connections the client
//! opens, so the report says how many the preconnect opened and how many the run itself opened
//! after the clock started.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::schedule::Schedule;

/// The longest a preconnect may take (a shorter per-request deadline bounds it further).
pub const PRECONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections a preconnect opens, all base URLs together.
pub const MAX_PRECONNECT: usize = 1024;

/// An open loop without a concurrency cap is preconnected for the requests due in its first
/// this long: each of them may still be in flight when the next arrives.
pub const OPEN_LOOP_HORIZON: Duration = Duration::from_secs(1);

/// The connections a run's load shape can hold in flight at once: a closed loop's
/// `concurrency` (no more than it has requests); an open loop's or a trace's requests due in
/// its first [`OPEN_LOOP_HORIZON`] (at least its warm-up's concurrency), capped by its
/// `max_concurrency`. At most [`MAX_PRECONNECT`], at least 1.
pub fn connections_wanted(schedule: &Schedule, num_requests: usize, warmup: usize) -> usize {
    let wanted = match schedule {
        Schedule::Closed { concurrency } => (*concurrency).min(num_requests.max(warmup)),
        Schedule::Open { max_concurrency, .. } | Schedule::Trace { max_concurrency, .. } => {
            let horizon = OPEN_LOOP_HORIZON.as_nanos() as i64;
            let due = schedule.offsets_ns(num_requests).unwrap_or_default().iter().filter(|&&t| t < horizon).count();
            let cap = max_concurrency.unwrap_or(usize::MAX);
            due.max(warmup.min(cap)).min(cap)
        }
    };
    wanted.clamp(1, MAX_PRECONNECT)
}

/// `total` connections split over `urls` base URLs, the first ones taking the remainder, plus
/// [`spare`] connections each.
pub fn split(total: usize, urls: usize) -> Vec<usize> {
    let urls = urls.max(1);
    (0..urls)
        .map(|i| total / urls + usize::from(i < total % urls))
        .map(|n| if n == 0 { 0 } else { n + spare(n) })
        .collect()
}

/// Spare connections for `n` in flight to one base URL: a connection goes back to the pool on
/// the HTTP client's own task after its answer ends, and a request sent at that moment (a
/// closed loop's next) finds no idle connection and opens one (hyper then uses whichever is
/// ready first and keeps the other). One spare per 64 connections, at least one, absorbs that.
pub fn spare(n: usize) -> usize {
    1 + n / 64
}

/// What a run's preconnect did, and how many connections the run opened after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreconnectReport {
    /// Whether the run preconnected (the `preconnect` option).
    pub enabled: bool,
    /// Connections asked for, all base URLs together ([`connections_wanted`] and the
    /// [`spare`] ones); 0 when off.
    pub connections_wanted: usize,
    /// TCP connections the client opened during the preconnect.
    pub connections_opened: usize,
    /// How long the preconnect took, in seconds (before the run's clock started).
    pub seconds: f64,
    /// Why the preconnect fell short (a failed or slow `GET`, fewer connections than wanted):
    /// a warning; the run went on.
    pub error: Option<String>,
    /// TCP connections the client opened after the clock started (warm-up included): 0 when
    /// the pool held every connection the run needed.
    pub connections_opened_during_run: usize,
}

/// A connector layer counting the TCP connections a client opens (one per connect attempt).
#[derive(Debug, Clone, Default)]
pub struct ConnectionCounter(Arc<AtomicUsize>);

impl ConnectionCounter {
    /// Connections opened (attempted) so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more connection (the own HTTP/1.1 transport's, [`crate::h1::H1Pool`]).
    pub fn add_one(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S> tower_layer::Layer<S> for ConnectionCounter {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, count: self.0.clone() }
    }
}

/// The connector service under a [`ConnectionCounter`].
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    count: Arc<AtomicUsize>,
}

impl<S, R> tower_service::Service<R> for Counted<S>
where
    S: tower_service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

/// Opens `per_url[i]` connections to server root `roots[i]` with concurrent `GET /v1/models`,
/// each answer read to its end so its connection stays in the pool: `h1`'s for `http://` roots
/// when given (the own transport), else `client`'s; gives up after `timeout`. `counter` counts
/// both pools' connections. Never fails: what went wrong is the report's `error`.
pub async fn preconnect(
    client: &reqwest::Client,
    h1: Option<&crate::h1::H1Pool>,
    counter: &ConnectionCounter,
    roots: &[String],
    per_url: &[usize],
    api_key: Option<&str>,
    timeout: Duration,
) -> PreconnectReport {
    let started = Instant::now();
    let before = counter.get();
    let wanted: usize = per_url.iter().sum();
    let mut error = None;
    // The own transport opens exactly the connections it is asked for.
    let on_h1 = |root: &String| h1.is_some() && crate::h1::serves(root);
    if let Some(pool) = h1 {
        let opening = roots
            .iter()
            .zip(per_url)
            .filter(|(root, _)| on_h1(root))
            .map(|(root, &n)| pool.preconnect(format!("{root}/v1/models"), n, api_key));
        error = match tokio::time::timeout(timeout, futures_util::future::join_all(opening)).await {
            Err(_) => Some(format!("the preconnect did not finish within {:.1} s", timeout.as_secs_f64())),
            Ok(results) => results.into_iter().find_map(|r| r.err()).map(|e| format!("GET /v1/models failed: {e}")),
        };
    }
    let per_url: Vec<usize> = roots.iter().zip(per_url).map(|(root, &n)| if on_h1(root) { 0 } else { n }).collect();
    let per_url = &per_url[..];
    // Should a GET still reuse another's connection (one whose barrier wait ran out), another
    // round of as many GETs opens what is missing, the pooled ones reused.
    for _round in 0..PRECONNECT_ROUNDS {
        if error.is_some() || per_url.iter().sum::<usize>() == 0 {
            break;
        }
        error = preconnect_round(client, roots, per_url, api_key, timeout.saturating_sub(started.elapsed())).await;
        if error.is_some() || counter.get() - before >= wanted {
            break;
        }
    }
    let opened = counter.get() - before;
    let error = error.or_else(|| {
        (opened < wanted)
            .then(|| format!("opened {opened} of {wanted} connections (some GET /v1/models reused a connection)"))
    });
    PreconnectReport {
        enabled: true,
        connections_wanted: wanted,
        connections_opened: opened,
        seconds: started.elapsed().as_secs_f64(),
        error,
        connections_opened_during_run: 0,
    }
}

/// How long a round's GETs wait for each other's connections before sending their bodies.
const BARRIER_WAIT: Duration = Duration::from_secs(2);

/// Rounds of GETs at most, until the pool holds the connections wanted.
const PRECONNECT_ROUNDS: usize = 3;

/// One round of concurrent GETs, `per_url[i]` to `roots[i]`; what went wrong, if anything.
async fn preconnect_round(
    client: &reqwest::Client,
    roots: &[String],
    per_url: &[usize],
    api_key: Option<&str>,
    timeout: Duration,
) -> Option<String> {
    let wanted: usize = per_url.iter().sum();
    // Each GET on a task of its own, with a one-byte body (a space) that is sent only once
    // every GET's connection is open and its headers written (the client polls the body then):
    // until that moment no GET can finish and free its connection for another, so each opens
    // its own. Then each answer is read to its end, which puts its connection in the pool.
    let barrier = Arc::new(tokio::sync::Barrier::new(wanted));
    let mut tasks = tokio::task::JoinSet::new();
    for (root, &n) in roots.iter().zip(per_url) {
        for _ in 0..n {
            let barrier = barrier.clone();
            let body = futures_util::stream::once(async move {
                // Bounded: a GET whose connection fails never reaches the barrier.
                let _ = tokio::time::timeout(BARRIER_WAIT, barrier.wait()).await;
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" "))
            });
            let mut request = client
                .get(format!("{root}/v1/models"))
                .header(reqwest::header::CONTENT_LENGTH, "1")
                .body(reqwest::Body::wrap_stream(body));
            if let Some(key) = api_key {
                request = request.bearer_auth(key);
            }
            tasks.spawn(async move {
                let mut body = request.send().await.map_err(|e| e.to_string())?.bytes_stream();
                while let Some(chunk) = body.next().await {
                    chunk.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            });
        }
    }
    let all = async {
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(e),
                Err(e) => failed.push(e.to_string()),
            }
        }
        failed
    };
    match tokio::time::timeout(timeout, all).await {
        Err(_) => Some(format!("the preconnect did not finish within {:.1} s", timeout.as_secs_f64())),
        Ok(failed) => {
            failed.first().map(|first| format!("{} of {wanted} GET /v1/models failed: {first}", failed.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Arrival;

    #[test]
    fn wanted_follows_the_load_shape() {
        assert_eq!(connections_wanted(&Schedule::Closed { concurrency: 16 }, 100, 0), 16);
        assert_eq!(connections_wanted(&Schedule::Closed { concurrency: 16 }, 4, 0), 4);
        assert_eq!(connections_wanted(&Schedule::Closed { concurrency: 16 }, 4, 10), 10);
        assert_eq!(connections_wanted(&Schedule::Closed { concurrency: 5000 }, 10_000, 0), MAX_PRECONNECT);
        // 10 requests/s, constant arrivals: 10 due in the first second (0 ms, 100 ms, ..., 900 ms).
        let open =
            |max_concurrency| Schedule::Open { rate: 10.0, arrival: Arrival::Constant, seed: 0, max_concurrency };
        assert_eq!(connections_wanted(&open(None), 100, 0), 10);
        assert_eq!(connections_wanted(&open(Some(4)), 100, 0), 4);
        assert_eq!(connections_wanted(&open(None), 3, 0), 3);
        assert_eq!(connections_wanted(&open(None), 100, 30), 30);
        let trace = Schedule::Trace { offsets_ns: vec![0, 0, 500_000_000, 2_000_000_000], max_concurrency: None };
        assert_eq!(connections_wanted(&trace, 4, 0), 3);
    }

    #[test]
    fn split_spreads_the_remainder_over_the_first_urls() {
        assert_eq!(split(16, 1), vec![17]);
        assert_eq!(split(256, 1), vec![261]);
        assert_eq!(split(10, 3), vec![5, 4, 4]);
        assert_eq!(split(2, 3), vec![2, 2, 0]);
    }
}
