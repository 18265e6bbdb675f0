//! Smoke test of the harness itself: namespaces, commands inside them, reachability,
//! plugin calls, and cleanup on drop and on panic. Needs root and iproute2 + ping.

use std::panic::{AssertUnwindSafe, catch_unwind};

use cni_tests::{CniCall, Host, Netns, netns_exists, tempdir, unique_name};

#[test]
fn veth_between_two_pods_pings_and_namespaces_vanish_on_drop() {
    let names: Vec<String>;
    {
        let host = Host::new();
        let pod_a = Netns::new("pod-a");
        let pod_b = Netns::new("pod-b");
        names = [host.name(), pod_a.name(), pod_b.name()]
            .map(str::to_owned)
            .to_vec();
        for name in &names {
            assert!(netns_exists(name), "{name} should exist");
        }

        // The pair is made in the private host, then each end is moved into a pod, the
        // way the bridge plugin does it: nothing touches the real host.
        let end_a = unique_name("va");
        let end_b = unique_name("vb");
        host.ip([
            "link", "add", &end_a, "type", "veth", "peer", "name", &end_b,
        ]);
        assert!(host.link(&end_a).is_some());
        host.ip(["link", "set", &end_a, "netns", pod_a.name()]);
        host.ip(["link", "set", &end_b, "netns", pod_b.name()]);
        assert!(host.link(&end_a).is_none(), "moved out of the host");
        assert_eq!(host.link_names(), ["lo"]);

        for (ns, end, addr) in [
            (&pod_a, &end_a, "10.199.0.1/30"),
            (&pod_b, &end_b, "10.199.0.2/30"),
        ] {
            ns.ip(["addr", "add", addr, "dev", end]);
            ns.ip(["link", "set", end, "up"]);
            assert_eq!(ns.addrs(end), [addr]);
        }

        assert!(pod_a.ping("10.199.0.2"), "pod-a reaches pod-b");
        assert!(pod_b.ping("10.199.0.1"), "pod-b reaches pod-a");
        assert!(
            pod_a
                .routes4()
                .iter()
                .any(|r| r["dst"] == "10.199.0.0/30" && r["dev"] == end_a.as_str()),
            "connected route on {end_a}: {:?}",
            pod_a.routes4()
        );
    }
    for name in &names {
        assert!(!netns_exists(name), "{name} should be gone after drop");
    }
}

#[test]
fn namespace_is_removed_when_the_test_panics() {
    let mut name = String::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ns = Netns::new("panics");
        name = ns.name().to_owned();
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!netns_exists(&name), "{name} should be gone after a panic");
}

/// A stand-in plugin (a shell script) shows what a call passes: variables, stdin, and
/// the namespace it runs in.
#[test]
fn cni_call_passes_env_and_stdin_and_runs_in_the_host() {
    let dir = tempdir();
    let fake = dir.join("fake");
    std::fs::write(
        &fake,
        r#"#!/bin/sh
input=$(cat)
if [ "$CNI_COMMAND" = DEL ]; then
    printf '{"code":7,"msg":"invalid network config","details":"got %s bytes"}' "${#input}"
    exit 1
fi
printf '{"command":"%s","id":"%s","netns":"%s","ifname":"%s","args":"%s","path":"%s","extra":"%s","stdin":%s,"ns":"%s"}' \
    "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" \
    "${CNI_EXTRA-unset}" "$input" "$(readlink /proc/self/ns/net)"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let host = Host::new();
    let pod = Netns::new("pod");
    let call = host
        .cni(&fake)
        .command("ADD")
        .container_id("c1")
        .netns(&pod)
        .ifname("eth0")
        .args("IgnoreUnknown=1;K=V")
        .path("/x:/y")
        .env("CNI_EXTRA", "1")
        .env_remove("CNI_EXTRA")
        .config(&serde_json::json!({"cniVersion": "1.0.0", "name": "n"}));
    let out = call.run();
    let got = out.assert_ok();
    assert_eq!(got["command"], "ADD");
    assert_eq!(got["id"], "c1");
    assert_eq!(got["netns"], pod.path().to_str().unwrap());
    assert_eq!(got["ifname"], "eth0");
    assert_eq!(got["args"], "IgnoreUnknown=1;K=V");
    assert_eq!(got["path"], "/x:/y");
    assert_eq!(got["extra"], "unset");
    assert_eq!(got["stdin"]["name"], "n");
    let host_ns = host.run(["readlink", "/proc/self/ns/net"]);
    assert_eq!(
        got["ns"],
        host_ns.trim(),
        "the plugin ran in the private host"
    );

    let err = call.clone().command("DEL").run();
    let obj = err.assert_error(7);
    assert_eq!(obj["msg"], "invalid network config");

    // Outside any namespace, CNI_PATH defaults to the directory of the built plugins.
    let out = CniCall::new(&fake)
        .command("ADD")
        .config(&serde_json::json!({}))
        .run();
    assert_eq!(
        out.assert_ok()["path"],
        cni_tests::bin_dir().to_str().unwrap()
    );
}
