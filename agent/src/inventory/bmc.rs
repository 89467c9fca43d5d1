//! The BMC's LAN settings from `ipmitool lan print`, for machines whose SMBIOS lists an IPMI
//! device (type 38).

use std::time::Duration;

use anneal_shared::inventory::Bmc;

use super::tools;
use super::CollectError;

/// ipmitool talks to the BMC over KCS, which can be slow while the BMC is busy.
const LIMIT: Duration = Duration::from_secs(20);

/// Adds the BMC's IP and MAC to what SMBIOS said.
pub async fn collect(mut bmc: Bmc) -> Result<Bmc, CollectError> {
    let ipmitool = tools::find("ipmitool").ok_or(CollectError::Tool {
        tool: "ipmitool",
        message: "not found in PATH".into(),
    })?;
    let out = tools::run("ipmitool", &ipmitool, &["lan", "print"], LIMIT).await?;
    if out.code != Some(0) {
        return Err(CollectError::Tool {
            tool: "ipmitool",
            message: format!(
                "lan print exited with {:?}: {}",
                out.code,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let lan = parse_lan_print(&String::from_utf8_lossy(&out.stdout));
    bmc.ip_address = lan.ip_address;
    bmc.mac = lan.mac;
    Ok(bmc)
}

/// The parts of `ipmitool lan print` the inventory keeps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LanPrint {
    /// `IP Address`.
    pub ip_address: Option<String>,
    /// `MAC Address`, lower-case.
    pub mac: Option<String>,
}

/// Parses `Key : value` lines; unset values (`0.0.0.0`, all-zero MAC) are `None`.
pub fn parse_lan_print(text: &str) -> LanPrint {
    let mut lan = LanPrint::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "IP Address" if value != "0.0.0.0" && !value.is_empty() => {
                lan.ip_address = Some(value.to_string());
            }
            "MAC Address" if value != "00:00:00:00:00:00" && !value.is_empty() => {
                lan.mac = Some(value.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    lan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lan_print() {
        let text = "Set in Progress         : Set Complete
Auth Type Support       : NONE MD2 MD5 PASSWORD
Auth Type Enable        : Callback : MD2 MD5 PASSWORD
                        : User     : MD2 MD5 PASSWORD
                        : Operator : MD2 MD5 PASSWORD
IP Address Source       : DHCP Address
IP Address              : 10.20.30.41
Subnet Mask             : 255.255.255.0
MAC Address             : 0C:C4:7A:12:34:56
SNMP Community String   : public
Default Gateway IP      : 10.20.30.1
802.1q VLAN ID          : Disabled
";
        assert_eq!(
            parse_lan_print(text),
            LanPrint {
                ip_address: Some("10.20.30.41".into()),
                mac: Some("0c:c4:7a:12:34:56".into()),
            }
        );
    }

    #[test]
    fn unset_values_are_none() {
        let text = "IP Address Source       : Static Address
IP Address              : 0.0.0.0
MAC Address             : 00:00:00:00:00:00
";
        assert_eq!(parse_lan_print(text), LanPrint::default());
        assert_eq!(parse_lan_print(""), LanPrint::default());
    }
}
