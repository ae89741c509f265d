//! `chat-worker`: ID generation, sequencing and fan-out.

use chat_nats::config::Env;
use chat_workers::{init_tracing, run, shutdown_signal, WorkerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cfg = WorkerConfig::from_source(&Env)?;
    run(cfg, shutdown_signal()).await.map_err(|e| anyhow::anyhow!("chat-worker: {e}"))
}
