//! Codec cost per message: encode and decode of the hot-path messages.

use criterion::{Criterion, criterion_group, criterion_main};
use milena_protocol::{
    Body, Op, Request, Response, Status, decode_request, decode_response, encode_request,
    encode_response,
};
use std::hint::black_box;

fn bench_codec(c: &mut Criterion) {
    let key = b"user:000012345678";
    let value = [7u8; 100];
    let put = Request {
        id: 42,
        op: Op::Put {
            key,
            value: &value,
            ttl: Some(60),
        },
    };
    let get = Request {
        id: 43,
        op: Op::Get { key },
    };
    let hit = Response {
        id: 43,
        status: Status::Ok,
        body: Body::Value(&value),
    };

    let mut g = c.benchmark_group("codec");
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode_put_100B", |b| {
        b.iter(|| {
            out.clear();
            encode_request(black_box(&put), &mut out);
        })
    });
    g.bench_function("encode_get", |b| {
        b.iter(|| {
            out.clear();
            encode_request(black_box(&get), &mut out);
        })
    });
    g.bench_function("encode_value_response_100B", |b| {
        b.iter(|| {
            out.clear();
            encode_response(black_box(&hit), &mut out);
        })
    });
    let mut put_frame = Vec::new();
    encode_request(&put, &mut put_frame);
    let mut get_frame = Vec::new();
    encode_request(&get, &mut get_frame);
    let mut hit_frame = Vec::new();
    encode_response(&hit, &mut hit_frame);
    g.bench_function("decode_put_100B", |b| {
        b.iter(|| decode_request(black_box(&put_frame[4..])).map(|r| r.id))
    });
    g.bench_function("decode_get", |b| {
        b.iter(|| decode_request(black_box(&get_frame[4..])).map(|r| r.id))
    });
    g.bench_function("decode_value_response_100B", |b| {
        b.iter(|| decode_response(black_box(&hit_frame[4..])).map(|r| r.id))
    });
    g.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
