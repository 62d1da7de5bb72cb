//! The frame codec on the hot path: decoding a `send_message` frame and
//! encoding the `receive_message` every recipient gets.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dyad_protocol::{ClientEvent, MessageId, MessageStatus, MessageView, ServerEvent, UserId};
use dyad_server::codec::encode;

fn codec(c: &mut Criterion) {
    let text = "x".repeat(100);
    let frame = format!(
        r#"{{"event":"send_message","data":{{"recipient_id":"u4242","message":"{text}","client_msg_id":"3f2b9c1e-8d1a-4c6e-9a51-2b7d0e6f4a10"}}}}"#
    );
    let event = ServerEvent::ReceiveMessage(MessageView {
        message_id: MessageId(123_456_789),
        sender_id: UserId(4241),
        recipient_id: UserId(4242),
        message: text,
        timestamp: 1_795_828_803_358,
        seq: 1234,
        status: MessageStatus::Sent,
        edited_at: None,
        deleted: false,
    });
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode send_message", |b| {
        b.iter(|| black_box(ClientEvent::decode(black_box(&frame)).unwrap()))
    });
    group.bench_function("encode receive_message", |b| {
        b.iter(|| black_box(encode(black_box(&event))))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
