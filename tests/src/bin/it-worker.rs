//! The worker as a separate process for tests that SIGKILL it (the same
//! code as `chat-worker`).

fn main() -> anyhow::Result<()> {
    chat_workers::init_tracing();
    let cfg = chat_workers::WorkerConfig::from_source(&chat_nats::config::Env)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(chat_workers::run(cfg, chat_workers::shutdown_signal())).map_err(|e| anyhow::anyhow!("{e}"))
}
