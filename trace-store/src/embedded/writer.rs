//! The write connection's own thread, below the request path.

use super::*;

use std::sync::atomic::{AtomicU64, Ordering};

/// The writer thread's name (short enough for Linux's 15-character thread names).
pub const WRITER_THREAD: &str = "trace-writer";

pub(super) type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The write connection on a thread of its own that runs only when the services leave a core
/// idle (Linux's `SCHED_IDLE` policy).
///
/// Why: a batch of 500 traces is ~100 ms of one core's work. In the gateway's process, on a
/// tokio blocking thread at normal priority, that took a core from the requests for as long,
/// and their tail latency showed it. A lower nice value was not enough: at nice 10, p99 at
/// 1,000 req/s was higher than with `SCHED_IDLE` in 7 of 8 interleaved pairs (BENCHMARKS.md).
/// The likely reason (not measured directly): a running nice-10 batch may keep its core for a
/// scheduler slice after a request thread wakes, while `SCHED_IDLE` threads are preempted at
/// once by any normal thread that wakes. The writer's
/// bounded queue absorbs the delay (and counts what it drops when it cannot: when no core is
/// idle for long, traces are dropped before requests wait).
pub(super) struct WriterThread {
    /// `None` only while dropping.
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The thread's CPU time in ns as of its last job; [`UNREAD`] until it has been read.
    cpu_ns: Arc<AtomicU64>,
}

/// [`WriterThread::cpu`]'s value before the thread's clock has been read (or where it cannot).
const UNREAD: u64 = u64::MAX;

impl Drop for WriterThread {
    /// Closes the queue and waits for the thread to finish what was sent and close its
    /// connection, as dropping a connection does: the file is checkpointed and complete once
    /// the store is gone.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("trace store writer thread panicked");
        }
    }
}

impl WriterThread {
    pub(super) fn start(mut conn: Connection) -> Result<Self, StoreError> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let cpu_ns = Arc::new(AtomicU64::new(UNREAD));
        let thread = std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || {
                run_when_idle();
                // Ends when the store (the only sender) is dropped.
                while let Ok(job) = rx.recv() {
                    // A panic inside a transaction rolls it back: the connection stays usable,
                    // and the caller gets an error (its reply channel is dropped).
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
                }
            })
            .map_err(|e| unavailable(format!("writer thread: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            cpu_ns,
        })
    }

    /// The thread's CPU time as of its last job; `None` before one or where it cannot be read.
    pub(super) fn cpu(&self) -> Option<std::time::Duration> {
        match self.cpu_ns.load(Ordering::Acquire) {
            UNREAD => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }

    /// Runs `f` on the write connection.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let cpu = self.cpu_ns.clone();
        self.jobs
            .as_ref()
            .ok_or_else(|| unavailable("the writer thread has stopped"))?
            .send(Box::new(move |conn| {
                let out = f(conn);
                // Before the caller hears back, so that it reads the time with this job in it.
                if let Some(ns) = own_cpu_ns() {
                    cpu.store(ns, Ordering::Release);
                }
                let _ = reply.send(out);
            }))
            .map_err(|_| unavailable("the writer thread has stopped"))?;
        result.await.map_err(|_| unavailable("store write failed (panicked)"))?
    }
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only on a core no other thread wants,
/// and yields it as soon as one does. Elsewhere than Linux, or where the policy cannot be set,
/// the thread takes the lowest nice value it may instead. Best effort: failures are logged.
pub(super) fn run_when_idle() {
    use thread_priority::{ThreadPriority, set_current_thread_priority};
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
            thread_schedule_policy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        // The call sets the policy, then the nice value `SCHED_IDLE` ignores; only the policy
        // matters, so it is checked rather than the call's result.
        let _ = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
        if thread_schedule_policy().is_ok_and(|p| p == idle) {
            return;
        }
    }
    if let Err(e) = set_current_thread_priority(ThreadPriority::Min) {
        tracing::warn!(error = ?e, "trace store writer: could not lower the thread's priority");
    }
}

/// The calling thread's CPU time in ns: the first field of Linux's
/// `/proc/thread-self/schedstat` (time on a CPU). `None` elsewhere. One small read, once a
/// batch.
fn own_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_ascii_whitespace().next()?.parse().ok()
}
