//! [`StderrRing`]: a guest's stderr, keeping only its last bytes.
//!
//! The stream never closes and never refuses a write, so a chatty step
//! keeps running and the last thing it printed (the panic message that
//! explains a failure) is what is kept for the error report.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// The last `capacity` bytes written to a stream. Cheap to clone: clones
/// share the buffer.
#[derive(Clone, Debug)]
pub struct StderrRing {
    capacity: usize,
    buffer: Arc<Mutex<VecDeque<u8>>>,
}

impl StderrRing {
    /// A ring that keeps the last `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            buffer: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    /// Appends `bytes`, dropping the oldest bytes beyond the capacity.
    pub fn push(&self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let overflow = (buffer.len() + tail.len()).saturating_sub(self.capacity);
        let drop = overflow.min(buffer.len());
        buffer.drain(..drop);
        buffer.extend(tail);
    }

    /// What is kept, as text (invalid UTF-8 replaced; a character cut at
    /// the start of the ring is dropped).
    pub fn contents(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes: Vec<u8> = buffer.iter().copied().collect();
        // Skip continuation bytes of a character whose start fell off the ring.
        let start = bytes
            .iter()
            .take(3)
            .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
            .count();
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

impl IsTerminal for StderrRing {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrRing {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrRing {
    async fn ready(&mut self) {}
}

impl OutputStream for StderrRing {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always room: old bytes make way for new ones.
        Ok(64 * 1024)
    }
}

impl AsyncWrite for StderrRing {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_and_never_refuses() {
        let mut ring = StderrRing::new(8);
        for chunk in ["hello ", "world, ", "this is long"] {
            OutputStream::write(&mut ring, Bytes::from(chunk)).unwrap();
            assert!(ring.check_write().unwrap() > 0);
        }
        assert_eq!(ring.contents(), " is long");
        ring.push(&[b'x'; 100]);
        assert_eq!(ring.contents(), "xxxxxxxx");
    }

    #[test]
    fn a_character_cut_at_the_start_is_dropped() {
        let ring = StderrRing::new(3);
        ring.push("aé€".as_bytes()); // é is 2 bytes, € is 3
        assert_eq!(ring.contents(), "€");
        ring.push(b"z");
        assert_eq!(
            ring.contents(),
            "z",
            "the cut € is dropped, not shown as garbage"
        );
    }
}
