//! Frame IO over async streams, and the byte pump between a TCP socket and a tunnel stream.

use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use super::{BiStream, RecvStream, SendStream};
use crate::{codes, frame, DecodeError};

/// Reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended inside a frame.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent a bad frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Write one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize,
{
    let mut buf = BytesMut::new();
    frame::encode(msg, &mut buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    w.write_all(&buf).await
}

/// Read one frame. Reads exactly up to the frame's end and never past it, so whatever follows
/// (raw payload bytes) stays in the stream for the next reader. `Ok(None)` on a clean end of
/// stream before the first byte of a frame.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let mut buf = BytesMut::new();
    loop {
        if let Some(msg) = frame::decode(&mut buf)? {
            return Ok(Some(msg));
        }
        let want = frame::needed(&buf)?;
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = r.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Which way a [`splice`] moved a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the TCP socket into the stream.
    TcpToStream,
    /// From the stream out to the TCP socket.
    StreamToTcp,
}

/// Bytes moved by [`splice`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// From the TCP socket into the stream.
    pub tcp_to_stream: u64,
    /// From the stream out to the TCP socket.
    pub stream_to_tcp: u64,
}

/// Largest chunk read from a socket at once.
const CHUNK: usize = 64 * 1024;

/// Copy both ways between a TCP socket and a tunnel stream until both directions have ended.
///
/// Half-close is kept: a FIN from the socket finishes the stream and the other direction goes
/// on. A reset on either side aborts both (the stream is reset; the socket is closed with RST).
/// Idle connections hold no buffers: a buffer is allocated only when the socket is readable and
/// handed to the stream without copying; the stream side is read as zero-copy chunks.
///
/// With `idle = Some(d)`, a connection on which no byte moved in either direction for `d` is
/// aborted the same way and the result is an [`io::ErrorKind::TimedOut`] error.
///
/// `progress` is told every chunk as it is moved (for live byte counts; `|_, _| {}` if none).
pub async fn splice(
    tcp: TcpStream,
    stream: BiStream,
    idle: Option<Duration>,
    progress: impl Fn(Direction, u64) + Sync,
) -> io::Result<SpliceStats> {
    let _ = tcp.set_nodelay(true);
    let (tcp_r, mut tcp_w) = tcp.into_split();
    let BiStream { mut send, mut recv } = stream;
    let watch = IdleWatch::new(idle);

    let copied = {
        let up = async {
            let r = tcp_to_stream(&tcp_r, &mut send, &watch, &progress).await;
            if r.is_err() {
                send.reset(codes::RESET_ABORTED);
            }
            r
        };
        let down = async {
            let r = stream_to_tcp(&mut recv, &mut tcp_w, &watch, &progress).await;
            if r.is_err() {
                recv.stop(codes::RESET_ABORTED);
                let _ = tcp_w.as_ref().set_zero_linger();
            }
            r
        };
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => r,
            e = watch.expired() => Err(e),
        }
    };
    match copied {
        Ok((up, down)) => Ok(SpliceStats {
            tcp_to_stream: up,
            stream_to_tcp: down,
        }),
        Err(e) => {
            if e.kind() == io::ErrorKind::TimedOut {
                send.reset(codes::RESET_ABORTED);
                recv.stop(codes::RESET_ABORTED);
                let _ = tcp_w.as_ref().set_zero_linger();
            }
            Err(e)
        }
    }
}

/// Copy both ways between any two byte streams until both directions have ended (each EOF is
/// passed on as a write shutdown), like [`tokio::io::copy_bidirectional`], but with
/// `idle = Some(d)` it gives up with [`io::ErrorKind::TimedOut`] once no byte has moved in
/// either direction for `d`. Traffic in one direction keeps both alive. Returns the bytes
/// copied `(a to b, b to a)`.
pub async fn copy_bidirectional_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Option<Duration>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let watch = IdleWatch::new(idle);
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    tokio::select! {
        r = async {
            tokio::try_join!(
                copy_one_way(&mut ar, &mut bw, &watch),
                copy_one_way(&mut br, &mut aw, &watch)
            )
        } => r,
        e = watch.expired() => Err(e),
    }
}

async fn copy_one_way<R, W>(r: &mut R, w: &mut W, watch: &IdleWatch) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(total);
        }
        watch.touch();
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        watch.touch();
        total += n as u64;
    }
}

/// When a byte last moved (milliseconds since `start`); [`IdleWatch::expired`] resolves once
/// none has for the limit.
struct IdleWatch {
    limit: Option<Duration>,
    start: Instant,
    last_ms: AtomicU64,
}

impl IdleWatch {
    fn new(limit: Option<Duration>) -> Self {
        IdleWatch {
            limit,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        if self.limit.is_some() {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Resolves with the error to report once the connection has been idle too long.
    async fn expired(&self) -> io::Error {
        let Some(limit) = self.limit else {
            return std::future::pending().await;
        };
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if deadline <= Instant::now() {
                return io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no traffic for {limit:?}"),
                );
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

async fn tcp_to_stream(
    tcp: &tokio::net::tcp::OwnedReadHalf,
    send: &mut SendStream,
    watch: &IdleWatch,
    progress: &impl Fn(Direction, u64),
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        tcp.readable().await?;
        let mut buf = BytesMut::with_capacity(CHUNK);
        let eof = loop {
            match tcp.try_read_buf(&mut buf) {
                Ok(0) => break true,
                Ok(_) if buf.len() < CHUNK => continue,
                Ok(_) => break false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) => return Err(e),
            }
        };
        if !buf.is_empty() {
            total += buf.len() as u64;
            progress(Direction::TcpToStream, buf.len() as u64);
            watch.touch();
            send.write_chunk(buf.freeze()).await?;
            watch.touch();
        }
        if eof {
            send.shutdown().await?;
            return Ok(total);
        }
    }
}

async fn stream_to_tcp(
    recv: &mut RecvStream,
    tcp: &mut tokio::net::tcp::OwnedWriteHalf,
    watch: &IdleWatch,
    progress: &impl Fn(Direction, u64),
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
        total += chunk.len() as u64;
        progress(Direction::StreamToTcp, chunk.len() as u64);
        watch.touch();
        tcp.write_all(&chunk).await?;
        watch.touch();
    }
    tcp.shutdown().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Control, GoAway};

    #[tokio::test]
    async fn read_frame_stops_at_frame_end() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let msg = Control::GoAway(GoAway {
            reason: "restart".into(),
            reconnect_after_ms: 5,
        });
        let writer = async {
            write_frame(&mut a, &msg).await.unwrap();
            a.write_all(b"payload").await.unwrap();
            drop(a);
        };
        let reader = async {
            let got: Control = read_frame(&mut b).await.unwrap().unwrap();
            let mut rest = Vec::new();
            b.read_to_end(&mut rest).await.unwrap();
            (got, rest)
        };
        let ((), (got, rest)) = tokio::join!(writer, reader);
        assert_eq!(got, msg);
        assert_eq!(rest, b"payload");
    }

    #[tokio::test]
    async fn eof_inside_frame_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[crate::PROTOCOL_VERSION, 0, 0, 0, 9, 1])
            .await
            .unwrap();
        drop(a);
        let r: Result<Option<Control>, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Io(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_copy_lives_while_bytes_move_and_ends_when_silent() {
        let (mut a, mut a_peer) = tokio::io::duplex(1024);
        let (mut b, mut b_peer) = tokio::io::duplex(1024);
        let idle = Duration::from_secs(10);
        let copy =
            tokio::spawn(async move { copy_bidirectional_idle(&mut a, &mut b, Some(idle)).await });
        // One byte every 6 s, one way only, for a minute: never idle for 10 s.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            a_peer.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b_peer.read_exact(&mut one).await.unwrap();
        }
        assert!(!copy.is_finished());
        // Silence: the copy gives up after the idle limit.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let r = copy.await.unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn idle_copy_passes_half_close() {
        let (mut a, mut a_peer) = tokio::io::duplex(1024);
        let (mut b, mut b_peer) = tokio::io::duplex(1024);
        let copy = tokio::spawn(async move { copy_bidirectional_idle(&mut a, &mut b, None).await });
        a_peer.write_all(b"hello").await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        b_peer.write_all(b"back").await.unwrap();
        drop(b_peer);
        let mut back = Vec::new();
        a_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back");
        assert_eq!(copy.await.unwrap().unwrap(), (5, 4));
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let r: Option<Control> = read_frame(&mut b).await.unwrap();
        assert!(r.is_none());
    }
}
