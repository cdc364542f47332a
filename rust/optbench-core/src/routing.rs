//! Which base URL a request goes to when a run spreads its requests over several replicas of
//! one deployment: round robin, or the replica with the fewest requests in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{CoreError, Result};

/// How requests are spread over a run's base URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// Base URL `k mod n` for the `k`-th request sent (warm-up included): an exact split.
    #[default]
    RoundRobin,
    /// The base URL with the fewest requests in flight at the moment the request is sent; ties
    /// go to the lowest index.
    LeastOutstanding,
}

impl Routing {
    /// Parses `round_robin` or `least_outstanding`.
    pub fn parse(name: &str) -> Result<Routing> {
        match name {
            "round_robin" => Ok(Routing::RoundRobin),
            "least_outstanding" => Ok(Routing::LeastOutstanding),
            other => {
                Err(CoreError::config(format!("routing must be 'round_robin' or 'least_outstanding', got {other:?}")))
            }
        }
    }
}

/// Picks a base URL for each request and counts the requests in flight on each.
#[derive(Debug)]
pub struct Router {
    routing: Routing,
    next: AtomicUsize,
    /// Requests in flight per base URL (picked and not yet released). One lock, so that picking
    /// the least loaded one and counting the request on it happen together.
    outstanding: Mutex<Vec<usize>>,
}

impl Router {
    /// A router over `n` base URLs (at least 1).
    pub fn new(routing: Routing, n: usize) -> Router {
        Router { routing, next: AtomicUsize::new(0), outstanding: Mutex::new(vec![0; n.max(1)]) }
    }

    /// Picks the base URL of the next request and counts it in flight there until the lease is
    /// dropped.
    pub fn acquire(&self) -> Lease<'_> {
        let mut outstanding = self.outstanding.lock().expect("router lock");
        let index = match self.routing {
            Routing::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % outstanding.len(),
            // `min_by_key` keeps the first of equal minima: ties go to the lowest index.
            Routing::LeastOutstanding => {
                outstanding.iter().enumerate().min_by_key(|(_, n)| **n).map(|(i, _)| i).expect("at least one")
            }
        };
        outstanding[index] += 1;
        Lease { router: self, index }
    }

    /// Counts a request in flight on base URL `index` (a session's later turns go where its
    /// first went).
    pub fn acquire_on(&self, index: usize) -> Lease<'_> {
        self.outstanding.lock().expect("router lock")[index] += 1;
        Lease { router: self, index }
    }

    /// Requests in flight on each base URL now.
    pub fn outstanding(&self) -> Vec<usize> {
        self.outstanding.lock().expect("router lock").clone()
    }
}

/// A request counted in flight on base URL `index` (released when dropped).
#[derive(Debug)]
pub struct Lease<'a> {
    router: &'a Router,
    /// The base URL's position in the run's list.
    pub index: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.router.outstanding.lock().expect("router lock")[self.index] -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_whatever_is_in_flight() {
        let router = Router::new(Routing::RoundRobin, 3);
        let leases: Vec<_> = (0..7).map(|_| router.acquire()).collect();
        let picked: Vec<usize> = leases.iter().map(|l| l.index).collect();
        assert_eq!(picked, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(router.outstanding(), vec![3, 2, 2]);
        drop(leases);
        assert_eq!(router.outstanding(), vec![0, 0, 0]);
    }

    #[test]
    fn least_outstanding_fills_the_idle_one_and_ties_go_low() {
        let router = Router::new(Routing::LeastOutstanding, 3);
        let a = router.acquire();
        let b = router.acquire();
        let c = router.acquire();
        assert_eq!((a.index, b.index, c.index), (0, 1, 2));
        drop(b);
        // 1 is free now: it gets the next request, then the tie (1, 1, 1) goes to 0.
        let d = router.acquire();
        assert_eq!(d.index, 1);
        assert_eq!(router.acquire().index, 0);
        assert_eq!(router.outstanding(), vec![1, 1, 1], "the dropped lease is released");
    }

    #[test]
    fn names_parse_and_others_are_refused() {
        assert_eq!(Routing::parse("round_robin").unwrap(), Routing::RoundRobin);
        assert_eq!(Routing::parse("least_outstanding").unwrap(), Routing::LeastOutstanding);
        let e = Routing::parse("random").unwrap_err().to_string();
        assert!(e.contains("routing") && e.contains("random"), "{e}");
    }
}
