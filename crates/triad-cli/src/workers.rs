//! Running the processor and executors, alone (`triad process`, `triad execute`) or all in
//! one process (`triad dev`, `triad demo`).

use std::sync::Arc;

use anyhow::Result;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::Config;
use triad_models::Catalogue;

pub fn catalogue(config: &Config) -> Result<Catalogue> {
    Ok(Catalogue::from_config(&config.models, |v| {
        std::env::var(v).ok()
    })?)
}

pub fn processor_options(
    config: &Config,
    catalogue: &Catalogue,
    instance: u32,
) -> triad_processor::Options {
    triad_processor::Options {
        kafka: config.kafka.clone(),
        policy: triad_processor::policy_from(&config.policy, &catalogue.ids()),
        timing: config.processor.clone(),
        instance,
    }
}

pub fn executor_options(config: &Config, zone: &str, instance: u32) -> triad_executor::Options {
    triad_executor::Options {
        kafka: config.kafka.clone(),
        zone: zone.to_owned(),
        instance,
        config: config.executor.clone(),
    }
}

/// Starts the processor and one executor per zone of the policy as tasks of this process.
pub fn spawn_all(
    config: &Config,
    codec: Arc<Codec>,
    cancel: &CancellationToken,
) -> Result<JoinSet<Result<()>>> {
    let catalogue = catalogue(config)?;
    let mut set = JoinSet::new();
    let options = processor_options(config, &catalogue, 0);
    let (c, t) = (codec.clone(), cancel.clone());
    set.spawn(async move { Ok(triad_processor::run(&options, c, t).await?) });
    for zone in &config.policy.zones {
        let options = executor_options(config, zone, 0);
        let zones = config.policy.zones.clone();
        let (c, t, cat) = (codec.clone(), cancel.clone(), catalogue.clone());
        set.spawn(async move { Ok(triad_executor::run(&options, c, cat, &zones, t).await?) });
    }
    Ok(set)
}

/// Waits for every worker; the first error is returned after all stopped.
pub async fn join(mut set: JoinSet<Result<()>>) -> Result<()> {
    let mut first = None;
    while let Some(joined) = set.join_next().await {
        let result = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result
            && first.is_none()
        {
            first = Some(e);
        }
    }
    first.map_or(Ok(()), Err)
}
