//! `chat-bench-words [--entries 10000] [--iters N]`: the CPU cost the
//! banned-word list adds to one send, measured on the gateway's own code
//! (`chat_gateway::moderation`): compiling the list, and screening bodies
//! of several sizes (skeleton + Aho-Corasick), clean and with a match
//! (masking). No stack: this is the part of a send that grows with the
//! list. Prints a table and writes `target/bench/words.json`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chat_gateway::moderation::skeleton::Skeleton;
use chat_gateway::moderation::words::Matcher;

/// A small deterministic generator (xorshift), so every run lists the same words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` entries: three in five Latin (5-10 letters), the rest Hangul (2-3
/// syllables), as a mixed Korean/English deployment would list.
fn entries(n: usize) -> Vec<String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            if i % 5 < 3 {
                let len = 5 + rng.below(6) as usize;
                (0..len).map(|_| char::from(b'a' + rng.below(26) as u8)).collect()
            } else {
                let len = 2 + rng.below(2) as usize;
                (0..len).map(|_| char::from_u32(0xAC00 + rng.below(11_172) as u32).unwrap_or('가')).collect()
            }
        })
        .collect()
}

/// A chat-like body of about `chars` characters, mixing Korean and English.
fn body(chars: usize) -> String {
    const PARTS: [&str; 6] = [
        "안녕하세요 오늘 회의는 세 시에 시작합니다. ",
        "see you at the station, ",
        "점심 뭐 먹을까? ",
        "ok 👍 ",
        "The build passed on main. ",
        "내일 봐요! ",
    ];
    let mut s = String::new();
    let mut i = 0;
    while s.chars().count() < chars {
        s.push_str(PARTS[i % PARTS.len()]);
        i += 1;
    }
    s.chars().take(chars).collect()
}

/// Mean time per call of `f` over `iters` calls (after a tenth as warm-up).
fn time(iters: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..iters {
        f();
    }
    started.elapsed() / iters
}

fn arg(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).ok_or_else(|| anyhow!("{name} needs a number")),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n = arg(&args, "--entries", 10_000)?;
    let iters = arg(&args, "--iters", 2000)? as u32;
    let words = entries(n);

    let started = Instant::now();
    let skeletons: Vec<String> = words.iter().map(|w| Skeleton::of(w).text).collect();
    let matcher = Matcher::new(skeletons.iter().map(String::as_str));
    let compile = started.elapsed();
    let empty = Matcher::new([]);

    println!("banned words: {n} entries, compiled in {:.1} ms", compile.as_secs_f64() * 1e3);
    println!("{:>8} {:>14} {:>14} {:>14} {:>10}", "chars", "no list µs", "10k clean µs", "10k masked µs", "MB/s");
    let mut rows = Vec::new();
    for chars in [20usize, 200, 2000, 100_000] {
        let clean = body(chars);
        // The same body with an entry written apart in the middle.
        let mid = clean.chars().count() / 2;
        let evasion: String = words[0].chars().map(|c| format!("{c} ")).collect();
        let dirty: String = clean.chars().take(mid).chain(evasion.chars()).chain(clean.chars().skip(mid)).collect();
        let iters = if chars >= 100_000 { (iters / 50).max(20) } else { iters };
        let screen = |m: &Matcher, text: &str| m.matches(&Skeleton::of(text).text);
        assert!(!screen(&matcher, &clean), "the clean body matches an entry; pick another seed");
        assert!(screen(&matcher, &dirty));
        let none = time(iters, || {
            black_box(screen(&empty, black_box(&clean)));
        });
        let with_list = time(iters, || {
            black_box(screen(&matcher, black_box(&clean)));
        });
        let masked = time(iters, || {
            black_box(matcher.mask(black_box(&dirty)));
        });
        let mbps = clean.len() as f64 / with_list.as_secs_f64() / 1e6;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!("{chars:>8} {:>14.2} {:>14.2} {:>14.2} {mbps:>10.1}", us(none), us(with_list), us(masked));
        rows.push(serde_json::json!({
            "chars": chars, "bytes": clean.len(), "iters": iters,
            "no_list_us": us(none), "clean_us": us(with_list), "masked_us": us(masked), "clean_mb_per_s": mbps,
        }));
    }
    let report = serde_json::json!({
        "scenario": "words", "entries": n, "compile_ms": compile.as_secs_f64() * 1e3, "rows": rows,
    });
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/words.json", serde_json::to_string_pretty(&report)?)?;
    Ok(())
}
