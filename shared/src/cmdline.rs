//! Kernel command-line keys read by the discovery image's init and by `anneal-agent`.

/// HTTPS URL of the server's enrollment endpoint, e.g. `https://10.0.0.1:8443`.
pub const URL: &str = "anneal.url";
/// CA fingerprint the agent pins before trusting anything: `sha256:HEX`.
pub const CA: &str = "anneal.ca";
/// One-time bootstrap token.
pub const TOKEN: &str = "anneal.token";
/// MAC address of the interface that booted (iPXE `${mac}`), for `BOOTIF`-style link bring-up.
pub const BOOTIF: &str = "BOOTIF";
/// `1` gives a shell on the serial console.
pub const DEBUG: &str = "anneal.debug";

/// Parse `key=value` pairs from a kernel command line. Later keys win; bare words map to "".
pub fn parse(cmdline: &str) -> Vec<(String, String)> {
    cmdline
        .split_whitespace()
        .map(|word| match word.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (word.to_string(), String::new()),
        })
        .collect()
}

/// The value of `key` on a kernel command line, if present (last occurrence wins).
pub fn get(cmdline: &str, key: &str) -> Option<String> {
    parse(cmdline)
        .into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_occurrence_wins_and_bare_words_are_empty() {
        let c = "quiet anneal.url=https://a:1 anneal.url=https://b:2 anneal.debug";
        assert_eq!(get(c, URL).as_deref(), Some("https://b:2"));
        assert_eq!(get(c, DEBUG).as_deref(), Some(""));
        assert_eq!(get(c, TOKEN), None);
    }
}
