//! The gateway as a separate process for tests that SIGKILL it (the same
//! code as `chat-gateway`).

fn main() -> anyhow::Result<()> {
    chat_gateway::init_tracing();
    let cfg = chat_gateway::GatewayConfig::from_source(&chat_nats::config::Env)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listeners = chat_gateway::Listeners::bind(&cfg).await?;
        chat_gateway::run(cfg, listeners, chat_gateway::shutdown_signal()).await.map_err(|e| anyhow::anyhow!("{e}"))
    })
}
