//! Frame IO over async streams, and the byte pump between a TCP socket and a tunnel stream.

use std::io;

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
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
pub async fn splice(tcp: TcpStream, stream: BiStream) -> io::Result<SpliceStats> {
    let _ = tcp.set_nodelay(true);
    let (tcp_r, mut tcp_w) = tcp.into_split();
    let BiStream { mut send, mut recv } = stream;

    let up = async {
        let r = tcp_to_stream(&tcp_r, &mut send).await;
        if r.is_err() {
            send.reset(codes::RESET_ABORTED);
        }
        r
    };
    let down = async {
        let r = stream_to_tcp(&mut recv, &mut tcp_w).await;
        if r.is_err() {
            recv.stop(codes::RESET_ABORTED);
            let _ = tcp_w.as_ref().set_zero_linger();
        }
        r
    };
    let (up, down) = tokio::try_join!(up, down)?;
    Ok(SpliceStats {
        tcp_to_stream: up,
        stream_to_tcp: down,
    })
}

async fn tcp_to_stream(
    tcp: &tokio::net::tcp::OwnedReadHalf,
    send: &mut SendStream,
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
            send.write_chunk(buf.freeze()).await?;
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
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
        total += chunk.len() as u64;
        tcp.write_all(&chunk).await?;
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

    #[tokio::test]
    async fn clean_eof_is_none() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let r: Option<Control> = read_frame(&mut b).await.unwrap();
        assert!(r.is_none());
    }
}
