//! Opening a data stream to an agent: `StreamOpen` on a new stream, then the agent's reply,
//! all within `limits.connect_timeout`. Shared by the HTTPS edge and the tcp/udp tunnels.

use proto::{
    transport::{read_frame, write_frame, BiStream, Connection},
    StreamError, StreamOpen, StreamReply,
};

use crate::Shared;

/// Why no stream came up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The agent's connection failed under us.
    #[error("the agent is unreachable ({0})")]
    Unreachable(String),
    /// The agent answered that its target failed.
    #[error("{0}")]
    Failed(StreamError),
    /// The agent closed the stream without an answer.
    #[error("the agent closed the stream")]
    Closed,
    /// No answer within `limits.connect_timeout`.
    #[error("the agent did not answer in time")]
    TimedOut,
}

/// Open a stream on `conn` announcing `open`; the stream is ready for the visitor's bytes.
pub(crate) async fn open_stream(
    shared: &Shared,
    conn: &Connection,
    open: StreamOpen,
) -> Result<BiStream, OpenError> {
    let limit = shared.config.limits.connect_timeout;
    let opened = tokio::time::timeout(limit, async {
        let unreachable = |e: &dyn std::fmt::Display| OpenError::Unreachable(e.to_string());
        let mut stream = conn.open_bi().await.map_err(|e| unreachable(&e))?;
        shared.metrics.agent_streams_opened.inc();
        write_frame(&mut stream.send, &open)
            .await
            .map_err(|e| unreachable(&e))?;
        match read_frame::<_, StreamReply>(&mut stream.recv).await {
            Ok(Some(StreamReply::Connected)) => Ok(stream),
            Ok(Some(StreamReply::Failed(e))) => Err(OpenError::Failed(e)),
            Ok(None) | Err(_) => Err(OpenError::Closed),
        }
    })
    .await;
    opened.unwrap_or(Err(OpenError::TimedOut))
}
