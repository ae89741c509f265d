//! `chat-fuzz [TARGET|all] [--execs N | --secs S] [--seed S]`: runs the
//! fuzz targets of `chat_tests::fuzz` and prints one Markdown table row per
//! target (the format of `docs/fuzzing.md`). Exits 1 if anything crashed,
//! after printing each crash's input (hex and text) and message.

use std::time::Duration;

use chat_tests::fuzz::{self, Budget};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut which = "all".to_string();
    let mut budget = Budget::Execs(10_000_000);
    let mut seed = 1u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| usage());
        match a.as_str() {
            "--execs" => budget = Budget::Execs(value()),
            "--secs" => budget = Budget::Time(Duration::from_secs(value())),
            "--seed" => seed = value(),
            "-h" | "--help" => usage(),
            t => which = t.to_string(),
        }
    }
    let targets = fuzz::targets();
    if which != "all" && !targets.iter().any(|t| t.name == which) {
        eprintln!("unknown target {which}; targets: {}", targets.iter().map(|t| t.name).collect::<Vec<_>>().join(", "));
        std::process::exit(2);
    }
    println!("| target | parser | executions | crashes | time (s) | execs/s | seed |");
    println!("|---|---|---|---|---|---|---|");
    let mut crashed = false;
    for t in targets.iter().filter(|t| which == "all" || t.name == which) {
        let r = fuzz::run(t, budget, seed);
        let secs = r.elapsed.as_secs_f64();
        println!(
            "| `{}` | {} | {} | {} | {:.1} | {:.0} | {seed} |",
            r.target,
            t.about,
            r.execs,
            r.crash_count,
            secs,
            r.execs as f64 / secs.max(1e-9)
        );
        for c in &r.crashes {
            crashed = true;
            eprintln!(
                "CRASH in {}: {}\n  input (hex): {}\n  input (text): {:?}",
                r.target,
                c.message,
                hex(&c.input),
                String::from_utf8_lossy(&c.input)
            );
        }
    }
    std::process::exit(i32::from(crashed));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn usage() -> ! {
    eprintln!("usage: chat-fuzz [TARGET|all] [--execs N | --secs S] [--seed S]");
    std::process::exit(2);
}
