//! Values that must never identify a machine: firmware defaults left in place by vendors and
//! values a whole fleet shares. docs/identity.md lists them; a test below keeps the two in step.

use super::normalize::{mac_octets, uuid_byte_swapped};

/// UUIDs that boards ship with unprogrammed (canonical form). Their byte-swapped forms are
/// placeholders too, as are UUIDs whose 16 bytes take at most two distinct values (all-zero,
/// all-FF, 0101…, FEFE…, 00…01).
pub const PLACEHOLDER_UUIDS: &[&str] = &[
    // AMI / Supermicro / many whitebox boards.
    "03000200-0400-0500-0006-000700080009",
    // Raw bytes 00 01 … 0f, as Linux prints them for SMBIOS >= 2.6.
    "03020100-0504-0706-0809-0a0b0c0d0e0f",
    // Raw bytes 01 02 … 10.
    "04030201-0605-0807-090a-0b0c0d0e0f10",
    "10000000-0000-8000-0040-000000000000",
];

/// Serial numbers that firmware ships as defaults. Compared on letters and digits only,
/// case-insensitively, so "To be filled by OEM" and "TO BE FILLED BY O.E.M." are the same.
/// Besides these: fewer than 3 letters/digits, one character repeated ("XXXXXXXX", "00000000",
/// "0") and digits counting up ("0123456789", "12345678", "1234567890") never identify.
pub const PLACEHOLDER_SERIALS: &[&str] = &[
    "To Be Filled By O.E.M.",
    "Default string",
    "0123456789",
    "123456789",
    "System Serial Number",
    "Chassis Serial Number",
    "Base Board Serial Number",
    "Serial Number",
    "Not Specified",
    "Not Applicable",
    "Not Available",
    "None",
    "N/A",
    "NA",
    "Default",
    "Unknown",
    "Null",
    "XXXXXXXX",
    "00000000",
    "0",
    "Type1Sku0",
    "O.E.M.",
    "OEM",
];

/// Whether a UUID (any text form) must never identify a machine. Text that is not a UUID counts
/// as a placeholder.
pub fn is_placeholder_uuid(uuid: &str) -> bool {
    let Some(canon) = super::normalize_uuid_text(uuid) else {
        return true;
    };
    let Some(swapped) = uuid_byte_swapped(&canon) else {
        return true;
    };
    if PLACEHOLDER_UUIDS
        .iter()
        .any(|p| *p == canon || *p == swapped)
    {
        return true;
    }
    // Hand-typed fillers: one or two byte values repeated.
    let hex = canon.replace('-', "");
    let mut seen: Vec<&str> = Vec::new();
    for b in (0..16).filter_map(|i| hex.get(2 * i..2 * i + 2)) {
        if !seen.contains(&b) {
            seen.push(b);
        }
    }
    seen.len() <= 2
}

/// Whether a serial number (raw or canonical) must never identify a machine.
pub fn is_placeholder_serial(serial: &str) -> bool {
    let key = serial_key(serial);
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 3 {
        return true;
    }
    if chars.windows(2).all(|w| w[0] == w[1]) {
        return true;
    }
    if counts_up(&chars) {
        return true;
    }
    PLACEHOLDER_SERIALS.iter().any(|p| serial_key(p) == key)
}

/// Whether a MAC (any accepted spelling) can identify a machine: not malformed, all-zero,
/// multicast or broadcast (bit 0x01 of the first octet), nor locally administered (bit 0x02:
/// software-assigned, e.g. VMs, bonds, BMC host interfaces). The USB-bus rule needs the NIC, so
/// it lives in `Evidence::from_hints`.
pub fn is_identifying_mac(mac: &str) -> bool {
    let Some(o) = mac_octets(mac) else {
        return false;
    };
    o != [0u8; 6] && o[0] & 0x01 == 0 && o[0] & 0x02 == 0
}

/// Letters and digits only, upper-cased: the form placeholders are compared in.
fn serial_key(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect()
}

/// "0123…", "1234…", "…7890": each digit one more than the last (9 wraps to 0).
fn counts_up(chars: &[char]) -> bool {
    let digits: Option<Vec<u32>> = chars.iter().map(|c| c.to_digit(10)).collect();
    match digits {
        Some(d) => d.windows(2).all(|w| (w[0] + 1) % 10 == w[1]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_placeholder_serial_is_rejected_in_any_case_and_padding() {
        for p in PLACEHOLDER_SERIALS {
            for variant in [
                p.to_string(),
                p.to_uppercase(),
                p.to_lowercase(),
                format!("  {p}\t"),
            ] {
                assert!(is_placeholder_serial(&variant), "{variant:?}");
                assert_eq!(
                    super::super::normalize_serial(&variant),
                    None,
                    "{variant:?}"
                );
            }
        }
    }

    #[test]
    fn placeholder_serial_variants() {
        for p in [
            "",
            "   ",
            "To be filled by OEM",
            "TO BE FILLED BY O.E.M",
            "Baseboard Serial Number",
            "XXXXXXXXXX",
            "xxxx",
            "0000000000",
            "--------",
            "1234567890",
            "12345678",
            "AB",
            "A-B",
            "ab ",
        ] {
            assert!(is_placeholder_serial(p), "{p:?}");
        }
    }

    #[test]
    fn real_serials_identify() {
        for s in [
            "ABC1234",
            "7XK1H3",
            "/7XK1H3/CN1296182A0123/",
            "S211X123456",
            "CZ3812ABCD",
            "ABC",
            "120",
        ] {
            assert!(!is_placeholder_serial(s), "{s:?}");
        }
    }

    #[test]
    fn placeholder_uuids_and_their_swaps() {
        for p in PLACEHOLDER_UUIDS {
            assert!(is_placeholder_uuid(p), "{p}");
            assert!(is_placeholder_uuid(&p.to_uppercase()), "{p}");
            let swapped = uuid_byte_swapped(p).unwrap_or_default();
            assert!(is_placeholder_uuid(&swapped), "{swapped}");
        }
        for p in [
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "01010101-0101-0101-0101-010101010101",
            "fefefefe-fefe-fefe-fefe-fefefefefefe",
            "00000000-0000-0000-0000-000000000001",
            "00020003-0004-0005-0006-000700080009",
            "00010203-0405-0607-0809-0a0b0c0d0e0f",
            "not a uuid",
        ] {
            assert!(is_placeholder_uuid(p), "{p}");
        }
        assert!(!is_placeholder_uuid("4c4c4544-0033-4410-8058-b4c04f4e3532"));
        assert!(!is_placeholder_uuid("8a95d198-7f46-11e5-bf8b-08002704d48e"));
    }

    #[test]
    fn macs_that_never_identify() {
        for m in [
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01", // IPv4 multicast
            "33:33:00:00:00:01", // IPv6 multicast
            "02:00:00:00:00:01", // locally administered
            "52:54:00:12:34:56", // QEMU's default prefix is locally administered
            "be:3a:f2:b6:05:9f", // randomised (e.g. a Linux bridge)
            "not-a-mac",
        ] {
            assert!(!is_identifying_mac(m), "{m}");
        }
        for m in [
            "00:25:90:ab:cd:ef",
            "3c:fd:fe:12:34:56",
            "B8-CA-3A-00-11-22",
        ] {
            assert!(is_identifying_mac(m), "{m}");
        }
    }

    #[test]
    fn docs_list_every_placeholder() {
        let doc = include_str!("../../../docs/identity.md");
        for p in PLACEHOLDER_SERIALS.iter().chain(PLACEHOLDER_UUIDS) {
            assert!(doc.contains(p), "docs/identity.md does not list {p:?}");
        }
    }
}
