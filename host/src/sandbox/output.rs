//! Captured stdout/stderr: bounded buffers that keep the first `cap` bytes a guest writes and
//! count the rest. A flood is truncated and flagged, never an error: a job that prints too much
//! is not killed for it (a failed write would make Rust's `print!` panic).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::job::Captured;

/// How much a guest may write per `check-write` permit. Large enough that a flood costs few host
/// calls; the cap itself is enforced on the bytes kept, not on the permit.
const WRITE_PERMIT: usize = 64 * 1024;

#[derive(Debug, Default)]
struct State {
    kept: Vec<u8>,
    total: u64,
}

/// One captured stream. Clones share the buffer.
#[derive(Clone, Debug)]
pub(crate) struct CapturedPipe {
    cap: usize,
    state: Arc<Mutex<State>>,
}

impl CapturedPipe {
    pub(crate) fn new(cap: usize) -> Self {
        CapturedPipe {
            cap,
            state: Arc::default(),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap();
        state.total += bytes.len() as u64;
        let room = self.cap.saturating_sub(state.kept.len());
        let take = room.min(bytes.len());
        state.kept.extend_from_slice(&bytes[..take]);
    }

    /// What was kept, and whether anything was dropped.
    pub(crate) fn finish(&self) -> Captured {
        let state = self.state.lock().unwrap();
        Captured {
            text: String::from_utf8_lossy(&state.kept).into_owned(),
            total_bytes: state.total,
            truncated: state.total > state.kept.len() as u64,
        }
    }
}

impl OutputStream for CapturedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CapturedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_cap_and_counts_the_rest() {
        let pipe = CapturedPipe::new(5);
        pipe.append(b"abc");
        pipe.append(b"defgh");
        let c = pipe.finish();
        assert_eq!(c.text, "abcde");
        assert_eq!(c.total_bytes, 8);
        assert!(c.truncated);
    }

    #[test]
    fn under_cap_is_not_truncated() {
        let pipe = CapturedPipe::new(5);
        pipe.append(b"abcde");
        let c = pipe.finish();
        assert_eq!(
            (c.text.as_str(), c.total_bytes, c.truncated),
            ("abcde", 5, false)
        );
    }
}
