//! What arrives from the network — CSRs, client certificates, identity evidence — is parsed
//! without panicking, whatever the bytes. Seeded and bounded.

use anneal_server::identity::Evidence;
use anneal_server::pki::{client_identity, Ca};
use anneal_shared::protocol::{IdentityHints, Nic};
use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::{Duration, OffsetDateTime};

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    match rng.gen_range(0..3) {
        0 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
        }
        1 => v.truncate(rng.gen_range(0..v.len())),
        _ => v = (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect(),
    }
    v
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

#[test]
fn csrs_and_client_certificates() {
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate("fuzz CA", now).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let csr_der = csr.der().to_vec();
    let id = uuid::Uuid::new_v4();
    let issued = ca
        .sign_client_csr(&csr.pem().unwrap(), id, now, Duration::hours(1))
        .unwrap();
    let cert_der = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    assert_eq!(client_identity(&cert_der).unwrap().machine_id, id);

    let mut rng = StdRng::seed_from_u64(7);
    let mut accepted = 0;
    for _ in 0..2_000 {
        let bad = mutate(&mut rng, &csr_der);
        if ca
            .sign_client_csr(
                &pem("CERTIFICATE REQUEST", &bad),
                id,
                now,
                Duration::hours(1),
            )
            .is_ok()
        {
            accepted += 1;
        }
        let _ = client_identity(&mutate(&mut rng, &cert_der));
        let text =
            String::from_utf8_lossy(&mutate(&mut rng, csr.pem().unwrap().as_bytes())).into_owned();
        let _ = ca.sign_client_csr(&text, id, now, Duration::hours(1));
    }
    // A flipped byte inside the signature or the key invalidates it; only mutations in
    // unsigned padding could survive, and those are rare.
    assert!(accepted < 50, "{accepted} mutated CSRs were accepted");
}

#[test]
fn identity_evidence() {
    let mut rng = StdRng::seed_from_u64(8);
    let junk = |rng: &mut StdRng| -> String {
        let bytes: Vec<u8> = (0..rng.gen_range(0..80)).map(|_| rng.gen()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    for _ in 0..5_000 {
        let h = IdentityHints {
            system_uuid: Some(junk(&mut rng)),
            system_serial: Some(junk(&mut rng)),
            chassis_serial: Some(junk(&mut rng)),
            baseboard_serial: Some(junk(&mut rng)),
            manufacturer: Some(junk(&mut rng)),
            product: None,
            os_machine_id: Some(junk(&mut rng)),
            macs: vec![Nic {
                mac: junk(&mut rng),
                bus: Some(junk(&mut rng)),
            }],
        };
        let e = Evidence::from_hints(&h);
        let _ = anneal_server::identity::decide(&e, &[], &Default::default());
    }
}

/// DHCP packets as proxy mode sees them, on port 67 and 4011: mutated PXE requests and random
/// bytes never panic, and no answer ever carries an address.
#[test]
fn dhcp_proxy_packets() {
    use anneal_server::dhcp::config::{DhcpConfig, DhcpFile};
    use anneal_server::dhcp::pipeline::Outcome;
    use anneal_server::dhcp::proxy::{handle, Listener, ProxyCtx};
    use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode};
    use dhcproto::Encodable;
    use std::net::{Ipv4Addr, SocketAddrV4};

    let file: DhcpFile = toml::from_str(
        "arm64_file = \"arm64.efi\"\n[[proxy]]\ninterface = \"eth0\"\n\
         [[hosts]]\nmac = \"52:54:00:00:00:01\"\nboot_file = \"h.efi\"\n",
    )
    .unwrap();
    let cfg = DhcpConfig::resolve(Some(&file), &[]).unwrap();
    let addrs = [Ipv4Addr::new(10, 0, 0, 2)];
    let mut seeds = Vec::new();
    for (kind, arch, vendor) in [
        (
            MessageType::Discover,
            0u16,
            "PXEClient:Arch:00000:UNDI:002001",
        ),
        (
            MessageType::Discover,
            11,
            "PXEClient:Arch:00011:UNDI:003016",
        ),
        (MessageType::Request, 7, "PXEClient:Arch:00007:UNDI:003016"),
        (
            MessageType::Discover,
            16,
            "HTTPClient:Arch:00016:UNDI:003001",
        ),
    ] {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_htype(v4::HType::Eth)
            .set_chaddr(&[0x52, 0x54, 0, 0, 0, 1])
            .set_ciaddr(Ipv4Addr::new(10, 0, 0, 50));
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ClientSystemArchitecture(v4::Architecture(arch)));
        o.insert(DhcpOption::ClassIdentifier(vendor.as_bytes().to_vec()));
        o.insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
        o.insert(DhcpOption::VendorExtensions(vec![
            71, 4, 0x80, 0, 0, 0, 255,
        ]));
        seeds.push(m.to_vec().unwrap());
    }
    let mut rng = StdRng::seed_from_u64(9);
    let mut answered = 0;
    for i in 0..20_000usize {
        let packet = mutate(&mut rng, &seeds[i % seeds.len()]);
        for listener in [Listener::Dhcp, Listener::BootServer] {
            let ctx = ProxyCtx {
                cfg: &cfg,
                iface: "eth0",
                iface_addrs: &addrs,
                listener,
                from: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 4011),
            };
            if let Outcome::Respond(r) = handle(&packet, &ctx) {
                answered += 1;
                assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
                let _ = r.msg.to_vec();
            }
        }
    }
    assert!(
        answered > 100,
        "only {answered} mutated requests were answered"
    );
}
