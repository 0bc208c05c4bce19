//! `triad credits issue|show|supply|transfer` and `triad audit ledger`: the TRIAD credits
//! ledger (docs/credits.md) from the command line, read from `triad.credits` itself.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::{CreditKind, CreditsCommand, CreditsEvent, CreditsEventBody};
use triad_kafka::topics::Names;

/// Parses a credit amount: whole credits with up to six decimals (`12.5`), or µcredits with
/// the `u` suffix (`12500000u`).
pub fn parse_micros(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?}: expected credits (e.g. 12.5) or µcredits (e.g. 12500000u)");
    if let Some(micros) = text.strip_suffix('u') {
        return micros.parse::<i64>().map_err(|_| bad());
    }
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)
}

/// µcredits as credits, e.g. `12.500000`.
pub fn credits(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Issues credits to `account` and, unless `no_wait`, waits for the ledger's event.
pub async fn issue(
    config: &Config,
    codec: &Codec,
    account: &str,
    amount_micros: i64,
    kind: CreditKind,
    reason: &str,
    no_wait: bool,
) -> Result<()> {
    if !triad_workflow::valid_account(account) {
        bail!("account: {account:?} must be 1-128 characters of A-Z a-z 0-9 . _ - : @");
    }
    if amount_micros <= 0 {
        bail!("amount: must be positive");
    }
    if reason.trim().is_empty() {
        bail!("--reason: say what the credits are for (capacity served, data, validation, grant)");
    }
    let names = Names::new(&config.kafka);
    let command = CreditsCommand {
        command_id: triad_domain::new_command_id(),
        account: account.to_owned(),
        issued_at: triad_kafka::now_micros(),
        actor: Some(whoami()),
        body: triad_domain::CreditsCommandBody::IssueCredits(triad_domain::IssueCredits {
            amount_micros,
            kind,
            reason: reason.to_owned(),
        }),
        schema_version: triad_domain::CREDITS_SCHEMA_VERSION,
    };
    let producer = triad_kafka::produce::Producer::new(&config.kafka)?;
    producer
        .send_record(codec, &names.credits_inbox, None, account, &command)
        .await?;
    eprintln!(
        "issue of {} credits to {account} sent ({})",
        credits(amount_micros),
        command.command_id
    );
    if no_wait {
        return Ok(());
    }
    let event = wait_for_event(config, codec, account, &command.command_id).await?;
    println!(
        "{account}: issued {} credits (event #{}); balance {} credits",
        credits(amount_micros),
        event.sequence,
        credits(event.totals.balance_micros)
    );
    Ok(())
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
}

/// Follows the account's ledger partition until the event caused by `command_id`.
async fn wait_for_event(
    config: &Config,
    codec: &Codec,
    account: &str,
    command_id: &str,
) -> Result<CreditsEvent> {
    let names = Names::new(&config.kafka);
    let partition =
        triad_kafka::produce::partition_for(account.as_bytes(), config.kafka.partitions);
    let consumer: StreamConsumer = triad_kafka::client::follower_config(&config.kafka).create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&names.credits, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await else {
            bail!(
                "no ledger event for command {command_id} within 60 s: is `triad ledger` (or \
                 `triad dev`) running?"
            );
        };
        let Some(m) = next else {
            bail!("the ledger stream ended");
        };
        let m = m?;
        let event: CreditsEvent = codec.decode(m.payload()).await?;
        if event.causation.command_id == command_id {
            return Ok(event);
        }
    }
}

/// Prints an account's totals and entries.
pub async fn show(config: &Config, codec: &Codec, account: &str, json: bool) -> Result<()> {
    let partition =
        triad_kafka::produce::partition_for(account.as_bytes(), config.kafka.partitions);
    let view = triad_processor::ledger::read_ledger(&config.kafka, codec, Some(partition)).await?;
    let Some(state) = view.accounts.get(account) else {
        bail!("account {account} has no ledger entries");
    };
    let entries = view.entries.get(account).cloned().unwrap_or_default();
    if json {
        let out = serde_json::json!({
            "account": account,
            "totals": state.totals,
            "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let t = state.totals;
    println!(
        "{account}: balance {} · reserved {} · burned {} · issued {} credits",
        credits(t.balance_micros),
        credits(t.reserved_micros),
        credits(t.burned_micros),
        credits(t.issued_micros)
    );
    for e in &entries {
        println!("  #{:<4} {}", e.sequence, describe(&e.body));
    }
    for p in view.problems.iter().filter(|p| p.contains(account)) {
        println!("  problem: {p}");
    }
    Ok(())
}

fn entry_json(e: &CreditsEvent) -> serde_json::Value {
    serde_json::json!({
        "sequence": e.sequence,
        "event_id": e.event_id,
        "type": e.body.type_name(),
        "occurred_at": e.occurred_at,
        "body": e.body,
        "totals": e.totals,
        "previous_sha256": e.previous_sha256,
    })
}

/// One line for a ledger event.
pub fn describe(body: &CreditsEventBody) -> String {
    match body {
        CreditsEventBody::CreditsIssued(e) => format!(
            "CreditsIssued        +{} ({}: {})",
            credits(e.amount_micros),
            e.kind.as_str(),
            e.reason
        ),
        CreditsEventBody::CreditsReserved(e) => format!(
            "CreditsReserved       {} for {}",
            credits(e.amount_micros),
            e.workflow_id
        ),
        CreditsEventBody::ReservationRefused(e) => format!(
            "ReservationRefused    {} for {}: {}",
            credits(e.amount_micros),
            e.workflow_id,
            e.reason
        ),
        CreditsEventBody::CreditsBurned(e) => format!(
            "CreditsBurned        -{} by {}",
            credits(e.amount_micros),
            e.workflow_id
        ),
        CreditsEventBody::ReservationReleased(e) => format!(
            "ReservationReleased   {} back from {}",
            credits(e.amount_micros),
            e.workflow_id
        ),
    }
}

/// Prints the total supply.
pub async fn supply(config: &Config, codec: &Codec, json: bool) -> Result<()> {
    let view = triad_processor::ledger::read_ledger(&config.kafka, codec, None).await?;
    let s = view.supply();
    if json {
        let out = serde_json::json!({
            "accounts": s.accounts,
            "issued_micros": s.issued_micros,
            "balance_micros": s.balance_micros,
            "reserved_micros": s.reserved_micros,
            "burned_micros": s.burned_micros,
            "circulating_micros": s.circulating_micros(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} accounts: issued {} · burned {} (left the supply) · circulating {} (balance {} + reserved {}) credits",
        s.accounts,
        credits(s.issued_micros),
        credits(s.burned_micros),
        credits(s.circulating_micros()),
        credits(s.balance_micros),
        credits(s.reserved_micros)
    );
    Ok(())
}

/// `triad audit ledger`: every event of every account checked against the ones before it.
pub async fn audit(config: &Config, codec: &Codec) -> Result<()> {
    let topic = Names::new(&config.kafka).credits;
    eprintln!("reading {topic}, every partition from offset 0…");
    let view = triad_processor::ledger::read_ledger(&config.kafka, codec, None).await?;
    for (account, state) in &view.accounts {
        let t = state.totals;
        println!(
            "{account}: {} events, chain head {}, issued {} = balance {} + reserved {} + burned {}",
            state.sequence,
            if state.last_sha256.is_empty() {
                "-"
            } else {
                &state.last_sha256
            },
            t.issued_micros,
            t.balance_micros,
            t.reserved_micros,
            t.burned_micros
        );
    }
    let s = view.supply();
    println!(
        "supply: issued {} µcredits, burned {}, circulating {} ({} records)",
        s.issued_micros,
        s.burned_micros,
        s.circulating_micros(),
        view.records
    );
    // The notary's signed checkpoints, when there is a key directory to check them against.
    let checkpoint_problems = if config.sovereignty.operator_public_key.is_some() {
        let stream = triad_kernel::notary::Stream::credits(&config.kafka);
        crate::audit::stream_checkpoints(config, codec, &stream).await?
    } else {
        println!(
            "checkpoints not checked: sovereignty.operator_public_key is not set (no key \
             directory to verify the notary's signatures against)"
        );
        0
    };
    if !view.problems.is_empty() || checkpoint_problems > 0 {
        for p in &view.problems {
            println!("PROBLEM {p}");
        }
        bail!(
            "the ledger does not check out: {} problem(s) in its events, {checkpoint_problems} \
             in its checkpoints",
            view.problems.len()
        );
    }
    println!("ledger verified: every event follows from the ones before it");
    Ok(())
}

/// The answer to `triad credits transfer`: there is no such operation.
pub fn transfer() -> Result<()> {
    Err(anyhow::anyhow!(triad_market::ledger::NON_TRANSFERABLE))
        .context("non_transferable: credits cannot move between accounts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_as_credits_or_micros_and_print_back() {
        assert_eq!(parse_micros("12.5"), Ok(12_500_000));
        assert_eq!(parse_micros("3"), Ok(3_000_000));
        assert_eq!(parse_micros("250u"), Ok(250));
        assert!(parse_micros("1.1234567").is_err());
        assert!(parse_micros("ten").is_err());
        assert_eq!(credits(12_500_000), "12.500000");
        assert_eq!(credits(-1), "-0.000001");
    }
}
