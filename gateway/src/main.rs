//! `chat-gateway`: load config, init tracing, bind, run.

use chat_gateway::config::Env;
use chat_gateway::{init_tracing, run, shutdown_signal, GatewayConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cfg = GatewayConfig::from_source(&Env)?;
    let listeners = chat_gateway::Listeners::bind(&cfg).await.map_err(|e| {
        anyhow::anyhow!("cannot bind CHAT_HTTP_ADDR={} / CHAT_QUIC_ADDR={:?}: {e}", cfg.http_addr, cfg.quic_addr)
    })?;
    run(cfg, listeners, shutdown_signal()).await.map_err(|e| anyhow::anyhow!("chat-gateway: {e}"))
}
