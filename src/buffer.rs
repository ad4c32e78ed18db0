//! Relay buffers. A client holds buffers only while it holds a server connection; idle clients
//! hold none. Buffers come from a per-thread free list so steady-state relaying allocates
//! nothing.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Size of one relay buffer; a message larger than this streams through in pieces.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// Buffers kept per worker thread for reuse.
const FREE_LIST_MAX: usize = 256;

/// Buffers in existence: held by clients relaying, or in a free list (SHOW MEM). Changed only
/// when a buffer is allocated or freed, never when one is reused.
pub static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A relay buffer that goes back to the current thread's free list when dropped.
#[derive(Debug)]
pub struct Buffer(Option<Box<[u8]>>);

impl Buffer {
    pub fn take() -> Buffer {
        let reused = FREE.with(|f| f.borrow_mut().pop());
        Buffer(Some(reused.unwrap_or_else(|| {
            ALLOCATED.fetch_add(1, Ordering::Relaxed);
            vec![0u8; BUFFER_SIZE].into_boxed_slice()
        })))
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().expect("buffer present until drop")
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().expect("buffer present until drop")
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            FREE.with(|f| {
                let mut free = f.borrow_mut();
                if free.len() < FREE_LIST_MAX {
                    free.push(buf);
                } else {
                    ALLOCATED.fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_buffers_are_reused() {
        let first = Buffer::take();
        let addr = first.as_ptr();
        drop(first);
        let second = Buffer::take();
        assert_eq!(second.as_ptr(), addr);
        assert_eq!(second.len(), BUFFER_SIZE);
    }
}
