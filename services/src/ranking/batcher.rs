//! Dynamic batching: concurrent requests share model calls.
//!
//! Requests enter a bounded queue (full: refused at once, `Overloaded`). A worker thread takes
//! the first waiting request, then gathers more — up to `max_requests` requests and
//! `max_batch` rows — while others are known to be on their way (a lone request never waits
//! for company that is not coming), and never past [`gather_until`]: `max_wait` after the
//! first request *entered the queue* (time it already spent queued behind a running batch
//! counts), nor so late that the batch would miss its earliest deadline at the last batch's
//! model time. It drops requests whose deadline has already passed (`DeadlineExceeded`,
//! counted as shed), scores the rest in one model call per `max_batch` rows and hands each
//! request its slice of the scores. Which cap binds depends on the device: on CPU the default
//! row cap (512) keeps requests of ~500 candidates in calls of their own, as sharing measured
//! slower there; a GPU stack raises it so that up to `max_requests` share a call
//! (docs/ranking.md, "Batching").
//! A request that finds the model idle and nothing queued is scored on its own thread instead
//! (`inline_when_idle`, on for CPU models): the worker would score it alone and at once anyway,
//! and the two thread hand-offs add latency and CPU to every such request (BENCHMARKS, "The
//! batcher's idle path"). Requests arriving while it runs queue for the worker as before, which
//! waits for the model and gathers them. The model sits behind a lock that the worker and an
//! idle-path request take in turn; dropping the [`Batcher`] ends the worker once the queue
//! drains (how a hot swap retires the old model).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::model::{Device, ModelError, OnnxModel};

/// Something that scores rows: the ONNX model in production, any function in tests.
pub trait Scorer: Send + 'static {
    fn version(&self) -> &str;
    /// Values per row of the sparse and dense inputs.
    fn widths(&self) -> (usize, usize);
    fn score(&mut self, sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, ModelError>;
}

impl Scorer for OnnxModel {
    fn version(&self) -> &str {
        OnnxModel::version(self)
    }
    fn widths(&self) -> (usize, usize) {
        self.widths
    }
    fn score(&mut self, sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        OnnxModel::score(self, sparse, dense, rows)
    }
}

/// A scorer chosen when the model loads (the graph, its folded head, or its trees).
impl Scorer for Box<dyn Scorer> {
    fn version(&self) -> &str {
        (**self).version()
    }
    fn widths(&self) -> (usize, usize) {
        (**self).widths()
    }
    fn score(&mut self, sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        (**self).score(sparse, dense, rows)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BatchConfig {
    /// Most rows in one model call (a larger request is split).
    pub max_batch: usize,
    /// Most requests gathered into one batch.
    pub max_requests: usize,
    /// Longest the first request of a batch waits, from entering the queue, for others.
    pub max_wait: Duration,
    /// Requests waiting at most; more are refused.
    pub queue: usize,
    /// Off: every request is its own model call (for comparison).
    pub enabled: bool,
    /// A request that finds the model idle and no request queued is scored on the caller's
    /// thread, not handed to the worker. For models whose call is short (CPU); the ranking
    /// service turns it off on a GPU, whose calls should not hold the runtime's threads.
    pub inline_when_idle: bool,
}

impl BatchConfig {
    /// This config for a model on `device`: a GPU call should not hold the runtime's threads,
    /// so there every request goes through the worker.
    pub fn for_device(&self, device: Device) -> Self {
        Self {
            inline_when_idle: self.inline_when_idle && device == Device::Cpu,
            ..self.clone()
        }
    }
}

/// The stack's defaults (the CRD's `spec.ranking.batching`), so a service started by hand
/// batches as a deployed one does.
impl Default for BatchConfig {
    fn default() -> Self {
        use recstack_crds::defaults;
        let positive = |v: i32| usize::try_from(v).unwrap_or(1).max(1);
        Self {
            max_batch: positive(defaults::max_batch()),
            max_requests: positive(defaults::max_requests()),
            max_wait: Duration::from_micros(u64::try_from(defaults::max_wait_micros()).unwrap_or(0)),
            queue: 256,
            enabled: true,
            inline_when_idle: true,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BatchError {
    #[error("the ranking queue is full ({0} requests waiting)")]
    Overloaded(usize),
    #[error("the request's deadline passed while it waited for the model")]
    DeadlineExceeded,
    #[error("the model worker has stopped")]
    Stopped,
    #[error("{0}")]
    Model(String),
}

/// How a request reached the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScoredBy {
    /// Its own thread: it found the model idle and nothing queued (`inline_when_idle`).
    IdlePath,
    /// The worker, from the queue.
    Worker,
}

impl ScoredBy {
    /// The metrics' label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdlePath => "idle",
            Self::Worker => "worker",
        }
    }
}

/// What happened to each batch, for metrics.
pub trait BatchObserver: Send + Sync + 'static {
    fn batch(&self, _version: &str, _rows: usize, _requests: usize, _model_time: Duration) {}
    /// A request about to be scored: how it reached the model, and how long it waited for it.
    fn queued(&self, _by: ScoredBy, _wait: Duration) {}
    fn shed(&self, _version: &str) {}
}

impl BatchObserver for () {}

struct Job {
    sparse: Vec<i64>,
    dense: Vec<f32>,
    rows: usize,
    deadline: Instant,
    enqueued: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>, BatchError>>,
}

/// The model, shared by the worker and the requests that find it idle.
type Shared = Arc<Mutex<dyn Scorer>>;

/// What a request that finds the model idle needs to score itself.
struct IdlePath {
    model: Shared,
    observer: Arc<dyn BatchObserver>,
    max_batch: usize,
}

/// A model behind a batching queue.
pub struct Batcher {
    tx: SyncSender<Job>,
    /// Requests queued for or being scored by the worker (not those scored inline).
    active: Arc<AtomicUsize>,
    version: String,
    widths: (usize, usize),
    queue: usize,
    /// When `inline_when_idle` is on.
    idle: Option<IdlePath>,
}

impl Batcher {
    /// Starts the worker thread that owns `scorer`.
    pub fn start<S: Scorer>(scorer: S, cfg: BatchConfig, observer: Arc<dyn BatchObserver>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue.max(1));
        let version = scorer.version().to_string();
        let widths = scorer.widths();
        let queue = cfg.queue;
        let active = Arc::new(AtomicUsize::new(0));
        let counted = active.clone();
        let model: Shared = Arc::new(Mutex::new(scorer));
        let idle = cfg.inline_when_idle.then(|| IdlePath {
            model: model.clone(),
            observer: observer.clone(),
            max_batch: cfg.max_batch.max(1),
        });
        std::thread::Builder::new()
            .name(format!("rank-{version}"))
            .spawn(move || worker(model, rx, cfg, observer, counted))
            .expect("spawning a thread");
        Self {
            tx,
            active,
            version,
            widths,
            queue,
            idle,
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn widths(&self) -> (usize, usize) {
        self.widths
    }

    /// Scores `rows` rows (row-major) before `deadline`.
    pub async fn score(
        &self,
        sparse: Vec<i64>,
        dense: Vec<f32>,
        rows: usize,
        deadline: Instant,
    ) -> Result<Vec<f32>, BatchError> {
        if let Some(idle) = &self.idle
            // Nothing queued or running: the worker would score this request alone, now.
            && self.active.load(Ordering::SeqCst) == 0
            // Busy (another idle-path request, or the worker that just took a job): queue.
            && let Ok(mut model) = idle.model.try_lock()
        {
            return score_alone(
                &mut *model,
                &sparse,
                &dense,
                rows,
                deadline,
                idle.max_batch,
                idle.observer.as_ref(),
            );
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            sparse,
            dense,
            rows,
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        self.active.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(e) => {
                self.active.fetch_sub(1, Ordering::SeqCst);
                return Err(match e {
                    TrySendError::Full(_) => BatchError::Overloaded(self.queue),
                    TrySendError::Disconnected(_) => BatchError::Stopped,
                });
            }
        }
        answer.await.unwrap_or(Err(BatchError::Stopped))
    }
}

/// Until when the worker may keep gathering a batch whose first request entered the queue at
/// `first_enqueued`: `max_wait` from then, and no later than the batch's earliest deadline
/// less `model_time` (the last batch's, an estimate of this one's). Pure, for the tests.
pub fn gather_until(
    first_enqueued: Instant,
    max_wait: Duration,
    earliest_deadline: Instant,
    model_time: Duration,
) -> Instant {
    let by_wait = first_enqueued + max_wait;
    match earliest_deadline.checked_sub(model_time) {
        Some(by_deadline) => by_wait.min(by_deadline),
        None => by_wait,
    }
}

/// One request scored on the caller's thread, as the worker would score a lone one: shed if
/// its deadline has passed, else one model call per `max_batch` rows.
fn score_alone(
    scorer: &mut dyn Scorer,
    sparse: &[i64],
    dense: &[f32],
    rows: usize,
    deadline: Instant,
    max_batch: usize,
    observer: &dyn BatchObserver,
) -> Result<Vec<f32>, BatchError> {
    let now = Instant::now();
    if deadline <= now {
        observer.shed(scorer.version());
        return Err(BatchError::DeadlineExceeded);
    }
    observer.queued(ScoredBy::IdlePath, Duration::ZERO);
    let widths = scorer.widths();
    let scores = score_chunked(scorer, sparse, dense, rows, max_batch, widths);
    observer.batch(scorer.version(), rows, 1, now.elapsed());
    scores.map_err(|e| BatchError::Model(e.to_string()))
}

fn worker(
    model: Shared,
    rx: Receiver<Job>,
    cfg: BatchConfig,
    observer: Arc<dyn BatchObserver>,
    active: Arc<AtomicUsize>,
) {
    let max_batch = cfg.max_batch.max(1);
    let max_requests = cfg.max_requests.max(1);
    let mut carry: Option<Job> = None;
    let mut model_time = Duration::ZERO;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut rows = first.rows;
        let mut earliest = first.deadline;
        let first_enqueued = first.enqueued;
        let mut jobs = vec![first];
        if cfg.enabled {
            // Others are on their way only if more requests are active than gathered.
            while rows < max_batch && jobs.len() < max_requests && active.load(Ordering::SeqCst) > jobs.len() {
                let until = gather_until(first_enqueued, cfg.max_wait, earliest, model_time);
                let wait = until.saturating_duration_since(Instant::now());
                let next = match rx.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                };
                if rows + next.rows > max_batch {
                    carry = Some(next);
                    break;
                }
                rows += next.rows;
                earliest = earliest.min(next.deadline);
                jobs.push(next);
            }
        }
        let n = jobs.len();
        // An idle-path request may hold the model; it is done in one call's time.
        let mut scorer = model.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        run_batch(&mut *scorer, jobs, max_batch, observer.as_ref());
        drop(scorer);
        model_time = started.elapsed();
        active.fetch_sub(n, Ordering::SeqCst);
    }
}

fn run_batch(scorer: &mut dyn Scorer, jobs: Vec<Job>, max_batch: usize, observer: &dyn BatchObserver) {
    let now = Instant::now();
    let (live, expired): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.deadline > now);
    for job in expired {
        observer.shed(scorer.version());
        let _ = job.reply.send(Err(BatchError::DeadlineExceeded));
    }
    if live.is_empty() {
        return;
    }
    for job in &live {
        observer.queued(ScoredBy::Worker, now - job.enqueued);
    }
    let rows: usize = live.iter().map(|j| j.rows).sum();
    let (sw, dw) = scorer.widths();
    let scores = if live.len() == 1 {
        score_chunked(scorer, &live[0].sparse, &live[0].dense, rows, max_batch, (sw, dw))
    } else {
        let mut sparse = Vec::with_capacity(rows * sw);
        let mut dense = Vec::with_capacity(rows * dw);
        for job in &live {
            sparse.extend_from_slice(&job.sparse);
            dense.extend_from_slice(&job.dense);
        }
        score_chunked(scorer, &sparse, &dense, rows, max_batch, (sw, dw))
    };
    observer.batch(scorer.version(), rows, live.len(), now.elapsed());
    match scores {
        Ok(scores) => {
            let mut at = 0;
            for job in live {
                let _ = job.reply.send(Ok(scores[at..at + job.rows].to_vec()));
                at += job.rows;
            }
        }
        Err(e) => {
            let e = BatchError::Model(e.to_string());
            for job in live {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One model call per `max_batch` rows.
fn score_chunked(
    scorer: &mut dyn Scorer,
    sparse: &[i64],
    dense: &[f32],
    rows: usize,
    max_batch: usize,
    (sw, dw): (usize, usize),
) -> Result<Vec<f32>, ModelError> {
    let mut out = Vec::with_capacity(rows);
    let mut start = 0;
    while start < rows {
        let n = (rows - start).min(max_batch);
        out.extend(scorer.score(
            &sparse[start * sw..(start + n) * sw],
            &dense[start * dw..(start + n) * dw],
            n,
        )?);
        start += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Scores a row as the sum of its dense values; records each call's row count and the name
    /// of the thread it ran on.
    struct SumScorer {
        calls: Log<usize>,
        threads: Log<String>,
        delay: Duration,
    }

    impl Scorer for SumScorer {
        fn version(&self) -> &str {
            "sum-1"
        }
        fn widths(&self) -> (usize, usize) {
            (1, 2)
        }
        fn score(&mut self, _sparse: &[i64], dense: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
            std::thread::sleep(self.delay);
            self.calls.lock().unwrap().push(rows);
            let thread = std::thread::current().name().unwrap_or("").to_string();
            self.threads.lock().unwrap().push(thread);
            Ok(dense.chunks(2).map(|r| r[0] + r[1]).collect())
        }
    }

    fn start(cfg: BatchConfig, delay: Duration) -> (Arc<Batcher>, Log<usize>) {
        let (b, calls, _) = start_with_threads(cfg, delay);
        (b, calls)
    }

    /// What a [`SumScorer`] records, one entry per call.
    type Log<T> = Arc<Mutex<Vec<T>>>;

    /// Also the name of the thread each call ran on.
    fn start_with_threads(cfg: BatchConfig, delay: Duration) -> (Arc<Batcher>, Log<usize>, Log<String>) {
        start_observed(cfg, delay, Arc::new(()))
    }

    /// Records how each request reached the model.
    #[derive(Default)]
    struct PathLog(Mutex<Vec<ScoredBy>>);

    impl BatchObserver for PathLog {
        fn queued(&self, by: ScoredBy, _wait: Duration) {
            self.0.lock().unwrap().push(by);
        }
    }

    impl PathLog {
        fn paths(&self) -> Vec<ScoredBy> {
            self.0.lock().unwrap().clone()
        }
    }

    fn start_observed(
        cfg: BatchConfig,
        delay: Duration,
        observer: Arc<dyn BatchObserver>,
    ) -> (Arc<Batcher>, Log<usize>, Log<String>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let scorer = SumScorer {
            calls: calls.clone(),
            threads: threads.clone(),
            delay,
        };
        (Arc::new(Batcher::start(scorer, cfg, observer)), calls, threads)
    }

    fn job(rows: usize, base: f32) -> (Vec<i64>, Vec<f32>) {
        (vec![0; rows], (0..rows * 2).map(|i| base + i as f32).collect())
    }

    fn expected(rows: usize, base: f32) -> Vec<f32> {
        (0..rows).map(|r| 2.0 * base + (4 * r + 1) as f32).collect()
    }

    /// Request `k` (3 + k rows, values from k × 100) for each `k`, each from its own task.
    fn spawn_requests(b: &Arc<Batcher>, ks: std::ops::Range<usize>) -> Vec<tokio::task::JoinHandle<(usize, Vec<f32>)>> {
        ks.map(|k| {
            let b = b.clone();
            tokio::spawn(async move {
                let (s, d) = job(3 + k, k as f32 * 100.0);
                (k, b.score(s, d, 3 + k, later()).await.unwrap())
            })
        })
        .collect()
    }

    /// Each request of [`spawn_requests`] got its own rows' scores.
    async fn assert_own_scores(tasks: Vec<tokio::task::JoinHandle<(usize, Vec<f32>)>>) {
        for t in tasks {
            let (k, scores) = t.await.unwrap();
            assert_eq!(scores, expected(3 + k, k as f32 * 100.0));
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn concurrent_requests_share_a_call_and_each_gets_its_own_scores() {
        let cfg = BatchConfig {
            // What the worker does with requests that queue (none is scored inline).
            inline_when_idle: false,
            max_wait: Duration::from_millis(50),
            ..BatchConfig::default()
        };
        // A slow model: requests arriving while it runs queue up and share the next call.
        let (b, calls) = start(cfg, Duration::from_millis(30));
        let tasks = spawn_requests(&b, 0..8);
        assert_own_scores(tasks).await;
        let calls = calls.lock().unwrap();
        assert_eq!(calls.iter().sum::<usize>(), (3..11).sum::<usize>());
        assert!(calls.len() <= 3, "requests were not batched: {calls:?}");
    }

    #[tokio::test]
    async fn a_lone_request_does_not_wait_for_company() {
        let cfg = BatchConfig {
            max_wait: Duration::from_secs(5),
            ..BatchConfig::default()
        };
        let (b, _) = start(cfg, Duration::ZERO);
        let t = Instant::now();
        let (s, d) = job(3, 0.0);
        assert_eq!(b.score(s, d, 3, later()).await.unwrap(), expected(3, 0.0));
        assert!(t.elapsed() < Duration::from_secs(2), "waited {:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_large_request_is_split_into_max_batch_calls() {
        let cfg = BatchConfig {
            max_batch: 4,
            ..BatchConfig::default()
        };
        let (b, calls) = start(cfg, Duration::ZERO);
        let (s, d) = job(10, 1.0);
        assert_eq!(b.score(s, d, 10, later()).await.unwrap(), expected(10, 1.0));
        assert_eq!(*calls.lock().unwrap(), vec![4, 4, 2]);
    }

    #[tokio::test]
    async fn batches_never_exceed_max_batch_rows() {
        let cfg = BatchConfig {
            max_batch: 10,
            max_wait: Duration::from_millis(20),
            ..BatchConfig::default()
        };
        let (b, calls) = start(cfg, Duration::from_millis(1));
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    let (s, d) = job(3, 0.0);
                    b.score(s, d, 3, later()).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), expected(3, 0.0));
        }
        let calls = calls.lock().unwrap();
        assert!(calls.iter().all(|&n| n <= 10), "{calls:?}");
        assert_eq!(calls.iter().sum::<usize>(), 36);
    }

    #[tokio::test]
    async fn requests_of_many_rows_share_a_call_up_to_max_requests() {
        // 12 requests of 500 rows while a slow model runs: they queue and share calls of at
        // most 4 requests (the row cap, 16,384, is not what stops them).
        let cfg = BatchConfig {
            // What the worker does with requests that queue (none is scored inline).
            inline_when_idle: false,
            max_batch: 16_384,
            max_requests: 4,
            max_wait: Duration::from_millis(50),
            ..BatchConfig::default()
        };
        let (b, calls) = start(cfg, Duration::from_millis(30));
        let tasks: Vec<_> = (0..12)
            .map(|k| {
                let b = b.clone();
                tokio::spawn(async move {
                    let (s, d) = job(500, k as f32);
                    (k, b.score(s, d, 500, later()).await.unwrap())
                })
            })
            .collect();
        for t in tasks {
            let (k, scores) = t.await.unwrap();
            assert_eq!(scores, expected(500, k as f32));
        }
        let calls = calls.lock().unwrap();
        assert_eq!(calls.iter().sum::<usize>(), 6000);
        assert!(calls.iter().all(|&n| n <= 2000 && n % 500 == 0), "{calls:?}");
        assert!(
            calls.iter().any(|&n| n > 500),
            "no two requests shared a call: {calls:?}"
        );
    }

    #[test]
    fn gathering_stops_at_the_wait_from_queueing_or_before_the_earliest_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Far deadline: max_wait from when the first request entered the queue (not from now).
        assert_eq!(gather_until(t0, ms(5), t0 + ms(100), ms(2)), t0 + ms(5));
        // A request queued 4 ms ago has 1 ms of its 5 left: the bound is already near.
        let queued = t0.checked_sub(ms(4)).unwrap_or(t0);
        assert_eq!(gather_until(queued, ms(5), t0 + ms(100), ms(2)), queued + ms(5));
        // Near deadline: stop early enough to score before it (at the last model time).
        assert_eq!(gather_until(t0, ms(5), t0 + ms(4), ms(2)), t0 + ms(2));
        // A deadline the model time already passes: gathering stops at once.
        assert!(gather_until(t0, ms(5), t0 + ms(1), ms(2)) <= t0);
    }

    #[tokio::test]
    async fn batching_off_gives_one_call_per_request() {
        let cfg = BatchConfig {
            enabled: false,
            ..BatchConfig::default()
        };
        let (b, calls) = start(cfg, Duration::from_millis(2));
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    let (s, d) = job(2, 0.0);
                    b.score(s, d, 2, later()).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*calls.lock().unwrap(), vec![2; 5]);
    }

    #[tokio::test]
    async fn expired_requests_are_shed_and_a_full_queue_refuses() {
        let cfg = BatchConfig {
            // What the worker does with requests that queue (none is scored inline).
            inline_when_idle: false,
            queue: 2,
            enabled: false,
            ..BatchConfig::default()
        };
        // A slow model: the first request occupies the worker while others queue.
        let (b, calls) = start(cfg, Duration::from_millis(200));
        let first = {
            let b = b.clone();
            tokio::spawn(async move {
                let (s, d) = job(1, 0.0);
                b.score(s, d, 1, later()).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let soon = Instant::now() + Duration::from_millis(20);
        let expiring = {
            let b = b.clone();
            tokio::spawn(async move {
                let (s, d) = job(1, 0.0);
                b.score(s, d, 1, soon).await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (s, d) = job(1, 0.0);
        let queued = {
            let b = b.clone();
            tokio::spawn(async move { b.score(s, d, 1, later()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (s, d) = job(1, 0.0);
        assert_eq!(b.score(s, d, 1, later()).await, Err(BatchError::Overloaded(2)));
        assert_eq!(expiring.await.unwrap(), Err(BatchError::DeadlineExceeded));
        assert!(first.await.unwrap().is_ok());
        assert!(queued.await.unwrap().is_ok());
        // The expired request never reached the model.
        assert_eq!(calls.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_request_finding_the_model_idle_is_scored_on_its_own_thread() {
        for inline in [true, false] {
            let cfg = BatchConfig {
                inline_when_idle: inline,
                max_batch: 4,
                ..BatchConfig::default()
            };
            let log = Arc::new(PathLog::default());
            let (b, _, threads) = start_observed(cfg, Duration::ZERO, log.clone());
            let (s, d) = job(10, 2.0);
            assert_eq!(b.score(s, d, 10, later()).await.unwrap(), expected(10, 2.0));
            let here = std::thread::current().name().unwrap_or("").to_string();
            // Split into max_batch calls either way, all on one thread.
            let want = if inline { here } else { "rank-sum-1".to_string() };
            assert_eq!(*threads.lock().unwrap(), vec![want; 3], "inline: {inline}");
            // And the metrics hear which path it took (one request, however many calls).
            let by = if inline { ScoredBy::IdlePath } else { ScoredBy::Worker };
            assert_eq!(log.paths(), vec![by], "inline: {inline}");
        }
    }

    #[test]
    fn the_idle_path_is_off_on_a_gpu_and_as_configured_on_the_cpu() {
        let on = BatchConfig::default();
        let off = BatchConfig {
            inline_when_idle: false,
            ..BatchConfig::default()
        };
        assert_eq!(on.for_device(Device::Cpu), on);
        assert_eq!(off.for_device(Device::Cpu), off);
        assert_eq!(on.for_device(Device::Cuda(0)), off);
        assert_eq!(off.for_device(Device::Cuda(1)), off);
    }

    #[tokio::test]
    async fn an_idle_path_request_past_its_deadline_is_shed_without_a_call() {
        let (b, _, threads) = start_with_threads(BatchConfig::default(), Duration::ZERO);
        let (s, d) = job(3, 0.0);
        assert_eq!(
            b.score(s, d, 3, Instant::now()).await,
            Err(BatchError::DeadlineExceeded)
        );
        assert!(threads.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn requests_arriving_while_the_model_is_busy_queue_and_share_the_workers_calls() {
        let cfg = BatchConfig {
            max_wait: Duration::from_millis(50),
            ..BatchConfig::default()
        };
        // A slow model: the first request holds it on its own thread; the others find it busy,
        // queue, and the worker gathers them once it is free.
        let log = Arc::new(PathLog::default());
        let (b, _, threads) = start_observed(cfg, Duration::from_millis(100), log.clone());
        let first = {
            let b = b.clone();
            tokio::spawn(async move {
                let (s, d) = job(3, 0.0);
                b.score(s, d, 3, later()).await.unwrap()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tasks = spawn_requests(&b, 1..8);
        assert_eq!(first.await.unwrap(), expected(3, 0.0));
        assert_own_scores(tasks).await;
        let threads = threads.lock().unwrap();
        assert!(!threads[0].starts_with("rank-"), "{threads:?}");
        assert!(threads.len() <= 3, "the queued requests were not batched: {threads:?}");
        assert!(threads[1..].iter().all(|t| t == "rank-sum-1"), "{threads:?}");
        let mut want = vec![ScoredBy::IdlePath];
        want.extend([ScoredBy::Worker; 7]);
        assert_eq!(log.paths(), want);
    }
}
