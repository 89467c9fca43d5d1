//! `anneal machines params ID [set K=V… | unset K… | profiles P…]`.

use anneal_shared::api::{MachineParams, UpdateMachineParams};
use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::Value;

use super::client::ApiClient;

/// A change to a machine's params.
#[derive(Debug, Subcommand)]
pub enum ParamsCmd {
    /// Set values: `name=value`; the value is read as JSON when it parses (`3`, `true`,
    /// `["a","b"]`), else as a string.
    Set {
        #[arg(required = true, value_parser = parse_assignment)]
        values: Vec<(String, Value)>,
    },
    /// Remove the machine's own values (its profiles' or the default apply again).
    Unset {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Replace the machine's profiles, in order (none given: no profiles).
    Profiles { names: Vec<String> },
}

fn parse_assignment(s: &str) -> Result<(String, Value), String> {
    let Some((name, text)) = s.split_once('=') else {
        return Err(format!("{s:?} is not name=value"));
    };
    if name.is_empty() {
        return Err(format!("{s:?} has no name before `=`"));
    }
    let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()));
    Ok((name.to_string(), value))
}

/// Show (no change) or change machine `id`'s params; the server's view afterwards.
pub async fn run(api: &ApiClient, id: &str, change: Option<ParamsCmd>) -> Result<MachineParams> {
    let path = format!("/api/v1/machines/{id}/params");
    let update = match change {
        None => return api.get(&path).await,
        Some(ParamsCmd::Set { values }) => UpdateMachineParams {
            set: values.into_iter().collect(),
            ..Default::default()
        },
        Some(ParamsCmd::Unset { names }) => UpdateMachineParams {
            unset: names,
            ..Default::default()
        },
        Some(ParamsCmd::Profiles { names }) => {
            if names.iter().any(|n| n.is_empty()) {
                bail!("a profile name is empty");
            }
            UpdateMachineParams {
                profiles: Some(names),
                ..Default::default()
            }
        }
    };
    api.patch(&path, &update).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_read_json_or_text() {
        assert_eq!(
            parse_assignment("n=3").unwrap(),
            ("n".into(), Value::from(3))
        );
        assert_eq!(
            parse_assignment("host=web-01").unwrap(),
            ("host".into(), Value::from("web-01"))
        );
        assert_eq!(
            parse_assignment("l=[\"a\"]").unwrap(),
            ("l".into(), serde_json::json!(["a"]))
        );
        assert_eq!(
            parse_assignment("empty=").unwrap(),
            ("empty".into(), Value::from(""))
        );
        assert!(parse_assignment("novalue").is_err());
        assert!(parse_assignment("=x").is_err());
    }
}
