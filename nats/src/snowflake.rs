//! Snowflake-style 64-bit message ids: 41 bits of milliseconds since
//! [`EPOCH_UNIX_MS`], 10 bits of machine id, 12 bits of sequence.
//!
//! The generator is pure: the caller passes the wall clock in, so tests can
//! step it backwards. Ids from one generator strictly increase whatever the
//! clock does: a clock that steps back keeps issuing from the last
//! millisecond used (borrowing the next one when its 4096 sequence numbers
//! are spent). A generator that takes over a machine id starts strictly
//! after the previous holder's reserved high-water mark, so two holders of
//! one machine id never issue the same id.

/// Unix time in ms of id time zero (2024-01-01T00:00:00Z).
pub const EPOCH_UNIX_MS: u64 = 1_704_067_200_000;
/// Bits of machine id.
pub const MACHINE_BITS: u32 = 10;
/// Bits of per-millisecond sequence.
pub const SEQ_BITS: u32 = 12;
/// Number of distinct machine ids.
pub const MACHINES: u16 = 1 << MACHINE_BITS;
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

/// The id generator of one machine id.
#[derive(Debug, Clone)]
pub struct Snowflake {
    machine: u64,
    last_ms: u64,
    seq: u64,
}

impl Snowflake {
    /// A generator for `machine` whose first id is later than any id with a
    /// timestamp at or before `floor_unix_ms`.
    pub fn new(machine: u16, floor_unix_ms: u64) -> Snowflake {
        assert!(machine < MACHINES, "machine id out of range");
        Snowflake { machine: u64::from(machine), last_ms: floor_unix_ms.saturating_sub(EPOCH_UNIX_MS), seq: MAX_SEQ }
    }

    /// The next id, given the current wall clock.
    pub fn next(&mut self, now_unix_ms: u64) -> u64 {
        let now = now_unix_ms.saturating_sub(EPOCH_UNIX_MS);
        if now > self.last_ms {
            self.last_ms = now;
            self.seq = 0;
        } else if self.seq < MAX_SEQ {
            self.seq += 1;
        } else {
            self.last_ms += 1;
            self.seq = 0;
        }
        self.compose()
    }

    /// The next id that is also strictly greater than `min` (the last id of
    /// the conversation, possibly issued by a machine whose clock runs ahead).
    pub fn next_after(&mut self, now_unix_ms: u64, min: u64) -> u64 {
        let id = self.next(now_unix_ms);
        if id > min {
            return id;
        }
        self.last_ms = (min >> (MACHINE_BITS + SEQ_BITS)) + 1;
        self.seq = 0;
        self.compose()
    }

    /// Unix ms of the last id issued (or of the floor, before the first).
    pub fn last_unix_ms(&self) -> u64 {
        self.last_ms + EPOCH_UNIX_MS
    }

    fn compose(&self) -> u64 {
        (self.last_ms << (MACHINE_BITS + SEQ_BITS)) | (self.machine << SEQ_BITS) | self.seq
    }
}

/// Unix ms encoded in an id.
pub fn unix_ms(id: u64) -> u64 {
    (id >> (MACHINE_BITS + SEQ_BITS)) + EPOCH_UNIX_MS
}

/// Machine id encoded in an id.
pub fn machine(id: u64) -> u16 {
    ((id >> SEQ_BITS) & u64::from(MACHINES - 1)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = EPOCH_UNIX_MS + 1_000_000;

    #[test]
    fn ids_carry_time_and_machine() {
        let mut g = Snowflake::new(5, 0);
        let id = g.next(T);
        assert_eq!(unix_ms(id), T);
        assert_eq!(machine(id), 5);
    }

    #[test]
    fn clock_stepping_back_never_decreases_or_repeats() {
        let mut g = Snowflake::new(1, 0);
        let mut last = 0;
        for now in [T, T + 5, T - 1000, T - 1000, T + 2, T + 6, T - 50_000] {
            for _ in 0..5000 {
                let id = g.next(now);
                assert!(id > last, "{id} <= {last} at {now}");
                last = id;
            }
        }
    }

    #[test]
    fn successor_starts_after_floor() {
        let mut g = Snowflake::new(3, T + 10);
        assert!(unix_ms(g.next(T)) > T + 10);
    }

    #[test]
    fn next_after_jumps_past_a_faster_clock() {
        let mut fast = Snowflake::new(9, 0);
        let mut slow = Snowflake::new(1, 0);
        let a = fast.next(T + 5000);
        let b = slow.next_after(T, a);
        assert!(b > a);
        assert_eq!(machine(b), 1);
        assert!(slow.next(T) > b);
    }
}
