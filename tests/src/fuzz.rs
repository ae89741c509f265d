//! A stable-toolchain fuzzer for the parsers of untrusted input.
//!
//! No nightly, no coverage instrumentation: each execution takes a seed
//! input of the target's corpus and applies 1-8 random mutations (bit
//! flips, interesting bytes, inserted, deleted, duplicated or spliced
//! ranges, dictionary tokens, truncation, blow-ups), or (one time in eight)
//! builds a fresh random input of bytes and dictionary tokens. The target
//! runs under [`std::panic::catch_unwind`]: a panic, or a broken invariant
//! the target asserts, is a crash, kept with its input. The random
//! generator is seeded, so a run is reproducible (`chat-fuzz --seed`).
//!
//! [`targets`] lists every parser of client- or provider-controlled input;
//! `chat-fuzz` (`tests/src/bin/chat-fuzz.rs`) runs them for millions of
//! executions (figures in `docs/fuzzing.md`), the suite's `fuzz::*` tests
//! for a few seconds each.

use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

mod targets;

pub use targets::targets;

/// Inputs longer than this are cut (the parsers' own limits are far lower
/// than what a blow-up would reach, and long inputs only slow a run).
pub const MAX_INPUT: usize = 16 * 1024;

/// One fuzz target.
pub struct Target {
    /// Name on the command line and in reports.
    pub name: &'static str,
    /// What it feeds the input to.
    pub about: &'static str,
    /// Valid (and a few almost valid) inputs to mutate.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens worth inserting (keywords, delimiters).
    pub dict: &'static [&'static [u8]],
    /// Runs one input; panics (or fails an assertion) on a bug.
    pub run: fn(&[u8]),
}

/// A crash: the input and the panic message.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The input that crashed.
    pub input: Vec<u8>,
    /// What the panic said.
    pub message: String,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    /// Target name.
    pub target: &'static str,
    /// Executions made.
    pub execs: u64,
    /// Crashes found (at most the first 10 are kept).
    pub crashes: Vec<Crash>,
    /// Crashes counted (all of them).
    pub crash_count: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// How long a run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// This many executions.
    Execs(u64),
    /// Until this much time has passed.
    Time(Duration),
}

/// xorshift64*: small, fast, seedable.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced, xorshift cannot leave it).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'.', b'0', b'9', b'-', b' ', 0xc3, 0xe2,
];

/// Makes the next input from the corpus.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    if seeds.is_empty() || rng.below(8) == 0 {
        let mut v = Vec::new();
        for _ in 0..rng.below(16) {
            if !dict.is_empty() && rng.below(2) == 0 {
                v.extend_from_slice(dict[rng.below(dict.len())]);
            } else {
                for _ in 0..=rng.below(8) {
                    v.push(rng.next_u64() as u8);
                }
            }
        }
        return v;
    }
    let mut v = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(8) {
        mutate_once(rng, &mut v, seeds, dict);
    }
    v.truncate(MAX_INPUT);
    v
}

fn mutate_once(rng: &mut Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[&[u8]]) {
    let len = v.len();
    let at = rng.below(len + 1);
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            v[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            v[i] = rng.next_u64() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            v[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        3 => {
            let bytes: Vec<u8> = (0..=rng.below(8)).map(|_| rng.next_u64() as u8).collect();
            v.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let end = (at + 1 + rng.below(16)).min(len);
            v.drain(at.min(len - 1)..end);
        }
        5 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(32)).min(len);
            let chunk = v[start..end].to_vec();
            v.splice(at..at, chunk);
        }
        6 if !dict.is_empty() => {
            let token = dict[rng.below(dict.len())];
            v.splice(at..at, token.iter().copied());
        }
        7 => {
            let other = &seeds[rng.below(seeds.len())];
            let from = rng.below(other.len() + 1);
            v.truncate(at);
            v.extend_from_slice(&other[from..]);
        }
        8 => v.truncate(at),
        _ if len > 0 => {
            // A blow-up: one range repeated many times.
            let start = rng.below(len);
            let end = (start + 1 + rng.below(8)).min(len);
            let chunk = v[start..end].to_vec();
            for _ in 0..rng.below(512) {
                v.splice(at..at, chunk.iter().copied());
                if v.len() > MAX_INPUT {
                    break;
                }
            }
        }
        _ => v.push(rng.next_u64() as u8),
    }
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".into())
}

/// Runs `target` within `budget`, from random seed `seed`. Panics are
/// caught (and the panic hook silenced for the run).
pub fn run(target: &Target, budget: Budget, seed: u64) -> Report {
    let seeds = (target.seeds)();
    let mut rng = Rng::new(seed);
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let start = Instant::now();
    let mut report =
        Report { target: target.name, execs: 0, crashes: Vec::new(), crash_count: 0, elapsed: Duration::ZERO };
    // Every seed once as it is, then mutations.
    let mut pending: Vec<Vec<u8>> = seeds.clone();
    loop {
        let done = match budget {
            Budget::Execs(n) => report.execs >= n,
            Budget::Time(d) => report.execs.is_multiple_of(1024) && start.elapsed() >= d,
        };
        if done {
            break;
        }
        let input = pending.pop().unwrap_or_else(|| mutate(&mut rng, &seeds, target.dict));
        report.execs += 1;
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
            report.crash_count += 1;
            if report.crashes.len() < 10 {
                report.crashes.push(Crash { input, message: message(payload.as_ref()) });
            }
        }
    }
    report.elapsed = start.elapsed();
    panic::set_hook(hook);
    report
}
