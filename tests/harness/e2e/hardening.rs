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
    // Pools of its own: other servers' rules (for the default pools) never touch it,
    // so the test fails without this server's rules. The host's resolver is denied
    // too: DNS to it must pass all the same.
    let resolver = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::Ipv4Addr>().ok())
        .find(|address| !address.is_loopback());
    let deny = resolver.map_or(String::new(), |address| format!("  deny: [{address}]\n"));
    let server = match super::skip_reason() {
        Some(reason) => return crate::support::skip("end-to-end test", &reason),
        None => Server::start_with(
            "60s",
            1,
            false,
            &format!("network:\n  pool: 10.236.0.0/16\n  services_pool: 10.237.0.0/16\n{deny}"),
        ),
    };
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

/// `security.runtime: runsc`: a session, sftp, scp, rsync, agent forwarding and a
/// project's companion service all work under gVisor, through the real sshd.
#[test]
fn sessions_transfers_the_agent_and_services_work_under_gvisor() {
    let server = match super::skip_reason() {
        Some(reason) => return crate::support::skip("end-to-end test", &reason),
        None if !crate::support::engine_has_runtime("runsc") => {
            return crate::support::skip("gVisor test", "the engine has no runsc runtime");
        }
        None => Server::start_with("60s", 1, false, "security:\n  runtime: runsc\n"),
    };
    let user = &server.users[0];
    // The kernel inside is gVisor's, and an exit code still comes back.
    let output = server.run(user, "dmesg | head -1; exit 3");
    assert_eq!(output.status.code(), Some(3), "{}", server.explain(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("Starting gVisor"),
        "{}",
        server.explain(&output)
    );
    assert_eq!(runtime_of(&user.container()), "runsc");

    let local = server.scratch("gvisor");
    let payload: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(local.join("up.bin"), &payload).unwrap();
    let client = |program: &str| {
        let mut command = Command::new(program);
        command
            .args(server.client_options(user))
            .env("HOME", server.root.join("client"));
        command
    };
    let target = format!("{}@127.0.0.1", user.name);
    let batch = local.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {0}/up.bin sftp.bin\nget sftp.bin {0}/sftp-back.bin\n",
            local.display()
        ),
    )
    .unwrap();
    let sftp = client("sftp")
        .args(["-P", &server.port.to_string(), "-b"])
        .arg(&batch)
        .arg(&target)
        .output()
        .unwrap();
    assert!(sftp.status.success(), "{}", server.explain(&sftp));
    assert_eq!(std::fs::read(local.join("sftp-back.bin")).unwrap(), payload);
    let scp = client("scp")
        .args(["-P", &server.port.to_string()])
        .arg(local.join("up.bin"))
        .arg(format!("{target}:scp.bin"))
        .output()
        .unwrap();
    assert!(scp.status.success(), "{}", server.explain(&scp));
    let rsync = Command::new("rsync")
        .args(["-a", "-e", &server.ssh_command_line(user)])
        .arg(local.join("up.bin"))
        .arg(format!("{target}:rsync.bin"))
        .env("HOME", server.root.join("client"))
        .output()
        .unwrap();
    assert!(rsync.status.success(), "{}", server.explain(&rsync));
    let sums = server.run(
        user,
        "sha256sum sftp.bin scp.bin rsync.bin | cut -d' ' -f1 | uniq | wc -l",
    );
    assert_eq!(
        String::from_utf8_lossy(&sums.stdout),
        "1\n",
        "{}",
        server.explain(&sums)
    );

    // Agent forwarding: the relay's socket, through the read-only mount.
    let (mut agent, socket) = super::forwarding::agent_with_key(&server, &local);
    let listed = server
        .ssh_with_agent(user, &socket, "ssh-add -l")
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("carried-key"),
        "{}",
        server.explain(&listed)
    );

    // A project's Redis, a service under gVisor too, answers by name.
    let project = server.project_name("gv");
    super::services::add(&server, &project, &super::services::redis_podfile());
    // busybox's nc: bash's /dev/tcp reads meet EAGAIN under gVisor's sockets.
    let output = server.run_in(
        user,
        &project,
        "printf 'PING\\r\\nQUIT\\r\\n' | busybox nc cache 6379",
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("+PONG"),
        "{}",
        server.explain(&output)
    );
    assert_eq!(
        runtime_of(&format!("podspawn-{}-{project}.cache", user.name)),
        "runsc"
    );
}

/// The OCI runtime the engine runs `container` with.
fn runtime_of(container: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.Runtime}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A project's build runs the repo owner's steps as root: on podspawn's build network,
/// under the same policy (not on docker's default bridge, where it reached the host).
#[test]
fn a_projects_build_reaches_neither_the_host_nor_its_metadata_address() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let Some(address) = host_address() else {
        return crate::support::skip("build egress test", "the host has no default route");
    };
    let (port, accepted) = listen_everywhere();
    let chain = format!("{}-OUT", server.isolation_chain.as_deref().unwrap());
    let before = dropped_to(&chain, "169.254.0.0/16");
    let probe = |target: &str, file: &str| {
        format!(
            "  (timeout 3 bash -c 'exec 3<>/dev/tcp/{target}' && echo open || echo shut) > {file} 2>&1\n"
        )
    };
    let podfile = format!(
        "base: {base}\non_create: |\n{host}{metadata}",
        base = crate::real_engine::image(),
        host = probe(&format!("{address}/{port}"), "host"),
        metadata = probe("169.254.169.254/80", "metadata"),
    );
    let project = server.project_name("egress");
    super::services::add(&server, &project, &podfile);
    let seen = server.run_in(user, &project, "cat host metadata");
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout),
        "shut\nshut\n",
        "{}",
        server.explain(&seen)
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a build step reached the host"
    );
    assert!(
        dropped_to(&chain, "169.254.0.0/16") > before,
        "the link-local rule dropped nothing"
    );
}
