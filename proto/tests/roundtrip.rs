//! Property tests for the codec: every message round-trips, decoding arbitrary bytes never
#![allow(clippy::unwrap_used)]
//! panics, and feeding a valid stream one byte at a time yields the same messages.

use bytes::BytesMut;
use periscope_proto::{
    decode, encode, Assigned, Control, GoAway, Hello, HttpOptions, Reject, RejectReason, Secret,
    StreamError, StreamErrorKind, StreamKind, StreamOpen, StreamReply, TunnelKind, TunnelSpec,
    Welcome,
};
use proptest::prelude::*;
use std::net::SocketAddr;

fn tunnel_kind() -> impl Strategy<Value = TunnelKind> {
    prop_oneof![
        Just(TunnelKind::Http),
        Just(TunnelKind::Tcp),
        Just(TunnelKind::Udp)
    ]
}

fn spec() -> impl Strategy<Value = TunnelSpec> {
    (
        any::<u32>(),
        ".{0,20}",
        tunnel_kind(),
        any::<Option<u16>>(),
        proptest::option::of("[a-z.]{0,30}"),
        any::<bool>(),
        proptest::option::of(http_options()),
    )
        .prop_map(
            |(id, name, kind, remote_port, hostname, tls, http)| TunnelSpec {
                id,
                name,
                kind,
                remote_port,
                hostname,
                tls,
                http,
            },
        )
}

fn http_options() -> impl Strategy<Value = HttpOptions> {
    (
        any::<bool>(),
        proptest::option::of(".{0,30}"),
        any::<bool>(),
        ".{0,30}",
        any::<bool>(),
    )
        .prop_map(
            |(forwarded_headers, host_header, rewrite_redirects, target, target_tls)| HttpOptions {
                forwarded_headers,
                host_header,
                rewrite_redirects,
                target,
                target_tls,
            },
        )
}

fn reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::Version),
        Just(RejectReason::BadToken),
        Just(RejectReason::Expired),
        Just(RejectReason::Revoked),
        Just(RejectReason::HostnameNotAllowed),
        Just(RejectReason::PortNotAllowed),
        Just(RejectReason::InUse),
        Just(RejectReason::BadTunnel),
        Just(RejectReason::ShuttingDown),
    ]
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        (
            any::<u16>(),
            ".{0,10}",
            ".{0,200}",
            prop::collection::vec(spec(), 0..5)
        )
            .prop_map(
                |(version, agent_version, token, tunnels)| Control::Hello(Hello {
                    version,
                    agent_version,
                    token: Secret::new(token),
                    tunnels,
                })
            ),
        (
            any::<u64>(),
            ".{0,10}",
            prop::collection::vec((any::<u32>(), ".{0,40}"), 0..5)
        )
            .prop_map(|(session, agent, t)| Control::Welcome(Welcome {
                session,
                agent,
                tunnels: t
                    .into_iter()
                    .map(|(id, public)| Assigned { id, public })
                    .collect(),
            })),
        (reason(), ".{0,50}")
            .prop_map(|(reason, detail)| Control::Reject(Reject { reason, detail })),
        any::<u64>().prop_map(Control::Ping),
        any::<u64>().prop_map(Control::Pong),
        (".{0,50}", any::<u32>()).prop_map(|(reason, reconnect_after_ms)| Control::GoAway(
            GoAway {
                reason,
                reconnect_after_ms
            }
        )),
        prop::collection::vec(spec(), 0..5).prop_map(Control::TunnelUpdate),
    ]
}

/// Socket addresses as they go on the wire (serde drops IPv6 flow info and scope id).
fn addr() -> impl Strategy<Value = SocketAddr> {
    any::<SocketAddr>().prop_map(|a| SocketAddr::new(a.ip(), a.port()))
}

fn stream_open() -> impl Strategy<Value = StreamOpen> {
    (
        any::<u32>(),
        addr(),
        addr(),
        prop_oneof![
            Just(StreamKind::Tcp),
            Just(StreamKind::Http),
            (0u64..=periscope_proto::datagram::MAX_FLOW_ID)
                .prop_map(|flow| StreamKind::Udp { flow })
        ],
    )
        .prop_map(|(tunnel, visitor, server, kind)| StreamOpen {
            tunnel,
            visitor,
            server,
            kind,
        })
}

fn stream_reply() -> impl Strategy<Value = StreamReply> {
    prop_oneof![
        Just(StreamReply::Connected),
        (
            prop_oneof![
                Just(StreamErrorKind::UnknownTunnel),
                Just(StreamErrorKind::Refused),
                Just(StreamErrorKind::Timeout),
                Just(StreamErrorKind::Unreachable)
            ],
            ".{0,30}"
        )
            .prop_map(|(kind, detail)| StreamReply::Failed(StreamError { kind, detail })),
    ]
}

fn roundtrip<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut buf = BytesMut::new();
    encode(msg, &mut buf).unwrap();
    let out = decode::<T>(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    out
}

proptest! {
    #[test]
    fn control_roundtrip(msg in control()) {
        prop_assert_eq!(roundtrip(&msg), msg);
    }

    #[test]
    fn stream_open_roundtrip(msg in stream_open()) {
        prop_assert_eq!(roundtrip(&msg), msg);
    }

    #[test]
    fn stream_reply_roundtrip(msg in stream_reply()) {
        prop_assert_eq!(roundtrip(&msg), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = BytesMut::from(&bytes[..]);
        let _ = decode::<Control>(&mut b);
        let mut b = BytesMut::from(&bytes[..]);
        let _ = decode::<StreamOpen>(&mut b);
        let mut b = BytesMut::from(&bytes[..]);
        let _ = decode::<StreamReply>(&mut b);
    }

    #[test]
    fn arbitrary_body_with_valid_header_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[periscope_proto::PROTOCOL_VERSION]);
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(&body);
        let _ = decode::<Control>(&mut b.clone());
        let _ = decode::<StreamOpen>(&mut b);
    }

    #[test]
    fn byte_at_a_time(msgs in prop::collection::vec(control(), 1..4)) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            encode(m, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(m) = decode::<Control>(&mut buf).unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
    }
}

/// Golden bytes: the wire format must not change by accident.
#[test]
fn golden_ping() {
    let mut buf = BytesMut::new();
    encode(&Control::Ping(300), &mut buf).unwrap();
    assert_eq!(&buf[..], &[1, 0, 0, 0, 3, 3, 0xac, 0x02]);
}

#[test]
fn hello_debug_masks_token() {
    let h = Hello {
        version: 1,
        agent_version: "x".into(),
        token: Secret::new("eyJsecret"),
        tunnels: vec![],
    };
    assert!(!format!("{h:?}").contains("eyJsecret"));
}
