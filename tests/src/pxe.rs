//! What an iPXE client does against a [`TestServer`] over plain HTTP, for loopback tests of
//! boot routing and workflows: fetch a machine's script, read its kernel line and token.

use anneal_shared::cmdline;

use crate::TestServer;

/// A plain HTTP client (iPXE speaks plain HTTP).
pub fn plain_http() -> reqwest::Client {
    anneal_server::install_crypto_provider();
    reqwest::Client::new()
}

/// GET a path of the boot listener: status and body.
pub async fn get(server: &TestServer, path: &str) -> (u16, String) {
    let res = plain_http()
        .get(format!("{}{path}", server.http_url))
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.text().await.expect("body"))
}

/// The machine script as iPXE would ask for it (strings after `:uristring` encoding).
pub async fn machine_script(server: &TestServer, mac: &str, uuid: &str, platform: &str) -> String {
    let (status, body) = get(
        server,
        &format!(
            "/boot/machine.ipxe?mac={}&uuid={uuid}&serial=TEST&buildarch=x86_64&platform={platform}",
            mac.replace(':', "-")
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("#!ipxe\n"), "{body}");
    body
}

/// The script's `kernel` line.
pub fn kernel_line(script: &str) -> &str {
    script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in\n{script}"))
}

/// The bootstrap token on a discovery script's kernel line.
pub fn token_of(script: &str) -> String {
    cmdline::get(kernel_line(script), cmdline::TOKEN).expect("anneal.token on the kernel line")
}

/// Stand-in discovery image files, so discovery scripts can be rendered.
pub fn put_discovery(server: &TestServer, kernel: &[u8]) {
    let dir = server.dir.path().join("images").join("discovery");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), kernel).unwrap();
    std::fs::write(dir.join("initrd.img"), b"initrd contents").unwrap();
}
