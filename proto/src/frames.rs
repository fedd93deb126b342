//! Splitting a byte stream into frame payloads: the one loop around [`frame_payload_len`] that
//! the broker, the client and the tests share.

use std::fmt;

use crate::codec::{frame_payload_len, Error, HEADER_LEN};

/// Splits a byte stream into frame payloads, checking each length prefix against a limit before
/// buffering past it.
///
/// Feed it whatever a read returned with [`push`](Self::push), then take whole payloads with
/// [`next_payload`](Self::next_payload) until it says `Ok(None)`. A length prefix that is 0 or
/// above the limit is an error as soon as its 4 bytes are in, before any of its payload is
/// waited for; the stream cannot be resynchronised after it, so the caller closes the
/// connection. A caller that reads at most [`missing`](Self::missing) bytes at a time (or drains
/// after every push) never holds more than one frame of at most `max_payload` bytes plus one read.
///
/// The buffer is reused from frame to frame: in steady state nothing is allocated per frame.
///
/// ```
/// use portbroker_proto::{
///     decode_request, encode_request, Error, FrameSplitter, LeaseId, Request, MAX_REQUEST_FRAME,
/// };
///
/// let release = encode_request(&Request::Release { id: LeaseId(7) }).unwrap();
/// let mut frames = FrameSplitter::new(MAX_REQUEST_FRAME);
///
/// // A frame may arrive in pieces: nothing comes out until it is whole.
/// frames.push(&release[..3]);
/// assert_eq!(frames.missing().unwrap(), 1);
/// assert_eq!(frames.next_payload().unwrap(), None);
/// frames.push(&release[3..]);
/// let payload = frames.next_payload().unwrap().unwrap();
/// assert_eq!(decode_request(payload).unwrap(), Request::Release { id: LeaseId(7) });
/// assert!(frames.is_empty());
///
/// // A hostile length is refused from its 4 bytes alone.
/// frames.push(&u32::MAX.to_le_bytes());
/// assert!(matches!(frames.next_payload(), Err(Error::FrameTooLarge { .. })));
/// ```
pub struct FrameSplitter {
    /// Received bytes; those before `start` were already handed out and wait to be compacted.
    buf: Vec<u8>,
    /// Where the first frame not yet handed out begins in `buf`.
    start: usize,
    max_payload: u32,
}

impl FrameSplitter {
    /// A splitter that refuses payloads longer than `max_payload` bytes (usually
    /// [`MAX_REQUEST_FRAME`](crate::MAX_REQUEST_FRAME) or
    /// [`MAX_RESPONSE_FRAME`](crate::MAX_RESPONSE_FRAME)). Allocates nothing until bytes arrive.
    pub fn new(max_payload: u32) -> Self {
        FrameSplitter {
            buf: Vec::new(),
            start: 0,
            max_payload,
        }
    }

    /// Appends received bytes.
    ///
    /// The bytes of frames already handed out are dropped here, not in `next_payload` (whose
    /// payload borrows the buffer): all at once when nothing else is held, and otherwise only
    /// when the buffer would have to grow, so bytes are moved at most once per frame handed out.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.buf.capacity() - self.buf.len() < bytes.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Pops the next whole frame's payload.
    ///
    /// `Ok(None)` while the next frame is incomplete. An error when its length prefix is 0
    /// ([`Error::EmptyFrame`]) or above the limit ([`Error::FrameTooLarge`]): the stream cannot
    /// be resynchronised after a bad prefix, so every later call returns the same error and the
    /// caller closes the connection. The payload borrows the splitter until the next call.
    pub fn next_payload(&mut self) -> Result<Option<&[u8]>, Error> {
        let pending = &self.buf[self.start..];
        let Some(len) = frame_payload_len(pending, self.max_payload)? else {
            return Ok(None);
        };
        // Compared as what is left, not as `start + HEADER_LEN + len`, which could overflow a
        // 32-bit usize with a limit near u32::MAX.
        if pending.len() - HEADER_LEN < len {
            return Ok(None);
        }
        let payload_start = self.start + HEADER_LEN;
        self.start = payload_start + len;
        Ok(Some(&self.buf[payload_start..self.start]))
    }

    /// Bytes still needed before [`next_payload`](Self::next_payload) can return a frame: 0 when
    /// one is whole; otherwise at least 1, first the rest of the length prefix, then, once the
    /// prefix is in, the rest of its payload. The same error as `next_payload` on a bad prefix.
    pub fn missing(&self) -> Result<usize, Error> {
        let pending = &self.buf[self.start..];
        match frame_payload_len(pending, self.max_payload)? {
            None => Ok(HEADER_LEN - pending.len()),
            Some(len) => Ok((HEADER_LEN + len).saturating_sub(pending.len())),
        }
    }

    /// Bytes held and not yet popped: a partial frame, or whole frames not yet taken.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether no byte is held.
    pub fn is_empty(&self) -> bool {
        self.buffered() == 0
    }

    /// Frees the buffer when nothing is buffered and its capacity exceeds `keep`: an idle
    /// connection that once received a very large frame need not keep its memory.
    pub fn shrink_when_idle(&mut self, keep: usize) {
        if self.is_empty() && self.buf.capacity() > keep {
            self.buf = Vec::new();
            self.start = 0;
        }
    }
}

/// A summary, not the bytes: a buffer may hold megabytes.
impl fmt::Debug for FrameSplitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSplitter")
            .field("max_payload", &self.max_payload)
            .field("buffered", &self.buffered())
            .field("capacity", &self.buf.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `payload` with its length prefix.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn drain(frames: &mut FrameSplitter) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(payload) = frames.next_payload().unwrap() {
            out.push(payload.to_vec());
        }
        out
    }

    #[test]
    fn a_new_splitter_holds_and_allocates_nothing() {
        let mut frames = FrameSplitter::new(10);
        assert!(frames.is_empty());
        assert_eq!(frames.buffered(), 0);
        assert_eq!(frames.missing().unwrap(), HEADER_LEN);
        assert_eq!(frames.next_payload().unwrap(), None);
        frames.push(&[]);
        assert_eq!(frames.buf.capacity(), 0);
    }

    #[test]
    fn frames_pushed_one_byte_at_a_time_come_out_whole() {
        let payloads: [&[u8]; 3] = [b"a", b"hello", b"0123456789"];
        let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        let mut frames = FrameSplitter::new(10);
        let mut out = Vec::new();
        for byte in &stream {
            assert!(frames.missing().unwrap() >= 1);
            frames.push(std::slice::from_ref(byte));
            out.extend(drain(&mut frames));
        }
        assert_eq!(out, payloads.map(<[u8]>::to_vec));
        assert!(frames.is_empty());
    }

    #[test]
    fn several_frames_in_one_push_come_out_in_order() {
        let mut stream = frame(b"one");
        stream.extend(frame(b"two"));
        stream.extend(frame(b"three"));
        stream.extend(&frame(b"four")[..5]);
        let mut frames = FrameSplitter::new(10);
        frames.push(&stream);
        assert_eq!(frames.buffered(), stream.len());
        assert_eq!(frames.missing().unwrap(), 0);
        assert_eq!(
            drain(&mut frames),
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(frames.buffered(), 5);
        assert_eq!(frames.missing().unwrap(), 3);
        frames.push(b"our");
        assert_eq!(drain(&mut frames), [b"four".to_vec()]);
        assert!(frames.is_empty());
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_payload_arrives() {
        let mut frames = FrameSplitter::new(10);
        frames.push(&frame(b"ok"));
        frames.push(&11u32.to_le_bytes()[..3]);
        assert_eq!(frames.next_payload().unwrap(), Some(&b"ok"[..]));
        // Three bytes of the prefix say nothing yet.
        assert_eq!(frames.next_payload().unwrap(), None);
        assert_eq!(frames.missing().unwrap(), 1);
        frames.push(&[0]);
        assert!(matches!(
            frames.next_payload(),
            Err(Error::FrameTooLarge { len: 11, max: 10 })
        ));
        assert!(matches!(
            frames.missing(),
            Err(Error::FrameTooLarge { len: 11, max: 10 })
        ));
        // No resynchronisation: the same error however many bytes follow.
        frames.push(&[1; 11]);
        assert!(matches!(
            frames.next_payload(),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn a_zero_length_prefix_is_refused() {
        let mut frames = FrameSplitter::new(10);
        frames.push(&[0, 0, 0, 0, 42]);
        assert!(matches!(frames.next_payload(), Err(Error::EmptyFrame)));
        assert!(matches!(frames.missing(), Err(Error::EmptyFrame)));
    }

    #[test]
    fn missing_counts_the_header_then_the_payload() {
        let whole = frame(b"12345");
        let mut frames = FrameSplitter::new(10);
        let expected = [4, 3, 2, 1, 5, 4, 3, 2, 1, 0];
        for (byte, want) in whole.iter().zip(expected.iter().skip(1)) {
            frames.push(std::slice::from_ref(byte));
            assert_eq!(frames.missing().unwrap(), *want);
        }
        assert_eq!(frames.next_payload().unwrap(), Some(&b"12345"[..]));
        assert_eq!(frames.missing().unwrap(), HEADER_LEN);
    }

    #[test]
    fn the_buffer_is_reused_from_frame_to_frame() {
        let mut frames = FrameSplitter::new(100);
        let whole = frame(&[7; 50]);
        frames.push(&whole);
        drain(&mut frames);
        let capacity = frames.buf.capacity();
        for _ in 0..100 {
            frames.push(&whole[..20]);
            frames.push(&whole[20..]);
            assert_eq!(drain(&mut frames), [vec![7; 50]]);
        }
        assert_eq!(frames.buf.capacity(), capacity);
    }

    #[test]
    fn handed_out_bytes_are_compacted_before_the_buffer_grows() {
        let mut frames = FrameSplitter::new(100);
        let whole = frame(&[1; 60]);
        let mut first_push = whole.clone();
        first_push.extend_from_slice(&whole[..10]);
        frames.push(&first_push);
        assert_eq!(drain(&mut frames).len(), 1);
        let capacity = frames.buf.capacity();
        // The rest fits once the first frame's bytes are dropped.
        frames.push(&whole[10..]);
        assert_eq!(frames.start, 0);
        assert_eq!(frames.buf.capacity(), capacity);
        assert_eq!(drain(&mut frames), [vec![1; 60]]);
    }

    #[test]
    fn shrink_frees_only_an_idle_buffer_above_keep() {
        let mut frames = FrameSplitter::new(1000);
        frames.push(&frame(&[3; 500]));
        frames.push(&[1, 0]);
        drain(&mut frames);
        frames.shrink_when_idle(0);
        assert!(frames.buf.capacity() >= 500, "freed a partial frame");
        frames.push(&[0, 0, 9]);
        drain(&mut frames);
        assert!(frames.is_empty());
        frames.shrink_when_idle(usize::MAX);
        assert!(frames.buf.capacity() >= 500, "freed below keep");
        frames.shrink_when_idle(16);
        assert_eq!(frames.buf.capacity(), 0);
        assert_eq!(frames.buffered(), 0);
        frames.push(&frame(b"again"));
        assert_eq!(drain(&mut frames), [b"again".to_vec()]);
    }

    #[test]
    fn debug_shows_a_summary_not_the_bytes() {
        let mut frames = FrameSplitter::new(10);
        frames.push(&[5, 0]);
        let text = format!("{frames:?}");
        assert!(
            text.starts_with("FrameSplitter { max_payload: 10, buffered: 2"),
            "{text}"
        );
    }
}
