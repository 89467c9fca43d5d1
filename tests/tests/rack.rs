//! The virtual rack's own promise: whatever it started is gone afterwards — processes,
//! namespace, taps — also when the test panics half-way. No QEMU needed, so this runs in
//! seconds wherever root and the tools are.

use std::path::Path;
use std::sync::Mutex;

use anneal_tests::rack::system::{self, Need};
use anneal_tests::rack::{Anneal, Dnsmasq, Rack};

fn alive(pid: u32) -> bool {
    // Signal 0: existence check only. Our children are reaped by their guards, so a dead one
    // is really gone (no zombie answering).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[test]
fn rack_tears_everything_down_even_when_a_test_panics() {
    let name = "rack_tears_everything_down_even_when_a_test_panics";
    let needs = [Need::Root, Need::Iproute2, Need::Ipxe, Need::Dnsmasq];
    if !system::ready(name, &needs) {
        return;
    }
    let seen: Mutex<Option<(String, Vec<u32>)>> = Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let rack = Rack::new().expect("rack");
        rack.netns.add_tap("tap9", "br0").expect("tap");
        let server = Anneal::start(&rack, &rack.base_config()).expect("anneal starts");
        let dhcp = Dnsmasq::start(
            &rack,
            &[
                "--interface=br0",
                "--bind-interfaces",
                "--dhcp-range=10.55.0.50,10.55.0.60,255.255.255.0,10m",
            ],
        )
        .expect("dnsmasq starts");
        // The operator API answers (admin token, pinned CA) from a thread inside the namespace.
        let machines = server.api_get("/api/v1/machines").expect("machines");
        assert_eq!(machines, serde_json::json!([]));
        *seen.lock().unwrap() = Some((
            rack.netns.name().to_string(),
            vec![server.pid().expect("running"), dhcp.pid()],
        ));
        panic!("deliberate panic: the guards must clean up");
    }));
    assert!(outcome.is_err(), "the body panicked on purpose");
    let (ns, pids) = seen.lock().unwrap().clone().expect("body got that far");
    assert!(
        !Path::new("/run/netns").join(&ns).exists(),
        "namespace {ns} left behind"
    );
    for pid in pids {
        assert!(!alive(pid), "process {pid} left running");
    }
}
