//! Every parser the agent runs on machine data must survive garbage: the static agent is built
//! with panic=abort, so a panic would kill it and the supervisor would restart it into the same
//! crash. Seeded, bounded mutation runs over real inputs (the captured fixtures) and random bytes.

use anneal_agent::inventory::{bmc, cpu, disks, lldp, memory, smart, smbios};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUNDS: usize = 3_000;

fn fixture(path: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A mutated copy of `seed`: flipped bytes, truncation, duplication, or pure noise.
fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    match rng.gen_range(0..5) {
        0 if !v.is_empty() => {
            for _ in 0..rng.gen_range(1..16) {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
        }
        1 => v.truncate(rng.gen_range(0..=v.len())),
        2 if !v.is_empty() => {
            let i = rng.gen_range(0..v.len());
            let extra = v[i..].to_vec();
            v.extend_from_slice(&extra);
        }
        3 if !v.is_empty() => {
            // Zero or 0xff runs: typical of broken firmware tables.
            let i = rng.gen_range(0..v.len());
            let n = rng.gen_range(1..64).min(v.len() - i);
            let b = if rng.gen() { 0 } else { 0xff };
            v[i..i + n].iter_mut().for_each(|x| *x = b);
        }
        _ => v = (0..rng.gen_range(0..2048)).map(|_| rng.gen()).collect(),
    }
    v
}

#[test]
fn smbios_tables() {
    let seeds = [
        fixture("bios-e1000/root/sys/firmware/dmi/tables/DMI"),
        fixture("uefi-virtio/root/sys/firmware/dmi/tables/DMI"),
    ];
    let entry = fixture("bios-e1000/root/sys/firmware/dmi/tables/smbios_entry_point");
    let mut rng = StdRng::seed_from_u64(1);
    for i in 0..ROUNDS {
        let table = mutate(&mut rng, &seeds[i % 2]);
        let _ = smbios::decode(table, None);
        let _ = smbios::entry_point_version(mutate(&mut rng, &entry));
    }
}

#[test]
fn entry_points_of_both_fixtures_parse() {
    for m in ["bios-e1000", "uefi-virtio"] {
        let raw = fixture(&format!(
            "{m}/root/sys/firmware/dmi/tables/smbios_entry_point"
        ));
        let v = smbios::entry_point_version(raw).expect("entry point parses");
        assert!(v.major >= 2, "{m}: {v:?}");
    }
    assert!(
        smbios::entry_point_version(b"_SM_".to_vec()).is_err(),
        "truncated"
    );
    assert!(
        smbios::entry_point_version(b"junk".to_vec()).is_err(),
        "no anchor"
    );
}

#[test]
fn text_parsers() {
    let cpuinfo = fixture("uefi-virtio/root/proc/cpuinfo");
    let meminfo = fixture("uefi-virtio/root/proc/meminfo");
    let lan = b"IP Address Source       : Static Address\nIP Address              : 10.1.2.3\nMAC Address             : 0c:c4:7a:00:00:01\n".to_vec();
    let smart_json = br#"{"smart_status":{"passed":true},"power_on_time":{"hours":12},"temperature":{"current":31}}"#.to_vec();
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..ROUNDS {
        let _ = cpu::parse_cpuinfo(&String::from_utf8_lossy(&mutate(&mut rng, &cpuinfo)));
        let _ = memory::parse_mem_total(&String::from_utf8_lossy(&mutate(&mut rng, &meminfo)));
        let _ = bmc::parse_lan_print(&String::from_utf8_lossy(&mutate(&mut rng, &lan)));
        let _ = smart::parse_smartctl(&mutate(&mut rng, &smart_json), Some(rng.gen_range(0..256)));
        let _ = disks::parse_vpd_serial(&mutate(&mut rng, b"\x00\x80\x00\x0cSERIAL-00001"));
    }
}

#[test]
fn lldp_frames() {
    // A well-formed LLDPDU: chassis id (MAC), port id (ifname), TTL, system name, end.
    let mut frame = vec![
        0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e, 0x0c, 0xc4, 0x7a, 0, 0, 1, 0x88, 0xcc,
    ];
    frame.extend_from_slice(&[0x02, 0x07, 0x04, 0x0c, 0xc4, 0x7a, 0, 0, 1]);
    frame.extend_from_slice(&[0x04, 0x06, 0x05, b's', b'w', b'p', b'1', b'2']);
    frame.extend_from_slice(&[0x06, 0x02, 0x00, 0x78]);
    frame.extend_from_slice(&[0x0a, 0x03, b't', b'o', b'r']);
    frame.extend_from_slice(&[0x00, 0x00]);
    assert!(lldp::parse_frame(&frame).is_some(), "the seed frame parses");
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..ROUNDS * 3 {
        let f = mutate(&mut rng, &frame);
        let _ = lldp::parse_frame(&f);
        let _ = lldp::parse_lldpdu(f.get(14..).unwrap_or_default());
    }
}
