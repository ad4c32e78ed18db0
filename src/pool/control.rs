//! What the admin console's control commands do to one pool: pausing (PAUSE, SUSPEND, and the
//! pause that KILL leaves behind), resuming, retiring every connection (RECONNECT, and a RELOAD
//! that changed the server target) and waiting for retired connections to be gone
//! (WAIT_CLOSE).
//!
//! A paused pool hands out no connection: `Pool::checkout` waits in `wait_resumed` (the time
//! spent there does not count against `query_wait_timeout`), and clients already queued for a
//! connection are sent back there. Connections in use are not touched; in `PauseMode::Pause`
//! each one is closed once its client releases it, in `PauseMode::Suspend` it is kept idle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, watch};

use super::Pool;

/// How a paused pool treats its server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// PAUSE: connections are closed as soon as their clients release them.
    Pause,
    /// SUSPEND: connections are kept, idle, for after RESUME.
    Suspend,
}

/// The control state of one pool.
#[derive(Debug)]
pub(super) struct PoolControl {
    /// Mirrors `mode.is_some()`, for the checkout fast path.
    paused: AtomicBool,
    mode: watch::Sender<Option<PauseMode>>,
    /// Clients waiting in `wait_resumed` (shown as `cl_waiting`).
    held: AtomicUsize,
    /// Woken when a connection is checked in or closed, and when the pause mode changes.
    changed: Notify,
    /// Tasks waiting on `changed` (PAUSE, WAIT_CLOSE): checkin skips `changed`'s lock when
    /// there are none.
    watchers: AtomicUsize,
    /// Held by every connection of the current generation.
    generation_token: Mutex<Arc<()>>,
    /// Tokens of retired generations; a live one means a retired connection is still open.
    retired: Mutex<Vec<Weak<()>>>,
}

impl Default for PoolControl {
    fn default() -> PoolControl {
        PoolControl {
            paused: AtomicBool::new(false),
            mode: watch::Sender::new(None),
            held: AtomicUsize::new(0),
            changed: Notify::new(),
            watchers: AtomicUsize::new(0),
            generation_token: Mutex::new(Arc::new(())),
            retired: Mutex::new(Vec::new()),
        }
    }
}

impl PoolControl {
    /// A connection was checked in or closed: wake PAUSE and WAIT_CLOSE.
    pub(super) fn released(&self) {
        // SeqCst pairs with `watch`: a watcher either is counted here or, having counted
        // itself first, sees the change when it checks its condition.
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Counts the caller as a watcher of `changed` until the guard is dropped.
    fn watch(&self) -> Counted<'_> {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        Counted(&self.watchers)
    }

    /// The token a connection opened now holds until it closes.
    pub(super) fn generation_token(&self) -> Arc<()> {
        self.generation_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current generation is retired (call with the pool's generation bumped): its
    /// connections count as retired until they close.
    pub(super) fn retire_generation(&self) {
        let old = std::mem::replace(
            &mut *self
                .generation_token
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            Arc::new(()),
        );
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|w| w.strong_count() > 0);
        retired.push(Arc::downgrade(&old));
    }

    fn retired_open(&self) -> usize {
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(Weak::strong_count)
            .sum()
    }
}

/// Keeps a count raised while it lives (clients held by a pause, watchers of `changed`).
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// Pauses the pool (`Some`) or lets it go on (`None`). Pausing sends queued clients back
    /// to wait for RESUME and, with `PauseMode::Pause`, closes the idle connections.
    pub fn set_pause(&self, mode: Option<PauseMode>) {
        self.control.paused.store(mode.is_some(), Ordering::Release);
        self.control.mode.send_replace(mode);
        if mode.is_some() {
            let (queued, idle) = {
                let mut inner = self.lock();
                let queued = std::mem::take(&mut inner.waiters);
                let idle = if mode == Some(PauseMode::Pause) {
                    std::mem::take(&mut inner.idle)
                } else {
                    Vec::new()
                };
                (queued, idle)
            };
            // A queued client whose sender is gone sees the pause and waits in
            // `wait_resumed`; closing connections frees their slots.
            drop(queued);
            drop(idle);
        }
        self.control.released();
    }

    pub fn pause_mode(&self) -> Option<PauseMode> {
        *self.control.mode.borrow()
    }

    /// Lock-free: true while the pool is paused.
    pub(super) fn is_paused(&self) -> bool {
        self.control.paused.load(Ordering::Acquire)
    }

    /// Clients waiting for RESUME.
    pub fn held_clients(&self) -> usize {
        self.control.held.load(Ordering::Relaxed)
    }

    /// Waits while the pool is paused; true if it had to wait.
    pub(super) async fn wait_resumed(&self) -> bool {
        if !self.is_paused() {
            return false;
        }
        self.control.held.fetch_add(1, Ordering::Relaxed);
        let _held = Counted(&self.control.held);
        let mut mode = self.control.mode.subscribe();
        // The sender lives in the pool, which outlives this borrow: no error possible.
        let _ = mode.wait_for(Option::is_none).await;
        true
    }

    /// PAUSE: waits until no server connection of this pool is open, closing each one as it
    /// goes idle. Returns early if the pool is resumed meanwhile.
    pub async fn wait_released(&self) {
        let _watching = self.control.watch();
        loop {
            let notified = self.control.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pause_mode() != Some(PauseMode::Pause) {
                return;
            }
            let idle = {
                let mut inner = self.lock();
                if inner.open == 0 {
                    return;
                }
                std::mem::take(&mut inner.idle)
            };
            if !idle.is_empty() {
                drop(idle);
                continue;
            }
            notified.await;
        }
    }

    /// RECONNECT: retires every open connection. Idle ones close now, the others when their
    /// clients release them; new ones are opened on demand.
    pub fn reconnect(&self) {
        let idle = {
            let mut inner = self.lock();
            inner.generation += 1;
            self.control.retire_generation();
            std::mem::take(&mut inner.idle)
        };
        drop(idle);
    }

    /// Server connections retired by RECONNECT or a RELOAD that are still open.
    pub fn retired_open(&self) -> usize {
        self.control.retired_open()
    }

    /// WAIT_CLOSE: waits until every retired connection is closed.
    pub async fn wait_retired_closed(&self) {
        let _watching = self.control.watch();
        loop {
            let notified = self.control.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.control.retired_open() == 0 {
                return;
            }
            notified.await;
        }
    }
}
