//! The dynamic pool that port 0 draws from: one bit per port and transport, set while a lease
//! binds that port, and a cursor per transport so that a released port is not handed out again
//! at once.

use portbroker_proto::{PortRange, Transport};

#[derive(Debug)]
struct PoolMap {
    used: Vec<u64>,
    /// Where the next search starts.
    cursor: usize,
}

#[derive(Debug)]
pub struct Pool {
    range: PortRange,
    maps: [PoolMap; 2],
    /// Ports marked used, per transport.
    in_use: [usize; 2],
}

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Tcp => 0,
        Transport::Udp => 1,
    }
}

impl Pool {
    pub fn new(range: PortRange) -> Pool {
        let words = range.len().div_ceil(64);
        let map = || PoolMap {
            used: vec![0; words],
            cursor: 0,
        };
        Pool {
            range,
            maps: [map(), map()],
            in_use: [0; 2],
        }
    }

    pub fn range(&self) -> PortRange {
        self.range
    }

    /// How many ports of `transport` are marked used.
    pub fn in_use(&self, transport: Transport) -> usize {
        self.in_use[transport_index(transport)]
    }

    /// The next port, from the transport's cursor on and wrapping around, that is not marked
    /// used and that `skip` does not exclude; `None` when every port is taken or skipped.
    /// `tries` bounds how many candidates are offered to `skip`.
    pub fn find_free(
        &self,
        transport: Transport,
        tries: usize,
        mut skip: impl FnMut(u16) -> bool,
    ) -> Option<u16> {
        let map = &self.maps[transport_index(transport)];
        let len = self.range.len();
        let mut offered = 0;
        let mut index = map.cursor;
        let mut scanned = 0;
        while scanned < len && offered < tries {
            let word = map.used[index / 64] | ((1u64 << (index % 64)) - 1);
            if word == u64::MAX {
                // Nothing free in the rest of this word: jump to the next one.
                let next = (index / 64 + 1) * 64;
                scanned += next - index;
                index = if next >= len { 0 } else { next };
                continue;
            }
            let free = (index / 64) * 64 + (!word).trailing_zeros() as usize;
            if free >= len {
                scanned += len - index;
                index = 0;
                continue;
            }
            scanned += free - index + 1;
            offered += 1;
            let port = self.range.lo + free as u16;
            if !skip(port) {
                return Some(port);
            }
            index = if free + 1 >= len { 0 } else { free + 1 };
        }
        None
    }

    /// Marks a port used (and moves the cursor past it) or free; ports outside the pool are
    /// ignored.
    pub fn mark(&mut self, transport: Transport, port: u16, used: bool) {
        if !self.range.contains(port) {
            return;
        }
        let index = usize::from(port - self.range.lo);
        let map = &mut self.maps[transport_index(transport)];
        let word = &mut map.used[index / 64];
        let was_used = *word & (1 << (index % 64)) != 0;
        let in_use = &mut self.in_use[transport_index(transport)];
        match (was_used, used) {
            (false, true) => *in_use += 1,
            (true, false) => *in_use -= 1,
            _ => {}
        }
        if used {
            *word |= 1 << (index % 64);
            map.cursor = (index + 1) % self.range.len();
        } else {
            *word &= !(1 << (index % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_skips_used_ports_wraps_and_reports_exhaustion() {
        let range = PortRange {
            lo: 61000,
            hi: 61199,
        };
        let mut pool = Pool::new(range);
        for expected in range.lo..=range.hi {
            let port = pool.find_free(Transport::Tcp, 8, |_| false).unwrap();
            assert_eq!(port, expected);
            pool.mark(Transport::Tcp, port, true);
        }
        assert_eq!(pool.find_free(Transport::Tcp, 8, |_| false), None);
        // UDP has its own map.
        assert_eq!(pool.find_free(Transport::Udp, 8, |_| false), Some(61000));
        // A released port is found again after wrapping around.
        pool.mark(Transport::Tcp, 61070, false);
        assert_eq!(pool.find_free(Transport::Tcp, 8, |_| false), Some(61070));
        // `skip` vetoes candidates, and `tries` bounds the vetoes.
        pool.mark(Transport::Tcp, 61003, false);
        assert_eq!(
            pool.find_free(Transport::Tcp, 8, |p| p == 61003),
            Some(61070)
        );
        assert_eq!(pool.find_free(Transport::Tcp, 1, |p| p == 61003), None);
        assert_eq!(pool.in_use(Transport::Tcp), 198);
        // Marking twice counts once.
        pool.mark(Transport::Tcp, 61070, true);
        pool.mark(Transport::Tcp, 61070, true);
        assert_eq!(pool.in_use(Transport::Tcp), 199);
        assert_eq!(pool.in_use(Transport::Udp), 0);
        // Ports outside the pool are ignored.
        pool.mark(Transport::Tcp, 80, true);
        assert_eq!(pool.in_use(Transport::Tcp), 199);
    }
}
