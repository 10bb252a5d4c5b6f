//! The compute pool: a fixed set of threads for heavy computations, with a bounded
//! number of calls waiting for them (see [`ComputePool`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start compute thread {index}")]
    Spawn {
        index: usize,
        source: std::io::Error,
    },
    #[error(
        "server busy: all {threads} compute threads are taken and max_waiting_calls \
         ({max_waiting}) calls already wait for one; retry later"
    )]
    Full { threads: usize, max_waiting: usize },
    #[error("the compute pool is shutting down")]
    Closed,
    #[error("the computation panicked")]
    Panicked,
}

/// A fixed set of `threads` compute threads, created at start, so heavy calls can never
/// add threads to the process (tokio's blocking pool would grow to 512).
///
/// A call holds two permits: one of `threads + max_waiting` admissions, taken without
/// waiting (none left means refusal, so the queue is bounded), and one of `threads`
/// compute slots, waited for. Both move into the job and are released when the
/// computation ends, not when the call ends: a client that gives up (deadline,
/// cancellation) cannot free a slot whose computation still runs, so running
/// computations never exceed `threads`. A call cancelled while it waits drops both at
/// once and leaves the queue.
pub struct ComputePool {
    jobs: mpsc::Sender<Job>,
    admissions: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    threads: usize,
    max_waiting: usize,
}

impl ComputePool {
    pub fn new(threads: usize, max_waiting: usize) -> Result<Self, PoolError> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("labmq-compute-{index}"))
                .spawn(move || worker(&queue))
                .map_err(|source| PoolError::Spawn { index, source })?;
        }
        Ok(Self {
            jobs,
            admissions: Arc::new(Semaphore::new(threads.saturating_add(max_waiting))),
            slots: Arc::new(Semaphore::new(threads)),
            threads,
            max_waiting,
        })
    }

    /// Runs `work` on a compute thread once one is free; refuses at once when
    /// `max_waiting` calls already wait.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let admission =
            self.admissions
                .clone()
                .try_acquire_owned()
                .map_err(|_| PoolError::Full {
                    threads: self.threads,
                    max_waiting: self.max_waiting,
                })?;
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Closed)?;
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let held: (OwnedSemaphorePermit, OwnedSemaphorePermit) = (admission, slot);
            // A worker catches the panic so it lives on; the call gets INTERNAL.
            let outcome = catch_unwind(AssertUnwindSafe(work));
            // Free before answering, so the caller's next call finds the slot free.
            drop(held);
            let _ = done.send(outcome);
        });
        self.jobs.send(job).map_err(|_| PoolError::Closed)?;
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(PoolError::Panicked),
            Err(_) => Err(PoolError::Closed),
        }
    }
}

fn worker(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // A panic never happens while the lock is held (jobs run after it is released),
        // but a poisoned lock would still guard a usable receiver.
        let next = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match next {
            Ok(job) => job(),
            // The pool was dropped: the server is done.
            Err(mpsc::RecvError) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn refuses_beyond_the_waiting_limit_and_frees_slots_only_when_work_ends() {
        let pool = Arc::new(ComputePool::new(1, 1).unwrap());
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let running = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(move || gate.recv().is_ok()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Cancelled (dropped) while its work runs: the slot stays taken.
        running.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| 7).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = pool.run(|| 0).await.unwrap_err().to_string();
        assert!(err.contains("max_waiting_calls (1)"), "{err}");
        release.send(()).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
        assert_eq!(pool.run(|| 8).await.unwrap(), 8);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_thread_lives_on() {
        let pool = ComputePool::new(1, 0).unwrap();
        let err = pool.run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(matches!(err, PoolError::Panicked), "{err}");
        assert_eq!(pool.run(|| 3).await.unwrap(), 3);
    }
}
