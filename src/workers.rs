//! The worker threads: one single-threaded tokio runtime per thread (`workers`, default one
//! per CPU). A client's task stays on the worker that accepted it, so the runtime keeps no
//! cross-thread scheduling state per message.
//!
//! Workers join in as the load needs them: new clients go to the *active* workers only, at
//! first worker 0 alone, and one more worker becomes active when every active one used most
//! of a core (its thread's CPU time) in the last quarter second. A pooler that one core can
//! carry runs on one, where its event loop batches best; one that needs more spreads over
//! them. The thread that starts the workers is worker 0, and runs the upkeep tasks too.
//!
//! Clients already connected follow: at its next idle moment (between transactions) a client
//! of a worker that has too many moves to the least busy active worker, and a worker that is
//! no longer active hands all of its clients over (`take_hand_over`).
//!
//! A socket is registered with the runtime of the worker that opened it. A server connection
//! checked out by a client on another worker moves its registration there first
//! (`Stream::move_to_this_worker`), and pools hand out connections of the client's own worker
//! first, so that moves are rare.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

thread_local! {
    static INDEX: Cell<u16> = const { Cell::new(0) };
}

/// A worker becomes active when every active worker's thread used at least this share of a
/// core since the last look, and the last one added stops taking new clients when the others
/// could carry the load below `IDLE_SHARE`.
const BUSY_SHARE: f64 = 0.75;
const IDLE_SHARE: f64 = 0.5;
/// Active workers whose shares differ by more than this even out by moving clients.
const UNEVEN: f64 = 0.25;

static WORKERS: OnceLock<Shared> = OnceLock::new();

struct Shared {
    handles: Box<[Handle]>,
    /// Each worker thread's CPU-time clock.
    clocks: Box<[libc::clockid_t]>,
    /// How many workers (counting from 0) take new clients.
    active: watch::Sender<usize>,
    /// Each worker's clients and hand-over request.
    load: Box<[WorkerLoad]>,
    /// Each worker's CPU time, and when, at the last look (`adjust_active`).
    last_look: Mutex<(Instant, Vec<Duration>)>,
}

/// A worker's clients, and how many of them should move elsewhere.
#[derive(Debug, Default)]
struct WorkerLoad {
    /// Clients relaying on this worker now (`Relaying`).
    clients: AtomicU32,
    /// How many of them should move to `hand_over_to` at their next idle moment.
    hand_over: AtomicU32,
    hand_over_to: AtomicU16,
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

/// The runtime of worker `index`.
pub fn handle(index: u16) -> Option<&'static Handle> {
    WORKERS.get()?.handles.get(usize::from(index))
}

/// Counts a client relaying on the calling worker for as long as it lives.
#[derive(Debug)]
pub struct Relaying(());

impl Relaying {
    pub fn start() -> Relaying {
        if let Some(load) = this_worker_load() {
            load.clients.fetch_add(1, Ordering::Relaxed);
        }
        Relaying(())
    }
}

impl Drop for Relaying {
    fn drop(&mut self) {
        if let Some(load) = this_worker_load() {
            load.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn this_worker_load() -> Option<&'static WorkerLoad> {
    WORKERS.get()?.load.get(usize::from(current()))
}

/// For a client at an idle moment: the worker it should move to, when its own worker is
/// handing clients over. One relaxed load when it is not.
pub fn take_hand_over() -> Option<u16> {
    let load = this_worker_load()?;
    let mut left = load.hand_over.load(Ordering::Relaxed);
    while left > 0 {
        match load.hand_over.compare_exchange_weak(
            left,
            left - 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(load.hand_over_to.load(Ordering::Relaxed)),
            Err(now) => left = now,
        }
    }
    None
}

/// Asks worker `from` to hand `count` of its clients to worker `to`, each at its next idle
/// moment; replaces an earlier request. A request to hand clients to itself or to a worker
/// that does not exist clears it.
pub fn hand_over(from: u16, count: u32, to: u16) {
    let Some(workers) = WORKERS.get() else {
        return;
    };
    let count = if to == from || usize::from(to) >= workers.handles.len() {
        0
    } else {
        count
    };
    if let Some(load) = workers.load.get(usize::from(from)) {
        load.hand_over_to.store(to, Ordering::Relaxed);
        load.hand_over.store(count, Ordering::Relaxed);
    }
}

/// Clients relaying on each worker now (parked clients are on none); empty before `start`.
pub fn clients() -> Vec<u32> {
    WORKERS.get().map_or_else(Vec::new, |w| {
        w.load
            .iter()
            .map(|l| l.clients.load(Ordering::Relaxed))
            .collect()
    })
}

/// How many workers take new clients now; 0 before `start`.
pub fn active() -> usize {
    WORKERS.get().map_or(0, |w| *w.active.borrow())
}

/// Follows how many workers take new clients; `None` before `start` (then every worker
/// does).
pub fn watch_active() -> Option<watch::Receiver<usize>> {
    WORKERS.get().map(|w| w.active.subscribe())
}

/// Adds an active worker when all active ones are busy, retires the last added one when the
/// others can carry the load, and asks workers with too many clients to hand some over;
/// called by the upkeep every quarter second.
pub fn adjust_active() {
    let Some(workers) = WORKERS.get() else {
        return;
    };
    let used: Vec<Duration> = workers.clocks.iter().map(|&c| cpu_time(c)).collect();
    let now = Instant::now();
    let mut last = workers.last_look.lock().unwrap_or_else(|e| e.into_inner());
    let elapsed = now.duration_since(last.0).as_secs_f64().max(1e-3);
    let shares: Vec<f64> = used
        .iter()
        .zip(&last.1)
        .map(|(now, before)| now.saturating_sub(*before).as_secs_f64() / elapsed)
        .collect();
    *last = (now, used);
    let clients: Vec<u32> = workers
        .load
        .iter()
        .map(|l| l.clients.load(Ordering::Relaxed))
        .collect();
    let active = *workers.active.borrow();
    let plan = plan(&shares, &clients, active);
    for (from, request) in plan.hand_over.iter().enumerate() {
        let (count, to) = request.unwrap_or((0, 0));
        hand_over(u16::try_from(from).unwrap_or(0), count, to);
    }
    if plan.active != active {
        tracing::debug!(
            "{} of {} workers take new clients",
            plan.active,
            workers.handles.len()
        );
        workers.active.send_replace(plan.active);
    }
}

/// What the upkeep asks of the workers.
#[derive(Debug, PartialEq)]
struct Plan {
    /// How many workers take new clients.
    active: usize,
    /// For each worker: how many of its clients move, and to which worker.
    hand_over: Vec<Option<(u32, u16)>>,
}

/// Plans from each worker's share of a core since the last look and its client count:
/// workers beyond the active ones hand all their clients to the least busy active worker,
/// and the busiest active worker, when it is much busier than the least busy one, hands it
/// enough clients to even them out.
fn plan(shares: &[f64], clients: &[u32], active: usize) -> Plan {
    let active = wanted_active(&shares[..active], shares.len());
    let mut hand_over = vec![None; shares.len()];
    let by_share = |a: &usize, b: &usize| shares[*a].total_cmp(&shares[*b]);
    let (Some(idlest), Some(busiest)) =
        ((0..active).min_by(by_share), (0..active).max_by(by_share))
    else {
        return Plan { active, hand_over };
    };
    let to = u16::try_from(idlest).unwrap_or(0);
    for worker in active..shares.len() {
        if clients[worker] > 0 {
            hand_over[worker] = Some((clients[worker], to));
        }
    }
    let (high, low) = (shares[busiest], shares[idlest]);
    if high - low > UNEVEN && high >= IDLE_SHARE {
        let moving = f64::from(clients[busiest]) * (high - low) / (2.0 * high);
        let moving = (moving.ceil() as u32).min(clients[busiest]);
        if moving > 0 {
            hand_over[busiest] = Some((moving, to));
        }
    }
    Plan { active, hand_over }
}

/// The calling thread's CPU-time clock, which other threads may read too.
fn this_thread_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = libc::CLOCK_THREAD_CPUTIME_ID;
    // SAFETY: `pthread_self()` is a live thread (the caller) and `clock` a valid place for
    // the result; on failure `clock` keeps a valid id (the reading thread's own clock).
    unsafe {
        libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock);
    }
    clock
}

/// The CPU time used by the thread of `clock`; zero if it cannot be read.
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to; an invalid clock only makes it fail.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
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
    let mut clocks = vec![this_thread_clock()];
    let mut threads = Vec::new();
    let (clock_tx, clock_rx) = std::sync::mpsc::channel();
    for index in 1..count.max(1) {
        let runtime = build()?;
        handles.push(runtime.handle().clone());
        let mut stopped = stopped.clone();
        let worker = u16::try_from(index).unwrap_or(u16::MAX);
        let clock_tx = clock_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pgberth-worker-{index}"))
            .spawn(move || {
                INDEX.with(|i| i.set(worker));
                let _ = clock_tx.send(this_thread_clock());
                runtime.block_on(async move { while stopped.changed().await.is_ok() {} });
                runtime.shutdown_background();
            })?;
        threads.push(thread);
        clocks.push(clock_rx.recv().map_err(io::Error::other)?);
    }
    let clocks_now = clocks.iter().map(|&c| cpu_time(c)).collect();
    let _ = WORKERS.set(Shared {
        handles: handles.into_boxed_slice(),
        load: clocks.iter().map(|_| WorkerLoad::default()).collect(),
        clocks: clocks.into_boxed_slice(),
        active: watch::channel(1).0,
        last_look: Mutex::new((Instant::now(), clocks_now)),
    });
    Ok((
        first,
        Workers {
            stop: Some(stop),
            threads,
        },
    ))
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

    #[test]
    fn a_busy_worker_hands_clients_to_a_newly_active_one() {
        let plan = plan(&[0.9, 0.0], &[50, 0], 1);
        assert_eq!(plan.active, 2);
        assert_eq!(
            plan.hand_over,
            vec![Some((25, 1)), None],
            "half: 0.9 evens out at 0.45"
        );
    }

    #[test]
    fn even_workers_keep_their_clients() {
        let plan = plan(&[0.8, 0.7], &[30, 20], 2);
        assert_eq!(
            plan,
            Plan {
                active: 2,
                hand_over: vec![None, None]
            }
        );
    }

    #[test]
    fn a_retired_worker_hands_all_its_clients_to_the_active_ones() {
        let three = plan(&[0.1, 0.05, 0.2], &[10, 4, 7], 3);
        assert_eq!(three.active, 2);
        assert_eq!(
            three.hand_over[2],
            Some((7, 1)),
            "to the least busy active worker"
        );
        let two = plan(&[0.1, 0.05], &[10, 4], 2);
        assert_eq!(two.active, 1);
        assert_eq!(two.hand_over, vec![None, Some((4, 0))]);
    }
}
