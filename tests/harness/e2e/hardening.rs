//! The hardening a stranger's session meets, through a real sshd: the egress policy
//! server-setup installs, and sessions under gVisor.

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Account, Server};

/// The gateway address of `account`'s container on its network: the host's own.
fn gateway_of(account: &Account) -> String {
    let output = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}",
            &account.container(),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The host's address on its default route (what a container would take for "the
/// server"), if it has one.
fn host_address() -> Option<String> {
    let output = Command::new("ip")
        .args(["-4", "route", "get", "192.0.2.123"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut words = text.split_whitespace();
    words.find(|word| *word == "src")?;
    words.next().map(str::to_string)
}

/// A TCP server on every host address, counting the connections it accepts.
fn listen_everywhere() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut stream) = stream {
                let _ = std::io::Write::write_all(&mut stream, b"host\n");
                let mut sink = [0u8; 16];
                let _ = stream.read(&mut sink);
            }
        }
    });
    (port, accepted)
}

/// What a container's connection to each `address:port` met: `open`, `refused`
/// (something answered no) or `dropped` (nothing answered within two seconds).
fn probe(server: &Server, account: &Account, targets: &[String]) -> Vec<String> {
    let script = format!(
        "for target in {}; do \
           out=$(timeout 2 bash -c \"exec 3<>/dev/tcp/${{target%:*}}/${{target#*:}}\" 2>&1); code=$?; \
           case $code:$out in 0:*) echo open;; 124:*) echo dropped;; *refused*) echo refused;; *) echo \"other $code $out\";; esac; \
         done",
        targets.join(" ")
    );
    let output = server.run(account, &script);
    assert!(output.status.success(), "{}", server.explain(&output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The packets the egress chain's rule for `destination` dropped so far.
fn dropped_to(chain: &str, destination: &str) -> u64 {
    let output = Command::new("iptables")
        .args(["-w", "-t", "mangle", "-L", chain, "-n", "-v", "-x"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("DROP") && line.contains(destination))
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A server on the host's gateway address and on 0.0.0.0 is out of a container's
/// reach (dropped, not refused: a scan learns nothing) and still in the host's; the
/// metadata address is dropped; the internet's DNS still answers inside.
#[test]
fn a_container_reaches_neither_the_host_nor_its_metadata_address() {
    let server = crate::server_or_skip!("60s", 1);
    let alice = &server.users[0];
    let started = server.run(alice, "true");
    assert!(started.status.success(), "{}", server.explain(&started));
    let gateway = gateway_of(alice);
    let (port, accepted) = listen_everywhere();

    // The host reaches its own server on the gateway address.
    let mut from_host = std::net::TcpStream::connect((gateway.as_str(), port)).unwrap();
    let mut greeting = [0u8; 5];
    from_host.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"host\n");
    drop(from_host);
    assert!(
        crate::real_engine::wait_until(std::time::Duration::from_secs(5), || accepted
            .load(Ordering::SeqCst)
            == 1)
        .is_some()
    );

    let mut targets = vec![format!("{gateway}:{port}")];
    if let Some(address) = host_address() {
        targets.push(format!("{address}:{port}"));
    }
    let seen = probe(&server, alice, &targets);
    assert_eq!(seen, vec!["dropped"; targets.len()], "{targets:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a container got through"
    );

    // The metadata address: the policy's own rule drops it.
    let chain = format!("{}-OUT", server.isolation_chain.as_deref().unwrap());
    let before = dropped_to(&chain, "169.254.0.0/16");
    let seen = probe(&server, alice, &["169.254.169.254:80".to_string()]);
    assert_eq!(seen, ["dropped"]);
    assert!(
        dropped_to(&chain, "169.254.0.0/16") > before,
        "the link-local rule dropped nothing"
    );

    // Names the host resolves still resolve inside (the engine's DNS), so package
    // installs keep working.
    let name = "deb.debian.org";
    let host_resolves = Command::new("getent")
        .args(["hosts", name])
        .output()
        .is_ok_and(|output| output.status.success());
    if host_resolves {
        let resolved = server.run(
            alice,
            &format!("getent hosts {name} >/dev/null && echo resolved"),
        );
        assert_eq!(
            String::from_utf8_lossy(&resolved.stdout),
            "resolved\n",
            "{}",
            server.explain(&resolved)
        );
    }
}
