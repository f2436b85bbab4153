//! Graceful shutdown: a relay stopping lets in-flight connections finish within the grace.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

#[tokio::test]
async fn in_flight_connection_finishes_during_relay_shutdown() {
    // Answers 400 ms after the request: the relay is told to stop in between.
    let target = tcp_server(|mut s| async move {
        let mut req = [0u8; 5];
        s.read_exact(&mut req).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"late answer").await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let t = tcp_tunnel(target).await;
    let mut visitor = visit(t.port).await;
    visitor.write_all(b"hello").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(t.relay.stop());
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), visitor.read_to_end(&mut got))
        .await
        .expect("answer within the grace period")
        .unwrap();
    assert_eq!(got, b"late answer");
    stopping.await.unwrap();
    // No new visitors once the relay is gone.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", t.port))
        .await
        .is_err());
    t.agent.stop().await;
}
