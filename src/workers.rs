//! The worker threads: one single-threaded tokio runtime per thread (`workers`, default one
//! per CPU). A client's task stays on the worker that accepted it, so the runtime keeps no
//! cross-thread scheduling state per message.
//!
//! Workers join in as the load needs them: new clients go to the *active* workers only, at
//! first worker 0 alone, and one more worker becomes active when every active one was busy
//! most of the last quarter second. A pooler that one core can carry runs on one, where its
//! event loop batches best; one that needs more spreads over them. The thread that starts the
//! workers is worker 0, and runs the upkeep tasks too.
//!
//! A socket is registered with the runtime of the worker that opened it. A server connection
//! checked out by a client on another worker moves its registration there first
//! (`Stream::move_to_this_worker`), and pools hand out connections of the client's own worker
//! first, so that moves are rare.

use std::cell::Cell;
use std::io;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

thread_local! {
    static INDEX: Cell<u16> = const { Cell::new(0) };
}

/// A worker becomes active when every active worker was busy at least this share of the
/// time since the last look, and the last one added stops taking new clients when the others
/// could carry the load below `IDLE_SHARE`.
const BUSY_SHARE: f64 = 0.75;
const IDLE_SHARE: f64 = 0.5;

static WORKERS: OnceLock<Shared> = OnceLock::new();

struct Shared {
    handles: Box<[Handle]>,
    /// How many workers (counting from 0) take new clients.
    active: watch::Sender<usize>,
    /// Each worker's busy time, and when, at the last look (`adjust_active`).
    last_look: Mutex<(Instant, Vec<Duration>)>,
}

/// Which worker the calling thread is; 0 outside the worker threads.
pub fn current() -> u16 {
    INDEX.with(Cell::get)
}

/// The runtimes of all workers, worker 0 first; empty before `start`.
pub fn handles() -> &'static [Handle] {
    WORKERS.get().map_or(&[], |w| &w.handles[..])
}

/// The runtimes of the workers that take new clients; empty before `start`.
pub fn active_handles() -> &'static [Handle] {
    WORKERS
        .get()
        .map_or(&[], |w| &w.handles[..*w.active.borrow()])
}

/// Follows how many workers take new clients; `None` before `start` (then every worker
/// does).
pub fn watch_active() -> Option<watch::Receiver<usize>> {
    WORKERS.get().map(|w| w.active.subscribe())
}

/// Adds an active worker when all active ones are busy, retires the last added one when the
/// others can carry the load; called by the upkeep every quarter second.
pub fn adjust_active() {
    let Some(workers) = WORKERS.get() else {
        return;
    };
    let busy: Vec<Duration> = workers
        .handles
        .iter()
        .map(|h| h.metrics().worker_total_busy_duration(0))
        .collect();
    let now = Instant::now();
    let mut last = workers.last_look.lock().unwrap_or_else(|e| e.into_inner());
    let elapsed = now.duration_since(last.0).as_secs_f64();
    let active = *workers.active.borrow();
    let shares: Vec<f64> = busy[..active]
        .iter()
        .zip(&last.1)
        .map(|(now, before)| now.saturating_sub(*before).as_secs_f64() / elapsed.max(1e-3))
        .collect();
    *last = (now, busy);
    let wanted = wanted_active(&shares, workers.handles.len());
    if wanted != active {
        tracing::debug!(
            "{wanted} of {} workers take new clients",
            workers.handles.len()
        );
        workers.active.send_replace(wanted);
    }
}

/// How many workers should take new clients, given the busy shares of the active ones.
fn wanted_active(shares: &[f64], workers: usize) -> usize {
    let active = shares.len();
    let total: f64 = shares.iter().sum();
    if active < workers && shares.iter().all(|share| *share >= BUSY_SHARE) {
        active + 1
    } else if active > 1 && total < IDLE_SHARE * (active - 1) as f64 {
        active - 1
    } else {
        active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_joins_when_every_active_one_is_busy() {
        assert_eq!(wanted_active(&[0.9], 2), 2);
        assert_eq!(wanted_active(&[0.9, 0.8], 4), 3);
        assert_eq!(wanted_active(&[0.9, 0.3], 4), 2, "one is not busy");
        assert_eq!(wanted_active(&[0.9], 1), 1, "no other worker");
    }

    #[test]
    fn the_last_worker_stops_taking_clients_when_the_others_can_carry_the_load() {
        assert_eq!(wanted_active(&[0.2, 0.2], 2), 1);
        assert_eq!(
            wanted_active(&[0.5, 0.4], 2),
            2,
            "0.9 is more than half a worker"
        );
        assert_eq!(wanted_active(&[0.6, 0.5, 0.4], 3), 3);
        assert_eq!(wanted_active(&[0.3, 0.3, 0.3], 3), 2);
        assert_eq!(wanted_active(&[0.1], 2), 1, "worker 0 always takes clients");
    }
}

/// The running worker threads 1 and up; dropping it stops them and waits for them.
#[derive(Debug)]
pub struct Workers {
    stop: Option<watch::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Builds `count` single-threaded runtimes (at least one). Returns worker 0's, for the calling
/// thread to block on, and starts the others, each on its own thread, until the returned
/// `Workers` is dropped.
pub fn start(count: usize) -> io::Result<(Runtime, Workers)> {
    let build = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let first = build()?;
    let (stop, stopped) = watch::channel(());
    let mut handles = vec![first.handle().clone()];
    let mut threads = Vec::new();
    for index in 1..count.max(1) {
        let runtime = build()?;
        handles.push(runtime.handle().clone());
        let mut stopped = stopped.clone();
        let worker = u16::try_from(index).unwrap_or(u16::MAX);
        let thread = std::thread::Builder::new()
            .name(format!("pgberth-worker-{index}"))
            .spawn(move || {
                INDEX.with(|i| i.set(worker));
                runtime.block_on(async move { while stopped.changed().await.is_ok() {} });
                runtime.shutdown_background();
            })?;
        threads.push(thread);
    }
    let count = handles.len();
    let _ = WORKERS.set(Shared {
        handles: handles.into_boxed_slice(),
        active: watch::channel(1).0,
        last_look: Mutex::new((Instant::now(), vec![Duration::ZERO; count])),
    });
    Ok((
        first,
        Workers {
            stop: Some(stop),
            threads,
        },
    ))
}
