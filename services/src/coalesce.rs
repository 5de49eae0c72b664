//! A connection's writes held until its runtime thread has nothing else ready to run, then
//! written at once.
//!
//! HTTP/2 (h2, under tonic) writes a gRPC call's frames as separate tasks produce them, and
//! flushes the socket after each poll of the connection: a client wrote a call's headers, then
//! (once the body's task had run) its message; a server wrote the response's headers and
//! message, then (once the stream's send capacity came back) its trailers. Each flush is a
//! `writev` and a packet the peer wakes up to read, though the frames after it were a task
//! away. [`Coalesced`] takes the writes into memory; a flush asks the runtime to be told when
//! the thread has run everything else that is ready (tokio's `yield_now`, which wakes the
//! caller only then) and reports done at once, so the task that was waiting for capacity runs
//! and queues its frames. The next flush after that point writes everything held in one
//! system call. Nothing waits on a clock: a thread with nothing else to do writes at once, and
//! a busy one writes after the work that was already ready (at most tokio's maintenance
//! interval of 61 task polls). BENCHMARKS.md, "Writes held until the thread is idle".

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held: a write that would hold more first writes out what is held, and one this
/// large goes straight to the socket.
pub const HOLD_LIMIT: usize = 64 * 1024;

/// An I/O stream whose writes are held until a flush finds its runtime thread idle.
pub struct Coalesced<T> {
    inner: T,
    held: Vec<u8>,
    /// How much of `held` the socket has taken (a write of it was cut short).
    written: usize,
    /// A flush found bytes held and asked to be told when the thread is idle; once it is
    /// (`idle.reached`), flushes write until nothing is held.
    asked: bool,
    idle: Arc<Idle>,
}

/// Told by the runtime once the thread has run what was ready: marks that and wakes the
/// connection's task, whose next flush writes.
struct Idle {
    reached: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Idle {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.reached.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<T> Coalesced<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: Vec::new(),
            written: 0,
            asked: false,
            idle: Arc::new(Idle {
                reached: AtomicBool::new(false),
                task: Mutex::new(None),
            }),
        }
    }

    /// Bytes taken and not yet written to the socket.
    pub fn held(&self) -> usize {
        self.held.len() - self.written
    }

    fn remember_task(&self, cx: &Context<'_>) {
        let mut task = self.idle.task.lock().unwrap_or_else(|e| e.into_inner());
        match task.as_ref() {
            Some(t) if t.will_wake(cx.waker()) => {}
            _ => *task = Some(cx.waker().clone()),
        }
    }

    /// Asks the runtime to wake [`Idle`] once this thread has run everything else ready.
    fn ask_for_idle(&mut self, cx: &Context<'_>) {
        self.idle.reached.store(false, Ordering::Release);
        self.remember_task(cx);
        let waker = Waker::from(self.idle.clone());
        let mut yielded = Box::pin(tokio::task::yield_now());
        // Pending the first time: tokio keeps the waker until the thread has run what is ready
        // (outside a runtime it is woken at once). The future holds nothing after that.
        let _ = yielded.as_mut().poll(&mut Context::from_waker(&waker));
        self.asked = true;
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.held.clear();
        self.written = 0;
        self.asked = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len: usize = slices.iter().map(|s| s.len()).sum();
        if this.held() + len > HOLD_LIMIT {
            ready!(this.poll_drain(cx))?;
            if len > HOLD_LIMIT {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, slices);
            }
        }
        for slice in slices {
            this.held.extend_from_slice(slice);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.held() == 0 {
            this.asked = false;
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.asked {
            this.ask_for_idle(cx);
            return Poll::Ready(Ok(()));
        }
        if !this.idle.reached.load(Ordering::Acquire) {
            // Called again before the thread was idle (the same poll, or the task woken by
            // something else): keep holding; the idle wake polls it again.
            this.remember_task(cx);
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A socket that records each write it takes: at most `most` bytes a write, and first
    /// `blocks` writes refused as a full socket would (woken at once).
    #[derive(Clone)]
    struct Socket {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        shut: Arc<AtomicBool>,
        most: usize,
        blocks: Arc<AtomicUsize>,
    }

    impl Socket {
        fn new() -> Self {
            Self::limited(usize::MAX, 0)
        }

        fn limited(most: usize, blocks: usize) -> Self {
            Self {
                writes: Arc::default(),
                shut: Arc::default(),
                most,
                blocks: Arc::new(AtomicUsize::new(blocks)),
            }
        }

        fn writes(&self) -> Vec<Vec<u8>> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            if self.shut.load(Ordering::SeqCst) {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if self.blocks.load(Ordering::SeqCst) > 0 {
                self.blocks.fetch_sub(1, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = data.len().min(self.most);
            self.writes.lock().unwrap().push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut.store(true, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    /// Flushes until nothing is held, with no other wake-up than the one [`Coalesced`] asks
    /// the runtime for: a task that is never polled again fails the timeout.
    async fn flush_until_written(io: &mut Coalesced<Socket>) {
        let flushed = std::future::poll_fn(|cx| {
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            if io.held() == 0 {
                Poll::Ready(Ok::<_, io::Error>(()))
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(5), flushed)
            .await
            .expect("the idle wake-up must poll the task again")
            .unwrap();
    }

    /// The client's case: the call's headers are flushed, then the body's task (ready at that
    /// moment) queues the message. Both go out in the connection's next write, one system
    /// call, in order.
    #[tokio::test]
    async fn frames_queued_by_another_ready_task_go_out_in_the_same_write() {
        let socket = Socket::new();
        let connection = tokio::spawn({
            let socket = socket.clone();
            async move {
                let mut io = Coalesced::new(socket.clone());
                io.write_all(b"HEADERS").await.unwrap();
                let (tx, rx) = tokio::sync::oneshot::channel();
                // The body's task: ready now, runs once this one gives the thread back.
                tokio::spawn(async move { tx.send(b"DATA".to_vec()).unwrap() });
                io.flush().await.unwrap();
                assert!(socket.writes().is_empty(), "a flush holds while other tasks are ready");
                assert_eq!(io.held(), 7);
                let message = rx.await.unwrap();
                io.write_all(&message).await.unwrap();
                io.flush().await.unwrap();
                flush_until_written(&mut io).await;
            }
        });
        connection.await.unwrap();
        assert_eq!(socket.writes(), vec![b"HEADERSDATA".to_vec()]);
    }

    /// With nothing else to run, the bytes go out after one turn of the runtime, by the wake-up
    /// the flush asked for; nothing else wakes the task.
    #[tokio::test]
    async fn a_flush_on_an_idle_thread_writes_after_one_turn_of_the_runtime() {
        let socket = Socket::new();
        let mut io = Coalesced::new(socket.clone());
        io.write_all(b"TRAILERS").await.unwrap();
        flush_until_written(&mut io).await;
        assert_eq!(socket.writes(), vec![b"TRAILERS".to_vec()]);
        // Nothing held: a flush writes nothing more.
        io.flush().await.unwrap();
        assert_eq!(socket.writes().len(), 1);
    }

    /// The same on a multi-threaded runtime, with vectored writes (h2's DATA frames).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vectored_writes_are_held_and_written_whole_on_a_multi_threaded_runtime() {
        let socket = Socket::new();
        let mut io = Coalesced::new(socket.clone());
        let slices = [IoSlice::new(b"head"), IoSlice::new(b"payload")];
        assert!(io.is_write_vectored());
        let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write_vectored(cx, &slices))
            .await
            .unwrap();
        assert_eq!(n, 11);
        flush_until_written(&mut io).await;
        assert_eq!(socket.writes(), vec![b"headpayload".to_vec()]);
    }

    /// What would hold more than [`HOLD_LIMIT`] first writes out what is held; a write that
    /// large goes straight to the socket, after it.
    #[tokio::test]
    async fn writes_past_the_limit_go_out_at_once_and_in_order() {
        let socket = Socket::new();
        let mut io = Coalesced::new(socket.clone());
        io.write_all(b"small").await.unwrap();
        let large = vec![7u8; HOLD_LIMIT + 1];
        io.write_all(&large).await.unwrap();
        assert_eq!(socket.writes(), vec![b"small".to_vec(), large.clone()]);
        assert_eq!(io.held(), 0);
        // Two that fit hold; the third, past the limit together, writes the two first.
        let half = vec![1u8; HOLD_LIMIT / 2];
        io.write_all(&half).await.unwrap();
        io.write_all(&half).await.unwrap();
        io.write_all(b"x").await.unwrap();
        assert_eq!(socket.writes().len(), 3);
        assert_eq!(socket.writes()[2], [half.clone(), half].concat());
        assert_eq!(io.held(), 1);
    }

    /// A socket that takes part of a write, or none for a while, still gets every byte, once
    /// and in order.
    #[tokio::test]
    async fn a_socket_that_takes_part_or_blocks_gets_every_byte_in_order() {
        let socket = Socket::limited(3, 2);
        let mut io = Coalesced::new(socket.clone());
        io.write_all(b"0123456789").await.unwrap();
        io.write_all(b"abcdef").await.unwrap();
        flush_until_written(&mut io).await;
        let writes = socket.writes();
        assert!(writes.iter().all(|w| w.len() <= 3));
        assert_eq!(writes.concat(), b"0123456789abcdef".to_vec());
        assert_eq!(
            socket.blocks.load(Ordering::SeqCst),
            0,
            "the blocked writes were retried"
        );
    }

    /// Closing writes out what is held before the socket is shut.
    #[tokio::test]
    async fn shutdown_writes_what_is_held_first() {
        let socket = Socket::new();
        let mut io = Coalesced::new(socket.clone());
        io.write_all(b"GOAWAY").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.held(), 6);
        io.shutdown().await.unwrap();
        assert_eq!(socket.writes(), vec![b"GOAWAY".to_vec()]);
        assert!(socket.shut.load(Ordering::SeqCst));
    }
}
