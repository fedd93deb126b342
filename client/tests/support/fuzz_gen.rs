//! Inputs for fuzzing a live daemon: a small xorshift generator with a fixed seed, so that a run
//! is the same on every machine and a failure names the input that caused it, and the kinds of
//! input it makes, from plain noise to real requests with bytes flipped.

use std::net::{IpAddr, Ipv4Addr};

use portbroker_proto::{
    encode_request, LeaseId, Listen, Request, SocketSpec, MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};

use super::raw::{frame, hello_frame};

/// xorshift64*: small, fast, and the same sequence on every machine.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True `num` times in `den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A length, mostly small, now and then up to 20 KiB (more than one read of the daemon).
    fn length(&mut self) -> usize {
        match self.below(20) {
            0 => self.below(20 * 1024) + 1,
            1..=4 => self.below(2048) + 1,
            _ => self.below(96) + 1,
        }
    }
}

/// What an input is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Bytes, nothing more.
    RandomBytes,
    /// A valid length prefix around random bytes, sometimes cut short.
    FramedNoise,
    /// A valid Hello, then frames of a random variant byte and a random tail.
    HelloThenNoise,
    /// Real requests encoded by the protocol crate, then bytes flipped, cut, repeated.
    MutatedRequests,
}

/// Every kind, to pick from and to count by.
pub const KINDS: [Kind; 4] = [
    Kind::RandomBytes,
    Kind::FramedNoise,
    Kind::HelloThenNoise,
    Kind::MutatedRequests,
];

/// One input of `kind`.
pub fn generate(rng: &mut Rng, kind: Kind) -> Vec<u8> {
    match kind {
        Kind::RandomBytes => {
            let len = rng.length() - 1; // the empty input too
            rng.bytes(len)
        }
        Kind::FramedNoise => {
            let len = rng.length();
            let mut payload = rng.bytes(len);
            if rng.chance(1, 2) {
                payload[0] = rng.below(10) as u8; // a known variant, or just past the last one
            }
            let mut out = frame(&payload);
            if rng.chance(1, 5) {
                let cut = rng.below(out.len());
                out.truncate(cut); // the daemon waits for the rest
            }
            out
        }
        Kind::HelloThenNoise => {
            let mut out = hello_frame(PROTOCOL_VERSION);
            for _ in 0..rng.below(8) + 1 {
                let mut payload = vec![rng.below(10) as u8];
                let tail = rng.below(24);
                payload.extend(rng.bytes(tail));
                let len = match rng.below(25) {
                    0 => 0,
                    1 => MAX_REQUEST_FRAME as usize + 1 + rng.below(1 << 20),
                    2 => payload.len() + 1 + rng.below(8), // swallows what follows
                    3 => rng.below(payload.len()) + 1,     // leaves a tail as the next header
                    _ => payload.len(),
                };
                out.extend_from_slice(&(len as u32).to_le_bytes());
                out.extend(payload);
            }
            out
        }
        Kind::MutatedRequests => {
            let mut out = Vec::new();
            if rng.chance(9, 10) {
                out.extend(hello_frame(PROTOCOL_VERSION));
            }
            for _ in 0..rng.below(6) + 1 {
                out.extend(encode_request(&valid_request(rng)).unwrap());
            }
            let mutations = if rng.chance(1, 8) {
                0
            } else {
                rng.below(4) + 1
            };
            for _ in 0..mutations {
                mutate(rng, &mut out);
            }
            out
        }
    }
}

/// A request a real client could send: loopback or wildcard, pool ports.
fn valid_request(rng: &mut Rng) -> Request {
    match rng.below(7) {
        0 | 1 => {
            let sockets = (0..rng.below(3) + 1)
                .map(|_| {
                    let addr = rng.chance(2, 3).then_some(IpAddr::V4(Ipv4Addr::LOCALHOST));
                    if rng.chance(1, 3) {
                        SocketSpec::udp(addr, 0)
                    } else {
                        let listen = match rng.below(4) {
                            0 => Listen::BindOnly,
                            1 => Listen::Backlog(rng.below(256) as u32),
                            _ => Listen::Default,
                        };
                        SocketSpec {
                            listen,
                            ..SocketSpec::tcp(addr, 0)
                        }
                    }
                })
                .collect();
            Request::Lease { sockets }
        }
        2 => Request::Release {
            id: LeaseId(rng.below(300) as u64),
        },
        3 => Request::List,
        4 => Request::Status,
        5 => Request::LeaseNamed {
            name: ["web", "dns", "", "x"][rng.below(4)].into(),
        },
        _ => Request::Reload,
    }
}

/// Flips, overwrites, cuts, repeats or drops a few bytes.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    let at = rng.below(bytes.len());
    match rng.below(5) {
        0 => bytes[at] ^= 1 << rng.below(8),
        1 => bytes[at] = rng.next() as u8,
        2 => bytes.truncate(at),
        3 => {
            // Repeat a slice in place: a frame twice, or half a frame.
            let len = rng.below((bytes.len() - at).min(64)) + 1;
            let copy = bytes[at..at + len].to_vec();
            let to = rng.below(bytes.len() + 1);
            bytes.splice(to..to, copy);
        }
        _ => {
            let len = rng.below((bytes.len() - at).min(8)) + 1;
            bytes.drain(at..at + len);
        }
    }
}
