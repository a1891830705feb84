//! Counts the tasks the data plane spawns for its traffic: client connections, upstream
//! connections, HTTP/2 streams, upgraded tunnels and mirrored requests. Each worker thread is
//! given its server's counter when it starts; a task counts from its spawn until its future is
//! dropped (finished, cancelled or dropped with its runtime), so a count that returns to its
//! level before the traffic shows that no task leaked (`weir_tasks_alive`).

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

thread_local! {
    static COUNTER: RefCell<Option<Arc<AtomicUsize>>> = const { RefCell::new(None) };
}

/// Makes `counter` the one tasks spawned on this thread count in.
pub(crate) fn set_counter(counter: Arc<AtomicUsize>) {
    COUNTER.with(|slot| *slot.borrow_mut() = Some(counter));
}

/// `tokio::task::spawn_local`, counted in this thread's counter (when it has one).
pub(crate) fn spawn_local<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let alive = COUNTER.with(|slot| slot.borrow().clone()).map(Alive::new);
    tokio::task::spawn_local(async move {
        let _alive = alive;
        future.await
    })
}

/// One live task in its counter.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(counter: Arc<AtomicUsize>) -> Alive {
        counter.fetch_add(1, Ordering::Relaxed);
        Alive(counter)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_counts_until_its_future_is_dropped() {
        let counter = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            set_counter(counter.clone());
            let done = spawn_local(async {});
            let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
            let pending = spawn_local(async move {
                let _ = rx.await;
            });
            assert_eq!(counter.load(Ordering::Relaxed), 2);
            done.await.expect("finishes");
            assert_eq!(counter.load(Ordering::Relaxed), 1, "a finished task");
            pending.abort();
            let _ = pending.await;
            assert_eq!(counter.load(Ordering::Relaxed), 0, "an aborted task");
        });
    }
}
