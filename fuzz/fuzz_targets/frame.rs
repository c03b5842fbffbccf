//! The frame header codec on arbitrary bytes, as the TCP reader and the UDP receiver use it.
//!
//! Input: byte 0 picks the payload limit, byte 1 the size of the reads the stream is fed in,
//! the rest is what arrived. Checked: whole-buffer decoding (`decode_frame` frame after frame),
//! the same bytes fed a read at a time the way `rpc::conn::FrameReader` feeds them (which is
//! crate-private, so its loop is mirrored here), `decode_datagram`, and that every header that
//! parses re-encodes to the bytes it came from; the session and trace blocks are split as the
//! servers split them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multispace_rpc::proto::frame::{
    decode_datagram, decode_frame, Decoded, ErrorCode, FrameError, FrameKind, Header, DEFAULT_MAX_PAYLOAD, HEADER_LEN,
    MAX_DETAIL_LEN,
};
use multispace_rpc::MAX_DATAGRAM;

/// What decoding a whole stream yields: the frames, then how it stopped.
#[derive(Debug, PartialEq)]
enum End {
    NeedMore,
    Error(FrameError),
}

/// Decode frames back to back from `buf` until one is incomplete or invalid.
fn decode_stream(buf: &[u8], max: u32) -> (Vec<(Header, usize)>, End) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match decode_frame(&buf[at..], max) {
            Ok(Decoded::Frame { header, len }) => {
                assert_eq!(len, header.frame_len());
                assert!(len >= HEADER_LEN && len <= buf.len() - at, "frame runs past the buffer");
                assert!(header.payload_len <= max, "payload over the limit accepted");
                use_frame(&header, &buf[at + HEADER_LEN..at + HEADER_LEN + header.payload_len as usize]);
                frames.push((header, len));
                at += len;
            }
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > 0);
                return (frames, End::NeedMore);
            }
            Err(e) => return (frames, End::Error(e)),
        }
    }
}

/// What a receiver reads of a frame beyond its header: the error code, and an error frame's
/// detail (the client reads at most `MAX_DETAIL_LEN` bytes of it, lossily).
fn use_frame(h: &Header, payload: &[u8]) {
    assert_eq!(ErrorCode::from_u16(h.status).to_u16(), h.status);
    // The blocks before the archive, as the servers split them: session first, then trace.
    if let Ok((_, rest)) = multispace_rpc::proto::session::split(h, bytes::Bytes::copy_from_slice(payload)) {
        let _ = multispace_rpc::proto::trace::split(h, rest);
    }
    if h.kind == FrameKind::Error {
        let detail = String::from_utf8_lossy(&payload[..payload.len().min(MAX_DETAIL_LEN)]);
        std::hint::black_box(detail);
    }
}

/// The stream fed `chunk` bytes per read, decoding after each read as `FrameReader::next`
/// does, consuming each complete frame. Must see exactly what whole-buffer decoding saw, and
/// report errors as soon as the header is in, not later.
fn decode_fed(stream: &[u8], max: u32, chunk: usize) -> (Vec<(Header, usize)>, End) {
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match decode_frame(&buf, max) {
            Ok(Decoded::Frame { header, len }) => {
                frames.push((header, len));
                buf.drain(..len);
                continue;
            }
            Ok(Decoded::NeedMore(n)) => {
                // A NeedMore never asks for more than the frame still lacks.
                let want = if buf.len() < HEADER_LEN {
                    HEADER_LEN - buf.len()
                } else {
                    let head = buf.first_chunk::<HEADER_LEN>().expect("header is in");
                    Header::parse(head, max).expect("NeedMore after a complete header means it parsed").frame_len()
                        - buf.len()
                };
                assert_eq!(n, want);
            }
            Err(e) => {
                assert!(buf.len() >= HEADER_LEN, "error reported before the header was complete");
                return (frames, End::Error(e));
            }
        }
        if fed == stream.len() {
            return (frames, End::NeedMore);
        }
        let take = chunk.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, chunk, stream @ ..] = data else { return };
    let max = match limit % 4 {
        0 => DEFAULT_MAX_PAYLOAD,
        1 => MAX_DATAGRAM as u32,
        2 => 0,
        _ => u32::from(*limit),
    };

    // A header that parses is exactly its own encoding: all fields kept, reserved bytes zero.
    if let Some(head) = stream.first_chunk::<HEADER_LEN>() {
        if let Ok(h) = Header::parse(head, max) {
            assert_eq!(&h.encode(), head, "parse then encode changed the header");
        }
    }

    let whole = decode_stream(stream, max);
    let fed = decode_fed(stream, max, usize::from(*chunk) + 1);
    assert_eq!(whole, fed, "feeding the stream in reads changed what was decoded");

    // The UDP receiver's view of the same bytes as one datagram.
    if let Ok(h) = decode_datagram(stream, max) {
        assert!(h.payload_len <= max);
        assert!(HEADER_LEN + h.payload_len as usize <= stream.len() && stream.len() <= h.frame_len());
        use_frame(&h, &stream[HEADER_LEN..HEADER_LEN + h.payload_len as usize]);
    }
});
