//! Canonical text forms of UUIDs, serials and MACs, from every place they are read.
//!
//! The canonical UUID is what Linux shows in `/sys/class/dmi/id/product_uuid`: lower-case,
//! hyphenated, with the first three fields byte-swapped from the raw SMBIOS bytes when the
//! SMBIOS version is 2.6 or later.

use super::placeholders::is_placeholder_serial;

/// UUID normalisation from text: any case, with/without hyphens, braces or a `urn:uuid:` prefix →
/// lower-case hyphenated; `None` if not a UUID.
pub fn normalize_uuid_text(s: &str) -> Option<String> {
    Some(canonical(uuid_bytes(s)?))
}

/// From raw SMBIOS type-1 bytes (16 bytes): SMBIOS >= 2.6 stores time_low, time_mid, time_hi little-endian; older versions big-endian (pass the SMBIOS major/minor).
pub fn uuid_from_smbios_bytes(bytes: [u8; 16], smbios_major: u8, smbios_minor: u8) -> String {
    // Same rule as the Linux kernel and dmidecode: little-endian if and only if version >= 2.6.
    if (smbios_major, smbios_minor) >= (2, 6) {
        canonical(swap_fields(bytes))
    } else {
        canonical(bytes)
    }
}

/// From DHCP option 97 (client machine identifier): type byte 0 followed by 16 bytes, which PXE clients send in the SMBIOS (wire/little-endian-first-three-fields) order. Return None when malformed.
pub fn uuid_from_dhcp_option97(data: &[u8]) -> Option<String> {
    let (&kind, rest) = data.split_first()?;
    // RFC 4578 defines only type 0 (a 16-byte UUID).
    if kind != 0 {
        return None;
    }
    let raw: [u8; 16] = rest.try_into().ok()?;
    Some(canonical(swap_fields(raw)))
}

/// The same UUID with its first three fields byte-swapped: firmware and tools disagree on byte order, so matching treats a UUID and its swap as the same identifier.
pub fn uuid_byte_swapped(canonical_text: &str) -> Option<String> {
    Some(canonical(swap_fields(uuid_bytes(canonical_text)?)))
}

/// The 16 bytes of a UUID written as text, in the order the text shows them.
fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let mut t = s.trim();
    if t.len() > 9
        && t.get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case("urn:uuid:"))
    {
        t = t.get(9..)?;
    }
    if let Some(inner) = t.strip_prefix('{') {
        t = inner.strip_suffix('}')?;
    }
    let b = t.as_bytes();
    let hex: Vec<u8> = match b.len() {
        32 => b.to_vec(),
        // Hyphens only where the canonical form has them (8-4-4-4-12).
        36 if [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') => b
            .iter()
            .enumerate()
            .filter(|(i, _)| ![8, 13, 18, 23].contains(i))
            .map(|(_, &c)| c)
            .collect(),
        _ => return None,
    };
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *o = (hex_val(*pair.first()?)? << 4) | hex_val(*pair.get(1)?)?;
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Normalise a MAC: lower-case colon-separated 6 octets; None if malformed.
///
/// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` and `aabbccddeeff`, any case.
pub fn normalize_mac(s: &str) -> Option<String> {
    let octets = mac_octets(s)?;
    let parts: Vec<String> = octets.iter().map(|o| format!("{o:02x}")).collect();
    Some(parts.join(":"))
}

/// The six octets of a MAC in any accepted spelling (see [`normalize_mac`]).
pub(crate) fn mac_octets(s: &str) -> Option<[u8; 6]> {
    let t = s.trim();
    let (groups, width): (Vec<&str>, usize) = if t.contains(':') {
        (t.split(':').collect(), 2)
    } else if t.contains('-') {
        (t.split('-').collect(), 2)
    } else if t.contains('.') {
        (t.split('.').collect(), 4)
    } else {
        (vec![t], 12)
    };
    if groups.len() * width != 12 {
        return None;
    }
    if groups
        .iter()
        .any(|g| g.len() != width || !g.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    let hex = groups.concat();
    let mut octets = [0u8; 6];
    for (i, o) in octets.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(octets)
}

/// Normalise a serial number: whitespace and control characters trimmed from both ends, inner
/// runs of them collapsed to one space, upper-cased; `None` if it is a placeholder.
pub fn normalize_serial(s: &str) -> Option<String> {
    let words: Vec<&str> = s
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let canon = words.join(" ").to_uppercase();
    if is_placeholder_serial(&canon) {
        None
    } else {
        Some(canon)
    }
}

/// Reverse time_low, time_mid and time_hi_and_version: the mixed-endian ↔ big-endian swap.
pub(crate) fn swap_fields(mut b: [u8; 16]) -> [u8; 16] {
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

fn canonical(bytes: [u8; 16]) -> String {
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Raw SMBIOS bytes as they sit in the type-1 table, offsets 08h..17h.
    const RAW: [u8; 16] = [
        0x44, 0x45, 0x4c, 0x4c, 0x33, 0x00, 0x10, 0x44, 0x80, 0x58, 0xb4, 0xc0, 0x4f, 0x4e, 0x35,
        0x32,
    ];

    #[test]
    fn uuid_text_any_case_braces_and_no_hyphens() {
        let want = Some("4c4c4544-0033-4410-8058-b4c04f4e3532".to_string());
        assert_eq!(
            normalize_uuid_text("4C4C4544-0033-4410-8058-B4C04F4E3532"),
            want
        );
        assert_eq!(
            normalize_uuid_text("{4c4c4544-0033-4410-8058-b4c04f4e3532}"),
            want
        );
        assert_eq!(
            normalize_uuid_text("4C4C4544003344108058B4C04F4E3532"),
            want
        );
        assert_eq!(
            normalize_uuid_text("{4C4C4544003344108058B4C04F4E3532}"),
            want
        );
        assert_eq!(
            normalize_uuid_text(" urn:uuid:4c4c4544-0033-4410-8058-b4c04f4e3532\n"),
            want
        );
    }

    #[test]
    fn uuid_text_rejects_non_uuids() {
        for bad in [
            "",
            "Not Settable",
            "4c4c4544-0033-4410-8058-b4c04f4e353",
            "4c4c4544-0033-4410-8058-b4c04f4e35321",
            "4c4c4544-0033-4410-8058-b4c04f4e353g",
            "{4c4c4544-0033-4410-8058-b4c04f4e3532",
            "4c4c45-440033-4410-8058-b4c04f4e3532",
        ] {
            assert_eq!(normalize_uuid_text(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn smbios_2_6_and_later_read_first_three_fields_little_endian() {
        // time_low 44 45 4c 4c → 4c4c4544; time_mid 33 00 → 0033; time_hi 10 44 → 4410;
        // the last eight bytes are printed in stored order.
        let want = "4c4c4544-0033-4410-8058-b4c04f4e3532";
        assert_eq!(uuid_from_smbios_bytes(RAW, 2, 6), want);
        assert_eq!(uuid_from_smbios_bytes(RAW, 2, 8), want);
        assert_eq!(uuid_from_smbios_bytes(RAW, 3, 0), want);
    }

    #[test]
    fn smbios_before_2_6_reads_bytes_in_stored_order() {
        let want = "44454c4c-3300-1044-8058-b4c04f4e3532";
        assert_eq!(uuid_from_smbios_bytes(RAW, 2, 5), want);
        assert_eq!(uuid_from_smbios_bytes(RAW, 2, 4), want);
    }

    #[test]
    fn option97_is_decoded_like_smbios_2_6() {
        let mut data = vec![0u8];
        data.extend_from_slice(&RAW);
        assert_eq!(
            uuid_from_dhcp_option97(&data).as_deref(),
            Some("4c4c4544-0033-4410-8058-b4c04f4e3532")
        );
    }

    #[test]
    fn option97_malformed_is_none() {
        let mut wrong_type = vec![1u8];
        wrong_type.extend_from_slice(&RAW);
        assert_eq!(uuid_from_dhcp_option97(&wrong_type), None);
        assert_eq!(uuid_from_dhcp_option97(&[]), None);
        assert_eq!(uuid_from_dhcp_option97(&[0]), None);
        let mut short = vec![0u8];
        short.extend_from_slice(&RAW[..15]);
        assert_eq!(uuid_from_dhcp_option97(&short), None);
        let mut long = vec![0u8];
        long.extend_from_slice(&RAW);
        long.push(0);
        assert_eq!(uuid_from_dhcp_option97(&long), None);
    }

    #[test]
    fn byte_swap_round_trips() {
        let a = "4c4c4544-0033-4410-8058-b4c04f4e3532";
        let b = "44454c4c-3300-1044-8058-b4c04f4e3532";
        assert_eq!(uuid_byte_swapped(a).as_deref(), Some(b));
        assert_eq!(uuid_byte_swapped(b).as_deref(), Some(a));
        assert_eq!(uuid_byte_swapped("nope"), None);
    }

    #[test]
    fn mac_spellings() {
        let want = Some("52:54:00:ab:cd:ef".to_string());
        assert_eq!(normalize_mac("52:54:00:ab:cd:ef"), want);
        assert_eq!(normalize_mac("52-54-00-AB-CD-EF"), want);
        assert_eq!(normalize_mac("52:54:00:AB:CD:EF"), want);
        assert_eq!(normalize_mac("5254.00ab.cdef"), want);
        assert_eq!(normalize_mac("525400ABCDEF"), want);
        assert_eq!(normalize_mac(" 52:54:00:ab:cd:ef\n"), want);
    }

    #[test]
    fn mac_malformed_is_none() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52:54:00:ab:cd:eg",
            "52:54:00-ab-cd-ef",
            "5:54:00:ab:cd:ef0",
            "525400abcde",
            "525400abcdef01",
            "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33",
            "52:54:00:ab:cd:éf",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn serial_canonical_form() {
        assert_eq!(normalize_serial("  abc1234\t").as_deref(), Some("ABC1234"));
        assert_eq!(
            normalize_serial("/7xk1h3/cn1296\u{0}  2a/").as_deref(),
            Some("/7XK1H3/CN1296 2A/")
        );
        assert_eq!(normalize_serial("To Be Filled By O.E.M."), None);
    }
}
