//! Request bodies with an idle timeout: a client that stops sending in the middle of a body
//! must not hold its connection, task and staging file for ever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// What the origin's handlers read: the connection's body, given up after `idle` without bytes.
pub type RequestBody = IdleTimeout<Incoming>;

/// A body that fails with `io::ErrorKind::TimedOut` when no frame comes for `idle` while it is
/// read. Only time spent waiting on the client counts: the clock starts again at each read, so
/// a handler that pauses (to fsync, say) is not charged for it.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` runs for the frame being waited on.
    waiting: bool,
    timed_out: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            timed_out: false,
        }
    }
}

/// Whether a body error is the idle timeout's.
pub fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Some(Err(timed_out(this.idle))));
        }
        if !this.waiting {
            let deadline = Instant::now() + this.idle;
            this.timer.as_mut().reset(deadline);
            this.waiting = true;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(io::Error::other)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.timed_out = true;
                    Poll::Ready(Some(Err(timed_out(this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn timed_out(idle: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no body bytes came for {} s", idle.as_secs_f64()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Frames = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

    /// A body fed through the sender answered: it ends when the sender is dropped.
    fn fed_body(
        idle: Duration,
    ) -> (
        Frames,
        IdleTimeout<impl Body<Data = Bytes, Error = io::Error> + Unpin>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, IdleTimeout::new(StreamBody::new(stream), idle))
    }

    #[tokio::test]
    async fn the_clock_restarts_with_every_frame_and_a_stall_times_out() {
        let idle = Duration::from_secs(2);
        let (tx, mut body) = fed_body(idle);
        // Frames 250 ms apart for 3 s: longer than `idle` in all, never `idle` without one.
        let sender = tokio::spawn(async move {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .is_err()
                {
                    return None;
                }
            }
            Some(tx) // kept open, silent
        });
        for n in 0..12 {
            let frame = body.frame().await.expect("a frame");
            assert!(frame.is_ok(), "frame {n}: {frame:?}");
        }
        let error = body
            .frame()
            .await
            .expect("an error")
            .expect_err("timed out");
        assert!(is_timeout(&error), "{error}");
        // A body that timed out stays failed.
        assert!(body.frame().await.is_some_and(|f| f.is_err()));
        drop(sender.await);
    }

    #[tokio::test]
    async fn time_the_reader_spends_elsewhere_does_not_count() {
        let idle = Duration::from_millis(200);
        let (tx, mut body) = fed_body(idle);
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .expect("send");
        // The reader is busy for longer than `idle` before it asks for the frame.
        tokio::time::sleep(idle * 3).await;
        assert!(body.frame().await.is_some_and(|f| f.is_ok()));
        drop(tx);
        assert!(body.frame().await.is_none(), "the body ends cleanly");
    }
}
