//! `chat-gateway`: load config, init tracing, bind, run.

use chat_gateway::config::Env;
use chat_gateway::{init_tracing, run, shutdown_signal, GatewayConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cfg = GatewayConfig::from_source(&Env)?;
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind CHAT_HTTP_ADDR={}: {e}", cfg.http_addr))?;
    run(cfg, listener, shutdown_signal()).await.map_err(|e| anyhow::anyhow!("chat-gateway: {e}"))
}
