//! The fuzz targets: one per parser of untrusted input, each with seeds,
//! a dictionary and, where cheap, an invariant beyond "does not panic".

use chat_gateway::auth::{self, Claims};
use chat_gateway::conn::quic;
use chat_gateway::http::{body, push};
use chat_nats::subjects::{self, ConvId};

use super::Target;

/// Every target, in the order `chat-fuzz all` runs them.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "client_frame",
            about: "chat_nats::wire::parse_client_frame (WebSocket and QUIC text frames)",
            seeds: client_frame_seeds,
            dict: JSON_DICT,
            run: client_frame,
        },
        Target {
            name: "quic_framing",
            about: "gateway conn::quic::decode_frames (4-byte length prefix, UTF-8 body)",
            seeds: quic_seeds,
            dict: &[b"\0\0\0\x02{}", b"\0\0\0\0", b"\xff\xff\xff\xff", b"\0\0\x04\0", b"\xc3\x28"],
            run: quic_framing,
        },
        Target {
            name: "http_json",
            about: "gateway http::body::parse_json (every JSON request body)",
            seeds: http_json_seeds,
            dict: JSON_DICT,
            run: http_json,
        },
        Target {
            name: "token",
            about: "gateway auth::verify (access tokens: HMAC, base64url, claims)",
            seeds: token_seeds,
            dict: &[b".", b"-", b"_", b"=", b"A", b"0", b"sys", b"svc-"],
            run: token,
        },
        Target {
            name: "cursor",
            about: "subjects::parse_seq as sync cursors and before/after ids",
            seeds: || {
                ["0", "1", "42", "18446744073709551615", "18446744073709551616", "01", ""].map(Into::into).to_vec()
            },
            dict: &[b"0", b"9", b"+", b"-", b" ", b"e"],
            run: cursor,
        },
        Target {
            name: "ids",
            about: "subjects::parse_id, ConvId::parse, parse_revoked_key, inbox_user",
            seeds: || {
                ["334", "dm-1-2", "g-5", "dm-7-42", "9223372036854775807", "7.phone", "chat.inbox.42", "g-0"]
                    .map(Into::into)
                    .to_vec()
            },
            dict: &[b"dm-", b"g-", b"-", b".", b"0", b"9", b"chat.inbox.", b">", b"*"],
            run: ids,
        },
        Target {
            name: "push_subscription",
            about:
                "Web Push subscription JSON: gateway push::Subscription::validate, worker webpush::parse_subscription",
            seeds: push_seeds,
            dict: JSON_DICT,
            run: push_subscription,
        },
    ]
}

const JSON_DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"0",
    b"-1",
    b"1e999",
    b"\\u0000",
    b"\\ud800",
    b"\"type\"",
    b"\"send\"",
    b"\"sync\"",
    b"\"cid\"",
    b"\"to\"",
    b"\"user\"",
    b"\"group\"",
    b"\"body\"",
    b"\"cursor\"",
    b"\"typing\"",
    b"\"conv\"",
    b"\"presence.subscribe\"",
    b"\"users\"",
    b"\"endpoint\"",
    b"\"keys\"",
    b"\"p256dh\"",
    b"\"auth\"",
    b"\"https://\"",
    b"\"provider\"",
    b"\"webpush\"",
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn lines(seeds: &[&str]) -> Vec<Vec<u8>> {
    seeds.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn client_frame_seeds() -> Vec<Vec<u8>> {
    lines(&[
        r#"{"type":"send","cid":"c1","to":{"user":"2"},"body":"hi"}"#,
        r#"{"type":"send","cid":"c2","to":{"group":"5"},"body":"héllo 🎉"}"#,
        r#"{"type":"sync","cursor":"42"}"#,
        r#"{"type":"sync"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"typing","conv":"dm-1-2"}"#,
        r#"{"type":"presence.subscribe","users":["1","2"]}"#,
        r#"{"type":"presence.unsubscribe","users":["3"]}"#,
        r#"{"type":"nope"}"#,
        r#"[1,2,3]"#,
    ])
}

fn client_frame(data: &[u8]) {
    let _ = chat_nats::wire::parse_client_frame(&text(data));
}

fn quic_seeds() -> Vec<Vec<u8>> {
    let frame = |s: &str| {
        let mut v = (s.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    };
    let mut two = frame(r#"{"type":"auth","token":"x.y"}"#);
    two.extend(frame(r#"{"type":"ping"}"#));
    vec![frame(r#"{"type":"ping"}"#), two, frame(""), vec![0, 0, 0, 9, b'{'], vec![0xff; 4]]
}

fn quic_framing(data: &[u8]) {
    const MAX: usize = 1024;
    let d = quic::decode_frames(data, MAX);
    // What was decoded accounts for the input: frames and what is left.
    let used: usize = d.frames.iter().map(|f| 4 + f.len()).sum();
    assert!(d.frames.iter().all(|f| f.len() <= MAX), "a frame over the limit was accepted");
    if d.fatal.is_none() {
        assert_eq!(used + d.pending, data.len(), "decoded bytes do not add up");
    }
}

fn http_json_seeds() -> Vec<Vec<u8>> {
    lines(&[
        r#"{"username":"alice","password":"password123","device_id":"phone"}"#,
        r#"{"name":"team","members":["2","3"]}"#,
        r#"{"user":"2"}"#,
        r#"{"role":"admin"}"#,
        r#"{"a":{"b":[1,2.5,-3e10,null,true,"x\u0000y"]}}"#,
        r#"{"deep":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}"#,
        r#""not an object""#,
    ])
}

fn http_json(data: &[u8]) {
    let v = body::parse_json::<serde_json::Value>(data);
    if let Ok(v) = v {
        assert!(v.is_object(), "a non-object body was accepted");
        assert!(!has_nul(&v), "a body with NUL was accepted");
    }
}

fn has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, x)| k.contains('\0') || has_nul(x)),
        _ => false,
    }
}

const TOKEN_SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123456789";

fn valid_token() -> String {
    auth::issue(TOKEN_SECRET, &Claims { user: 42, device: "phone".into(), exp: 4_000_000_000, gen: 1 })
}

fn token_seeds() -> Vec<Vec<u8>> {
    let other = auth::issue(b"another-secret", &Claims { user: 7, device: "tab".into(), exp: 4_000_000_000, gen: 0 });
    vec![valid_token().into_bytes(), other.into_bytes(), b"x.y".to_vec(), b".".to_vec()]
}

fn token(data: &[u8]) {
    let t = text(data);
    if let Some(c) = auth::verify(&[TOKEN_SECRET.to_vec()], &t, 1_000) {
        // Only the one token signed with this secret verifies, unaltered.
        assert_eq!(t, valid_token(), "an altered token verified: {c:?}");
    }
}

fn cursor(data: &[u8]) {
    let t = text(data);
    if let Some(v) = subjects::parse_seq(&t) {
        assert_eq!(v.to_string(), t, "a cursor has two spellings");
    }
}

fn ids(data: &[u8]) {
    let t = text(data);
    if let Some(v) = subjects::parse_id(&t) {
        assert!(v > 0 && v.to_string() == t, "id {t:?} is not canonical");
    }
    if let Some(c) = ConvId::parse(&t) {
        assert_eq!(c.as_str(), t, "a conversation id has two spellings");
        assert!(subjects::is_token(c.as_str()) || c.as_str().len() > 64, "conversation id unsafe in a subject");
        let _ = c.kind();
    }
    if let Some((user, device)) = subjects::parse_revoked_key(&t) {
        assert_eq!(subjects::revoked_key(user, device), t);
    }
    if let Some(user) = subjects::inbox_user(&t) {
        let _ = subjects::inbox(user);
    }
}

fn push_seeds() -> Vec<Vec<u8>> {
    let p256 = format!("B{}", "A".repeat(86));
    lines(&[
        &format!(
            r#"{{"endpoint":"https://push.example/x","keys":{{"p256dh":"{p256}","auth":"AAAAAAAAAAAAAAAAAAAAAA"}}}}"#
        ),
        r#"{"endpoint":"http://127.0.0.1:9/p","keys":{"p256dh":"AAAA","auth":"AAAA"}}"#,
        r#"{"endpoint":"ftp://x","keys":{"p256dh":"x","auth":"y"}}"#,
        r#"{"endpoint":"https://[::1]:443/p?q=1#f","keys":{"p256dh":"","auth":""}}"#,
    ])
}

fn push_subscription(data: &[u8]) {
    if let Ok(sub) = body::parse_json::<push::Subscription>(data) {
        for allow_http in [false, true] {
            if sub.validate(allow_http).is_ok() {
                // Schemes are case-insensitive (RFC 3986 3.1): `httpS://` is https.
                let https = sub.endpoint.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"));
                assert!(https || allow_http, "non-https endpoint accepted");
            }
        }
    }
    if let Ok((ua_public, _, uri)) = chat_workers::push::webpush::parse_subscription(&text(data)) {
        let _ = (ua_public.len(), uri.host());
    }
}
