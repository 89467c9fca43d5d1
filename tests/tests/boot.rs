//! Network boot over plain HTTP: iPXE scripts, boot routing, boot tokens, artifacts.

use anneal_agent::client::ClientError;
use anneal_agent::clock::Clock;
use anneal_shared::cmdline;
use anneal_shared::protocol::{IdentityHints, Nic};
use anneal_tests::pxe::{get, kernel_line, machine_script, plain_http, put_discovery, token_of};
use anneal_tests::{hints, TestServer};
use sha2::{Digest, Sha256};

fn kernel_bytes() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// `hints(n)` booting from a QEMU-style (locally administered, never identifying) MAC.
fn with_mac(mut h: IdentityHints, mac: &str) -> IdentityHints {
    h.macs.push(Nic {
        mac: mac.into(),
        bus: Some("pci".into()),
    });
    h
}

async fn enroll_with(
    server: &TestServer,
    token: &str,
    h: IdentityHints,
    boot: &str,
) -> Result<anneal_agent::client::Session, ClientError> {
    server
        .enroller(Clock::system())
        .enroll(token, h, boot, "host")
        .await
}

#[tokio::test]
async fn entry_script_chains_with_the_ipxe_variables_and_nothing_404s() {
    let server = TestServer::start().await;
    let (status, body) = get(&server, "/boot.ipxe").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    let want = format!(
        "chain --replace {}/boot/machine.ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&serial=${{serial:uristring}}&buildarch=${{buildarch:uristring}}&platform=${{platform:uristring}}",
        server.http_url
    );
    assert!(body.contains(&want), "{body}");

    for path in [
        "/",
        "/nope",
        "/boot/other.ipxe",
        "/boot/machine.ipxe",
        "/boot/machine.ipxe?mac=garbage&uuid=%24%7Bx%7D",
        "/boot.ipxe/x",
        "/a/b/c?d=${e}",
    ] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.starts_with("#!ipxe\n"), "{path}: {body}");
        assert!(
            body.contains(&format!("chain --replace {}/boot.ipxe", server.http_url)),
            "{path}: {body}"
        );
        assert!(
            !body.contains("${e}"),
            "client text never reaches a script raw: {body}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_mac_gets_discovery_with_a_single_use_mac_bound_token() {
    let server = TestServer::start().await;
    let mac = "52:54:00:aa:00:01";

    // No discovery image yet: the script says so and retries.
    let body = machine_script(&server, mac, "", "pcbios").await;
    assert!(body.contains("discovery image is missing"), "{body}");
    assert!(body.contains("chain --replace"), "{body}");

    put_discovery(&server, &kernel_bytes());
    let body = machine_script(&server, mac, "", "pcbios").await;
    let k = kernel_line(&body);
    assert!(k.contains(" initrd=initrd.img "), "{k}");
    assert_eq!(
        cmdline::get(k, cmdline::URL).as_deref(),
        Some(format!("https://127.0.0.1:{}", server.running.api_addr.port()).as_str())
    );
    assert_eq!(cmdline::get(k, cmdline::CA), Some(server.fingerprint()));
    assert_eq!(
        cmdline::get(k, cmdline::BOOTIF).as_deref(),
        Some("01-52-54-00-aa-00-01")
    );
    assert!(body.contains("\ninitrd "), "{body}");
    assert!(body.contains("\nboot || goto failed"), "{body}");
    let token = token_of(&body);

    // Bound to the MAC: a machine without it is refused, and the token is not used up.
    let err = enroll_with(&server, &token, hints(1), "b0")
        .await
        .err()
        .expect("wrong MAC is refused");
    assert!(matches!(err, ClientError::TokenRefused(_)), "{err}");

    let session = enroll_with(&server, &token, with_mac(hints(1), mac), "b1")
        .await
        .expect("the token enrolls the machine that booted");
    let err = enroll_with(&server, &token, with_mac(hints(1), mac), "b2")
        .await
        .err()
        .expect("single use");
    assert!(matches!(err, ClientError::TokenRefused(_)), "{err}");

    // Now known (by its never-identifying MAC, through the boot-MAC index): local disk.
    let body = machine_script(&server, mac, "", "efi").await;
    assert!(body.contains(&session.machine_id.to_string()), "{body}");
    assert!(body.contains("\nexit 1\n"), "{body}");
    assert!(!body.contains("anneal.token"), "{body}");
    let body = machine_script(&server, mac, "", "pcbios").await;
    assert!(
        body.contains("sanboot --no-describe --drive 0x80 || exit 1"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn known_machine_is_found_by_uuid_either_byte_order() {
    let server = TestServer::start().await;
    put_discovery(&server, &kernel_bytes());
    let session = server.enroll(hints(3), "boot-1").await;
    let uuid = hints(3).system_uuid.unwrap();
    let swapped = anneal_server::identity::uuid_byte_swapped(&uuid).unwrap();
    for u in [uuid.to_uppercase(), swapped] {
        let body = machine_script(&server, "52:54:00:bb:00:09", &u, "efi").await;
        assert!(body.contains(&session.machine_id.to_string()), "{body}");
        assert!(body.contains("\nexit 1\n"), "{body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn rediscover_mints_a_token_only_that_machine_can_use() {
    let server = TestServer::start().await;
    put_discovery(&server, &kernel_bytes());
    let mac = "52:54:00:cc:00:01";
    let session = server.enroll(with_mac(hints(5), mac), "boot-1").await;
    let id = session.machine_id;
    assert!(machine_script(&server, mac, "", "efi")
        .await
        .contains("exit 1"));

    let api = server.http();
    let res = api
        .post(format!(
            "{}/api/v1/machines/{id}/rediscover",
            server.api_url
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = api
        .post(format!(
            "{}/api/v1/machines/{}/rediscover",
            server.api_url,
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let body = machine_script(&server, mac, "", "efi").await;
    assert!(body.contains(&id.to_string()), "{body}");
    let token = token_of(&body);

    // Another identity presenting the booting MAC is refused; the token survives that.
    let err = enroll_with(&server, &token, with_mac(hints(6), mac), "other")
        .await
        .err()
        .expect("a different machine is refused");
    assert!(matches!(err, ClientError::TokenRefused(_)), "{err}");

    let again = enroll_with(&server, &token, with_mac(hints(5), mac), "boot-2")
        .await
        .expect("the machine itself enrolls");
    assert_eq!(again.machine_id, id);
    let body = machine_script(&server, mac, "", "pcbios").await;
    assert!(
        body.contains("sanboot --no-describe --drive 0x80"),
        "back to local after enrolling: {body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn artifacts_are_content_addressed_with_range_and_head() {
    let server = TestServer::start().await;
    let kernel = kernel_bytes();
    put_discovery(&server, &kernel);
    let body = machine_script(&server, "52:54:00:dd:00:01", "", "pcbios").await;
    let url = kernel_line(&body)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let sha = hex::encode(Sha256::digest(&kernel));
    assert_eq!(
        url,
        format!("{}/artifacts/{sha}/vmlinuz", server.http_url),
        "{body}"
    );

    let http = plain_http();
    let res = http
        .get(&url)
        .header("range", "bytes=1000-1099")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(
        res.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes 1000-1099/{}", kernel.len()).as_str()
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), &kernel[1000..1100]);

    let res = http.head(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-length"],
        kernel.len().to_string().as_str()
    );
    assert!(res.bytes().await.unwrap().is_empty(), "HEAD has no body");

    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), kernel.as_slice());

    // A new kernel: the old URL stops resolving and the next script links the new hash.
    let mut newer = kernel.clone();
    newer.extend_from_slice(b"v2");
    put_discovery(&server, &newer);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 404);
    let body = machine_script(&server, "52:54:00:dd:00:02", "", "pcbios").await;
    let new_sha = hex::encode(Sha256::digest(&newer));
    assert!(
        kernel_line(&body).contains(&format!("/artifacts/{new_sha}/vmlinuz")),
        "{body}"
    );
    let (status, _) = get(&server, &format!("/artifacts/{}/vmlinuz", "0".repeat(64))).await;
    assert_eq!(status, 404, "unknown artifacts are not scripts");
    server.stop().await;
}

/// UEFI HTTP boot: DHCP tells the firmware `http://SERVER:8080/ipxe/<file>`; the boot listener
/// serves the TFTP tree there under TFTP's rules (built-ins, files in the root, nothing outside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_boot_firmware_gets_ipxe_binaries_and_nothing_outside_the_tftp_tree() {
    let outside = tempfile::tempdir().unwrap();
    let ipxe = outside.path().join("ipxe");
    std::fs::create_dir_all(&ipxe).unwrap();
    let efi: Vec<u8> = (0..173_792u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(ipxe.join("snponly.efi"), &efi).unwrap();
    std::fs::write(ipxe.join("not-a-built-in.efi"), b"x").unwrap();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    let ipxe_dir = ipxe.clone();
    let server = TestServer::start_with(move |a| a.ipxe_dir = Some(ipxe_dir)).await;
    let root = server.dir.path().join("tftp");
    std::fs::create_dir_all(root.join("arm64")).unwrap();
    std::fs::write(root.join("arm64/snponly.efi"), b"arm64 build").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.join("escape")).unwrap();

    let client = plain_http();
    let url = |p: &str| format!("{}/ipxe/{p}", server.http_url);
    let res = client.get(url("snponly.efi")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.content_length(), Some(efi.len() as u64));
    assert!(res.bytes().await.unwrap() == efi, "byte-exact");
    let head = client.head(url("snponly.efi")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        efi.len().to_string()
    );
    let ranged = client
        .get(url("snponly.efi"))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert!(ranged.bytes().await.unwrap() == efi[100..200]);
    let (status, body) = get(&server, "/ipxe/arm64/snponly.efi").await;
    assert_eq!((status, body.as_str()), (200, "arm64 build"));

    for (path, want) in [
        ("missing.efi", 404),
        ("not-a-built-in.efi", 404), // in the iPXE directory, but not one of the built-ins
        ("escape", 403),             // symlink out of the root
        ("../ipxe/snponly.efi", 403),
        ("%2e%2e/ipxe/snponly.efi", 403),
        ("..%2fsecret", 403),
        ("arm64/%2e%2e/%2e%2e/secret", 403),
    ] {
        // Raw request: an HTTP client library would normalise the dots away before sending.
        assert_eq!(
            raw_get_status(&server, &format!("/ipxe/{path}")).await,
            want,
            "{path}"
        );
    }
}

/// The status of a GET sent exactly as written (no URL normalisation).
async fn raw_get_status(server: &TestServer, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.http_url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    conn.read_exact(&mut head).await.unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// Whole-file artifact GETs take the `sendfile` path; on one kept-alive connection, pipelined,
/// they can be followed by anything else (handed to the router with the bytes already read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_artifact_gets_then_a_script_on_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let kernel = kernel_bytes();
    put_discovery(&server, &kernel);
    let body = machine_script(&server, "52:54:00:dd:00:09", "", "pcbios").await;
    let url = kernel_line(&body)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let path = url.trim_start_matches(&server.http_url).to_string();
    let addr = server.http_url.trim_start_matches("http://").to_string();

    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let get = |p: &str, last: bool| {
        format!(
            "GET {p} HTTP/1.1\r\nHost: {addr}\r\n{}\r\n",
            if last { "Connection: close\r\n" } else { "" }
        )
    };
    let pipelined = [
        get(&path, false),
        get(&path, false),
        get("/boot.ipxe", true),
    ]
    .concat();
    conn.write_all(pipelined.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        conn.read_to_end(&mut all),
    )
    .await
    .expect("connection closed after the last response")
    .unwrap();

    let mut rest = all.as_slice();
    for i in 0..3 {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("response {i} has no head"))
            + 4;
        let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "response {i}: {head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .unwrap_or_else(|| panic!("response {i} without content-length: {head}"))
            .trim()
            .parse()
            .unwrap();
        let body = &rest[end..end + len];
        if i < 2 {
            assert!(
                body == kernel.as_slice(),
                "response {i}: the kernel, byte-exact"
            );
            assert!(head.contains("cache-control: public, max-age=31536000, immutable"));
        } else {
            assert!(body.starts_with(b"#!ipxe"), "response 2: the entry script");
        }
        rest = &rest[end + len..];
    }
    assert!(rest.is_empty(), "nothing after the third response");
}
