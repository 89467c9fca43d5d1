//! SMART health per disk from `smartctl --json -a` (smartmontools ≥ 7).

use std::collections::HashMap;
use std::time::Duration;

use anneal_shared::inventory::SmartHealth;
use futures::StreamExt;
use serde_json::Value;

use super::tools;
use super::CollectError;

/// One smartctl run may spin up a sleeping disk; give it time, but not forever.
const PER_DISK_LIMIT: Duration = Duration::from_secs(20);
/// Disks queried at once: enough to keep a 24-bay box quick, few enough not to flood a HBA.
const PARALLEL: usize = 4;

/// Runs smartctl on every disk (by kernel name) and returns what it said, by disk name.
pub async fn collect(disks: Vec<String>) -> Result<HashMap<String, SmartHealth>, CollectError> {
    let smartctl = tools::find("smartctl").ok_or(CollectError::Tool {
        tool: "smartctl",
        message: "not found in PATH (smartmontools missing from the image?)".into(),
    })?;
    let results = futures::stream::iter(disks)
        .map(|name| {
            let smartctl = smartctl.clone();
            async move {
                let dev = format!("/dev/{name}");
                let health = match tools::run(
                    "smartctl",
                    &smartctl,
                    &["--json", "-a", &dev],
                    PER_DISK_LIMIT,
                )
                .await
                {
                    Ok(out) => parse_smartctl(&out.stdout, out.code),
                    Err(e) => SmartHealth {
                        message: Some(e.to_string()),
                        ..Default::default()
                    },
                };
                (name, health)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect::<HashMap<_, _>>()
        .await;
    Ok(results)
}

/// Reads smartctl's JSON. Its exit code is a bit mask (bit 0: bad command line, bit 1: device
/// open failed, bit 2: a SMART command failed, bits 3–7: health findings), so a non-zero exit
/// still comes with JSON worth reading.
pub fn parse_smartctl(stdout: &[u8], code: Option<i32>) -> SmartHealth {
    let Ok(json) = serde_json::from_slice::<Value>(stdout) else {
        return SmartHealth {
            message: Some(match code {
                Some(c) => format!("smartctl exited with status {c} without JSON output"),
                None => "smartctl was killed before it printed JSON".into(),
            }),
            ..Default::default()
        };
    };
    let passed = json
        .pointer("/smart_status/passed")
        .and_then(Value::as_bool);
    let power_on_hours = json.pointer("/power_on_time/hours").and_then(Value::as_u64);
    let temperature_c = json.pointer("/temperature/current").and_then(Value::as_i64);
    let problems: Vec<&str> = json
        .pointer("/smartctl/messages")
        .and_then(Value::as_array)
        .map(|msgs| {
            msgs.iter()
                .filter(|m| m.get("severity").and_then(Value::as_str) != Some("information"))
                .filter_map(|m| m.get("string").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let status = json
        .pointer("/smartctl/exit_status")
        .and_then(Value::as_i64)
        .or(code.map(i64::from))
        .unwrap_or(0);
    let message = if !problems.is_empty() {
        Some(problems.join("; "))
    } else if passed.is_none() && power_on_hours.is_none() && temperature_c.is_none() {
        Some(if status & 0b110 != 0 {
            format!("smartctl could not read SMART data (exit status {status})")
        } else {
            "the device reports no SMART data".to_string()
        })
    } else {
        None
    };
    SmartHealth {
        passed,
        power_on_hours,
        temperature_c,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_ata_disk() {
        let json = br#"{
          "json_format_version": [1, 0],
          "smartctl": {"version": [7, 3], "exit_status": 0},
          "device": {"name": "/dev/sda", "type": "sat", "protocol": "ATA"},
          "smart_status": {"passed": true},
          "power_on_time": {"hours": 43512},
          "temperature": {"current": 31}
        }"#;
        let h = parse_smartctl(json, Some(0));
        assert_eq!(h.passed, Some(true));
        assert_eq!(h.power_on_hours, Some(43512));
        assert_eq!(h.temperature_c, Some(31));
        assert_eq!(h.message, None);
    }

    #[test]
    fn failing_disk_with_nonzero_exit_still_parses() {
        // Exit 0x08 | 0x20: "DISK FAILING" and past-threshold attributes.
        let json = br#"{
          "smartctl": {"version": [7, 3], "exit_status": 40},
          "smart_status": {"passed": false},
          "power_on_time": {"hours": 70001},
          "temperature": {"current": 52}
        }"#;
        let h = parse_smartctl(json, Some(40));
        assert_eq!(h.passed, Some(false));
        assert_eq!(h.power_on_hours, Some(70001));
        assert_eq!(h.temperature_c, Some(52));
    }

    #[test]
    fn device_without_smart_gets_a_message() {
        let json = br#"{
          "smartctl": {
            "version": [7, 3],
            "messages": [{"string": "/dev/vda: Unable to detect device type", "severity": "error"}],
            "exit_status": 1
          }
        }"#;
        let h = parse_smartctl(json, Some(1));
        assert_eq!(h.passed, None);
        assert_eq!(
            h.message.as_deref(),
            Some("/dev/vda: Unable to detect device type")
        );

        let quiet = parse_smartctl(br#"{"smartctl": {"exit_status": 4}}"#, Some(4));
        assert!(quiet.message.unwrap().contains("exit status 4"));
    }

    #[test]
    fn no_json_at_all() {
        let h = parse_smartctl(b"smartctl: unrecognized option", Some(1));
        assert!(h.message.unwrap().contains("status 1"));
    }
}
