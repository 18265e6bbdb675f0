//! The `host-local` binary as a runtime drives it: every verb at every spec version, the
//! on-disk ledger read back byte by byte, bad input, concurrency, and (when Debian's
//! `containernetworking-plugins` is installed) a differential run against the reference.
//!
//! host-local touches no kernel state, so these tests need no namespaces: `CNI_NETNS` is a
//! path that is never opened, and every test has its own throw-away `dataDir`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use cni_tests::{CniCall, Outcome, TempDir, plugin, reference_plugin, tempdir};

const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
const NET: &str = "mynet";
const FAKE_NETNS: &str = "/var/run/netns/host-local-test-never-opened";
const INDEX: &str = ".host-local-index";

fn bin() -> PathBuf {
    plugin("host-local")
}

/// A host-local config over `subnets` (one range set each) storing in `data`.
fn conf(version: &str, data: &Path, subnets: &[&str]) -> Value {
    let ranges: Vec<Value> = subnets.iter().map(|s| json!([{"subnet": s}])).collect();
    json!({
        "cniVersion": version,
        "name": NET,
        "type": "bridge",
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            "dataDir": data,
        },
    })
}

fn call_with(binary: &Path, verb: &str, conf: &Value, cid: &str, ifname: &str) -> CniCall {
    CniCall::new(binary)
        .command(verb)
        .container_id(cid)
        .netns(FAKE_NETNS)
        .ifname(ifname)
        .config(conf)
}

fn call(verb: &str, conf: &Value, cid: &str) -> CniCall {
    call_with(&bin(), verb, conf, cid, "eth0")
}

fn run(verb: &str, conf: &Value, cid: &str) -> Outcome {
    call(verb, conf, cid).run()
}

/// Every file under `dir` (recursively) with its content; our index is left out, since
/// it is the one file the reference does not write.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if rel.ends_with(INDEX) {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn net_dir(data: &TempDir) -> PathBuf {
    data.join(NET)
}

/// The reservation files of the ledger: name → content.
fn reservations(data: &TempDir) -> BTreeMap<String, String> {
    snapshot(&net_dir(data))
        .into_iter()
        .filter(|(k, _)| k.parse::<std::net::IpAddr>().is_ok())
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

fn read(data: &TempDir, name: &str) -> String {
    std::fs::read_to_string(net_dir(data).join(name)).unwrap_or_default()
}

fn has_check(v: &str) -> bool {
    !matches!(v, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1")
}

fn has_gc(v: &str) -> bool {
    v == "1.1.0"
}

/// The expected ADD result for the first dual-stack allocation, in the shape of `v`.
fn expected_first_result(v: &str) -> Value {
    match v {
        "0.1.0" | "0.2.0" => json!({
            "cniVersion": v,
            "ip4": {"ip": "10.1.2.2/24", "gateway": "10.1.2.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "ip6": {"ip": "2001:db8:1::2/64", "gateway": "2001:db8:1::1", "routes": [{"dst": "::/0"}]},
            "dns": {},
        }),
        "0.3.0" | "0.3.1" | "0.4.0" => json!({
            "cniVersion": v,
            "ips": [
                {"version": "4", "address": "10.1.2.2/24", "gateway": "10.1.2.1"},
                {"version": "6", "address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"},
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            "dns": {},
        }),
        _ => json!({
            "cniVersion": v,
            "ips": [
                {"address": "10.1.2.2/24", "gateway": "10.1.2.1"},
                {"address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"},
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        }),
    }
}

#[test]
fn version_and_about() {
    let out = CniCall::new(bin()).command("VERSION").run();
    let v = out.assert_ok();
    assert_eq!(v["cniVersion"], "1.1.0");
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(supported, VERSIONS);

    let out = CniCall::new(bin()).run();
    assert!(out.success(), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.contains("CNI host-local plugin"), "{out}");
    assert!(
        out.stderr
            .contains("0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
        "{out}"
    );
}

#[test]
fn every_verb_at_every_version() {
    for v in VERSIONS {
        let data = tempdir();
        let c = conf(v, data.path(), &["10.1.2.0/24", "2001:db8:1::/64"]);

        let out = run("ADD", &c, "dummy");
        assert_eq!(out.assert_ok(), &expected_first_result(v), "{v}:\n{out}");
        assert_eq!(read(&data, "10.1.2.2"), "dummy\r\neth0", "{v}");
        assert_eq!(read(&data, "2001:db8:1::2"), "dummy\r\neth0", "{v}");
        assert_eq!(read(&data, "last_reserved_ip.0"), "10.1.2.2", "{v}");
        assert_eq!(read(&data, "last_reserved_ip.1"), "2001:db8:1::2", "{v}");
        let mode = |f: &str| {
            std::fs::metadata(net_dir(&data).join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("10.1.2.2"), 0o600);
        assert_eq!(mode("last_reserved_ip.0"), 0o600);
        assert_eq!(mode("lock"), 0o750);

        let check = run("CHECK", &c, "dummy");
        if has_check(v) {
            check.assert_ok();
            let e = run("CHECK", &c, "other").assert_error(999).clone();
            assert_eq!(
                e["msg"],
                "host-local: Failed to find address added by container other"
            );
        } else {
            assert_eq!(
                check.assert_error(1)["msg"],
                "config version does not allow CHECK"
            );
        }

        for verb in ["GC", "STATUS"] {
            let out = run(verb, &c, "");
            if has_gc(v) {
                out.assert_ok();
            } else {
                out.assert_error(1);
            }
        }
        // GC with no list released nothing.
        assert_eq!(reservations(&data).len(), 2, "{v}");

        assert_eq!(run("DEL", &c, "dummy").assert_ok(), &Value::Null, "{v}");
        assert!(reservations(&data).is_empty(), "{v}");
        // DEL is idempotent and fine for unknown IDs.
        run("DEL", &c, "dummy").assert_ok();
        run("DEL", &c, "never-added").assert_ok();
        // The bookkeeping files stay.
        assert_eq!(read(&data, "last_reserved_ip.0"), "10.1.2.2");
        assert!(net_dir(&data).join("lock").exists());
    }
}

#[test]
fn round_robin_per_ifname_and_duplicates() {
    let data = tempdir();
    let c = conf("1.0.0", data.path(), &["10.1.2.0/24"]);
    let ip = |out: &Outcome| {
        out.assert_ok()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(ip(&run("ADD", &c, "c1")), "10.1.2.2/24");
    let dup = run("ADD", &c, "c1");
    assert_eq!(
        dup.assert_error(999)["msg"],
        "failed to allocate for range 0: 10.1.2.2 has been allocated to c1, duplicate allocation is not allowed"
    );
    assert_eq!(
        ip(&call_with(&bin(), "ADD", &c, "c1", "eth1").run()),
        "10.1.2.3/24"
    );
    assert_eq!(ip(&run("ADD", &c, "c2")), "10.1.2.4/24");
    run("DEL", &c, "c1").assert_ok();
    // Round robin: the released .2 is not handed out again before the range wraps.
    assert_eq!(ip(&run("ADD", &c, "c3")), "10.1.2.5/24");
    assert_eq!(read(&data, "10.1.2.3"), "c1\r\neth1");
    let left: Vec<String> = reservations(&data).into_keys().collect();
    assert_eq!(left, ["10.1.2.3", "10.1.2.4", "10.1.2.5"]);
}

#[test]
fn requested_ips_from_args_cni_args_and_runtime_config() {
    let data = tempdir();
    let mut c = conf("1.0.0", data.path(), &["10.1.2.0/24", "2001:db8:1::/64"]);
    c["args"] = json!({"cni": {"ips": ["2001:db8:1::99"]}});
    c["runtimeConfig"] = json!({"ips": ["10.1.2.77/24"]});
    let out = call("ADD", &c, "c1")
        .args("IgnoreUnknown=1;K8S_POD_NAME=x")
        .run();
    let r = out.assert_ok();
    assert_eq!(r["ips"][0]["address"], "10.1.2.77/24");
    assert_eq!(r["ips"][1]["address"], "2001:db8:1::99/64");

    let c = conf("1.0.0", data.path(), &["10.1.2.0/24"]);
    let out = call("ADD", &c, "c2").args("IP=10.1.2.9").run();
    assert_eq!(out.assert_ok()["ips"][0]["address"], "10.1.2.9/24");
    let out = call("ADD", &c, "c3").args("IP=10.1.2.9").run();
    assert_eq!(
        out.assert_error(999)["msg"],
        "failed to allocate for range 0: requested IP address 10.1.2.9 is not available in range set 10.1.2.1-10.1.2.254"
    );
    let out = call("ADD", &c, "c3").args("IP=10.1.2.1").run();
    assert_eq!(
        out.assert_error(999)["msg"],
        "failed to allocate for range 0: requested ip 10.1.2.1 is subnet's gateway"
    );
    let before = reservations(&data);
    let mut c2 = c.clone();
    c2["runtimeConfig"] = json!({"ips": ["10.1.2.30", "10.9.9.9"]});
    let out = call("ADD", &c2, "c4").run();
    assert_eq!(
        out.assert_error(999)["msg"],
        "failed to allocate all requested IPs: 10.9.9.9"
    );
    assert_eq!(
        reservations(&data),
        before,
        "a failed ADD leaves nothing behind"
    );
    let out = call("ADD", &c, "c5").args("IP=bogus").run();
    assert_eq!(
        out.assert_error(999)["msg"],
        "ARGS: error parsing value of pair \"IP=bogus\": invalid IP address bogus"
    );
    let out = call("ADD", &c, "c5").args("FOO=1").run();
    assert_eq!(
        out.assert_error(999)["msg"],
        "ARGS: unknown args [\"FOO=1\"]"
    );
}

#[test]
fn exhaustion_and_status() {
    let data = tempdir();
    let c = conf("1.1.0", data.path(), &["10.9.0.0/29"]);
    for i in 0..5 {
        run("STATUS", &c, "").assert_ok();
        run("ADD", &c, &format!("c{i}")).assert_ok();
    }
    let out = run("ADD", &c, "c9");
    assert_eq!(
        out.assert_error(999)["msg"],
        "failed to allocate for range 0: no IP addresses available in range set: 10.9.0.1-10.9.0.6"
    );
    let st = run("STATUS", &c, "");
    assert_eq!(
        st.assert_error(50)["msg"],
        "no IP addresses available in range set: 10.9.0.1-10.9.0.6"
    );
    run("DEL", &c, "c3").assert_ok();
    run("STATUS", &c, "").assert_ok();
    let out = run("ADD", &c, "c9");
    assert_eq!(out.assert_ok()["ips"][0]["address"], "10.9.0.5/29");

    // A failure in the second range set releases what the first one took.
    let c2 = conf("1.1.0", data.path(), &["10.8.0.0/24", "10.9.0.0/29"]);
    let before = reservations(&data);
    let out = run("ADD", &c2, "c10");
    assert_eq!(
        out.assert_error(999)["msg"],
        "failed to allocate for range 1: no IP addresses available in range set: 10.9.0.1-10.9.0.6"
    );
    assert_eq!(reservations(&data), before);
    // STATUS of a network that never allocated anything is fine and creates nothing.
    let fresh = tempdir();
    run("STATUS", &conf("1.1.0", fresh.path(), &["10.9.0.0/29"]), "").assert_ok();
    assert!(snapshot(fresh.path()).is_empty());
}

#[test]
fn gc_releases_what_is_not_valid() {
    let data = tempdir();
    let c = conf("1.1.0", data.path(), &["10.1.2.0/24", "2001:db8:1::/64"]);
    for cid in ["keep", "gone1", "gone2"] {
        run("ADD", &c, cid).assert_ok();
    }
    call_with(&bin(), "ADD", &c, "keep", "eth1")
        .run()
        .assert_ok();
    let dir = net_dir(&data);
    std::fs::write(dir.join("10.1.2.50"), "legacykeep").unwrap();
    std::fs::write(dir.join("10.1.2.51"), "legacygone").unwrap();
    std::fs::write(dir.join("10.1.2.52"), "").unwrap();
    std::fs::write(dir.join("10.1.2.53"), [0xffu8, 0, 1]).unwrap();
    std::fs::write(dir.join("notes.txt"), "gone1\r\neth0").unwrap();

    // No list at all (cnitool gc): nothing is released.
    run("GC", &c, "").assert_ok();
    assert_eq!(reservations(&data).len(), 12);

    let mut g = c.clone();
    g["cni.dev/valid-attachments"] = json!([
        {"containerID": "keep", "ifname": "eth0"},
        {"containerID": "legacykeep", "ifname": "eth0"},
    ]);
    run("GC", &g, "").assert_ok();
    let left: BTreeMap<String, String> = reservations(&data);
    let owners: BTreeSet<&str> = left.values().map(String::as_str).collect();
    assert_eq!(
        owners,
        BTreeSet::from(["keep\r\neth0", "legacykeep"]),
        "{left:?}"
    );
    assert_eq!(left.len(), 3);
    for f in [
        "lock",
        "last_reserved_ip.0",
        "last_reserved_ip.1",
        "notes.txt",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // The survivor still passes CHECK and the released ones can be handed out again.
    run("CHECK", &c, "keep").assert_ok();
    run("CHECK", &c, "gone1").assert_error(999);
    run("ADD", &c, "gone1").assert_ok();

    // An empty list (null, as libcni sends it with no attachments) releases everything.
    let mut g = c.clone();
    g["cni.dev/valid-attachments"] = Value::Null;
    run("GC", &g, "").assert_ok();
    assert!(reservations(&data).is_empty());
}

#[test]
fn resolv_conf_becomes_dns() {
    let data = tempdir();
    let resolv = data.join("resolv.conf");
    std::fs::write(
        &resolv,
        "# test\nnameserver 10.0.0.53\nnameserver 2001:db8::53\ndomain example.com\n\
         search a.example b.example\noptions ndots:2 edns0\n",
    )
    .unwrap();
    let mut c = conf("1.0.0", data.path(), &["10.1.2.0/24"]);
    c["ipam"]["resolvConf"] = json!(resolv);
    let r = run("ADD", &c, "c1");
    assert_eq!(
        r.assert_ok()["dns"],
        json!({
            "nameservers": ["10.0.0.53", "2001:db8::53"],
            "domain": "example.com",
            "search": ["a.example", "b.example"],
            "options": ["ndots:2", "edns0"],
        })
    );
    c["ipam"]["resolvConf"] = json!(data.join("missing"));
    let e = run("ADD", &c, "c2");
    assert_eq!(
        e.assert_error(999)["msg"],
        format!(
            "open {}: no such file or directory",
            data.join("missing").display()
        )
    );
}

#[test]
fn concurrent_adds_from_separate_processes() {
    let data = tempdir();
    let c = conf("1.0.0", data.path(), &["10.50.0.0/24", "2001:db8:50::/64"]);
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || run("ADD", &c, &format!("pod{i}")))
        })
        .collect();
    let mut seen = BTreeSet::new();
    for t in threads {
        let out = t.join().unwrap();
        let r = out.assert_ok();
        for ip in r["ips"].as_array().unwrap() {
            assert!(
                seen.insert(ip["address"].as_str().unwrap().to_string()),
                "{out}"
            );
        }
    }
    assert_eq!(seen.len(), 128);
    let files = reservations(&data);
    assert_eq!(files.len(), 128);
    let mut per_owner: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in files.values() {
        *per_owner.entry(owner.as_str()).or_default() += 1;
    }
    assert_eq!(per_owner.len(), 64);
    assert!(per_owner.values().all(|&n| n == 2), "{per_owner:?}");
    for i in 0..64 {
        assert_eq!(per_owner[format!("pod{i}\r\neth0").as_str()], 2);
    }
    let last: std::net::IpAddr = read(&data, "last_reserved_ip.0").parse().unwrap();
    assert!(files.contains_key(&last.to_string()));

    let threads: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || run("DEL", &c, &format!("pod{i}")))
        })
        .collect();
    for t in threads {
        t.join().unwrap().assert_ok();
    }
    assert!(reservations(&data).is_empty());
}

/// One bad call: what it is, the call, and the error code expected.
struct Bad {
    what: &'static str,
    call: CniCall,
    code: u64,
}

#[test]
fn bad_input_is_one_error_and_changes_nothing() {
    let root = tempdir();
    let data = root.join("data");
    std::fs::create_dir(&data).unwrap();
    let good = conf("1.0.0", &data, &["10.1.2.0/24"]);
    // Something already in the ledger, so "unchanged" means something.
    call_with(&bin(), "ADD", &good, "existing", "eth0")
        .run()
        .assert_ok();

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let add = |c: Value| call_with(&bin(), "ADD", &c, "c1", "eth0");
    let long_name = "n".repeat(300);
    let cases = vec![
        Bad {
            what: "missing CNI_CONTAINERID",
            call: add(good.clone()).env_remove("CNI_CONTAINERID"),
            code: 4,
        },
        Bad {
            what: "missing CNI_IFNAME",
            call: add(good.clone()).env_remove("CNI_IFNAME"),
            code: 4,
        },
        Bad {
            what: "missing CNI_PATH",
            call: add(good.clone()).env_remove("CNI_PATH"),
            code: 4,
        },
        Bad {
            what: "missing CNI_NETNS",
            call: add(good.clone()).env_remove("CNI_NETNS"),
            code: 4,
        },
        Bad {
            what: "unknown command",
            call: add(good.clone()).command("FROB"),
            code: 4,
        },
        Bad {
            what: "not JSON",
            call: add(good.clone()).stdin("{not json"),
            code: 6,
        },
        Bad {
            what: "empty stdin",
            call: add(good.clone()).stdin(""),
            code: 6,
        },
        Bad {
            what: "ranges of the wrong type",
            call: add(with(&|c| c["ipam"]["ranges"] = json!("10.1.2.0/24"))),
            code: 6,
        },
        Bad {
            what: "dataDir of the wrong type",
            call: add(with(&|c| c["ipam"]["dataDir"] = json!(42))),
            code: 6,
        },
        Bad {
            what: "CIDR without prefix",
            call: add(with(&|c| {
                c["ipam"]["ranges"] = json!([[{"subnet": "10.1.2.0"}]])
            })),
            code: 7,
        },
        Bad {
            what: "prefix too long",
            call: add(with(&|c| {
                c["ipam"]["ranges"] = json!([[{"subnet": "10.1.2.0/33"}]])
            })),
            code: 7,
        },
        Bad {
            what: "host bits",
            call: add(with(&|c| {
                c["ipam"]["ranges"] = json!([[{"subnet": "10.1.2.3/24"}]])
            })),
            code: 7,
        },
        Bad {
            what: "no ranges",
            call: add(with(&|c| c["ipam"]["ranges"] = json!([]))),
            code: 7,
        },
        Bad {
            what: "no ipam",
            call: add(with(&|c| {
                c.as_object_mut().unwrap().remove("ipam");
            })),
            code: 7,
        },
        Bad {
            what: "unsupported version",
            call: add(with(&|c| c["cniVersion"] = json!("9.9.9"))),
            code: 1,
        },
        Bad {
            what: "network name ..",
            call: add(with(&|c| c["name"] = json!(".."))),
            code: 7,
        },
        Bad {
            what: "network name ../x",
            call: add(with(&|c| c["name"] = json!("../escape"))),
            code: 7,
        },
        Bad {
            what: "network name /abs",
            call: add(with(&|c| c["name"] = json!("/tmp/abs"))),
            code: 7,
        },
        Bad {
            what: "network name a/b",
            call: add(with(&|c| c["name"] = json!("a/b"))),
            code: 7,
        },
        Bad {
            what: "network name with NUL",
            call: add(with(&|c| c["name"] = json!("a\u{0}b"))),
            code: 7,
        },
        Bad {
            what: "very long network name",
            call: add(with(&|c| c["name"] = json!(long_name))),
            code: 7,
        },
        Bad {
            what: "container ID ../x",
            call: add(good.clone()).container_id("../x"),
            code: 4,
        },
        Bad {
            what: "container ID /abs",
            call: add(good.clone()).container_id("/etc/passwd"),
            code: 4,
        },
        Bad {
            what: "ifname with /",
            call: add(good.clone()).ifname("../x"),
            code: 4,
        },
        Bad {
            what: "ifname too long",
            call: add(good.clone()).ifname("abcdefghijklmnopq"),
            code: 4,
        },
        Bad {
            what: "DEL with ../ name",
            call: call_with(
                &bin(),
                "DEL",
                &with(&|c| c["name"] = json!("..")),
                "existing",
                "eth0",
            ),
            code: 7,
        },
        Bad {
            what: "GC with bad attachments",
            call: call_with(
                &bin(),
                "GC",
                &with(&|c| {
                    c["cniVersion"] = json!("1.1.0");
                    c["cni.dev/valid-attachments"] = json!("everything");
                }),
                "",
                "",
            ),
            code: 6,
        },
    ];

    let before = snapshot(root.path());
    let tmp_before: BTreeSet<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("escape"))
        .collect();
    for bad in cases {
        let out = bad.call.run();
        assert!(!out.success(), "{}: {out}", bad.what);
        let Some(Value::Object(obj)) = &out.json else {
            panic!("{}: stdout is not one JSON object:\n{out}", bad.what);
        };
        assert_eq!(out.error_code(), Some(bad.code), "{}:\n{out}", bad.what);
        assert!(obj.get("msg").is_some_and(Value::is_string), "{}", bad.what);
        assert_eq!(
            snapshot(root.path()),
            before,
            "{}: data dir changed",
            bad.what
        );
    }
    assert!(!Path::new("/tmp/abs").exists());
    let tmp_after: BTreeSet<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("escape"))
        .collect();
    assert_eq!(tmp_before, tmp_after);
}

/// A small tmpfs mounted on a fresh temporary directory, unmounted on drop.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn new() -> SmallDisk {
        let dir = tempdir();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        SmallDisk { dir }
    }

    /// Fills every free block.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_fails_add_and_leaves_nothing() {
    let disk = SmallDisk::new();
    let c = conf("1.1.0", disk.dir.path(), &["10.1.2.0/24"]);
    run("ADD", &c, "c1").assert_ok();
    // Drop the index, so the next call has to rebuild it on the full disk.
    std::fs::remove_file(net_dir(&disk.dir).join(INDEX)).unwrap();
    let before = snapshot(&net_dir(&disk.dir));
    disk.fill();
    let out = run("ADD", &c, "c2");
    let err = out.assert_error(999);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("no space left on device"),
        "{err}"
    );
    assert_eq!(snapshot(&net_dir(&disk.dir)), before, "the ledger changed");
    run("DEL", &c, "c1").assert_ok();
    assert!(reservations(&disk.dir).is_empty());
    let names: Vec<String> = std::fs::read_dir(net_dir(&disk.dir))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn garbage_in_the_ledger_never_crashes() {
    let data = tempdir();
    let c = conf("1.1.0", data.path(), &["10.1.2.0/24"]);
    run("ADD", &c, "c1").assert_ok();
    let dir = net_dir(&data);
    std::fs::write(dir.join("10.1.2.3"), "").unwrap();
    std::fs::write(dir.join("10.1.2.4"), vec![0u8; 100_000]).unwrap();
    std::fs::write(dir.join("10.1.2.5"), "c9\r").unwrap();
    std::fs::write(dir.join("last_reserved_ip.0"), "garbage").unwrap();
    std::fs::write(dir.join(INDEX), "corrupt index").unwrap();
    std::fs::create_dir(dir.join("10.1.2.6")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("10.1.2.7")).unwrap();
    // last_reserved_ip is garbage, so the round robin restarts at the range start and
    // skips everything that exists in any form.
    let r = run("ADD", &c, "c2");
    assert_eq!(r.assert_ok()["ips"][0]["address"], "10.1.2.8/24");
    run("CHECK", &c, "c2").assert_ok();
    run("STATUS", &c, "").assert_ok();
    run("DEL", &c, "c2").assert_ok();
    assert!(!dir.join("10.1.2.8").exists());
    // "c9\r" trims to a legacy (ID-only) file of c9.
    run("DEL", &c, "c9").assert_ok();
    assert!(!dir.join("10.1.2.5").exists());
    let mut g = c.clone();
    g["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    run("GC", &g, "").assert_ok();
    // GC removes only regular files: the symlink and the directory nobody of ours made
    // stay (and keep blocking their addresses, as they do for the reference).
    let left: Vec<String> = reservations(&data).into_keys().collect();
    assert_eq!(left, ["10.1.2.2", "10.1.2.7"]);
    assert!(dir.join("10.1.2.6").is_dir());
    assert!(std::fs::symlink_metadata(dir.join("10.1.2.7")).is_ok());
}

#[test]
fn config_validation_messages() {
    let data = tempdir();
    let cases: &[(Value, u64, &str)] = &[
        (
            json!([[{"subnet": "10.1.2.0/31"}]]),
            7,
            "invalid range set 0: Network 10.1.2.0/31 too small to allocate from",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}]]),
            7,
            "invalid range set 0: RangeStart 10.1.3.1 not in network 10.1.2.0/24",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]]),
            7,
            "invalid range set 0: mixed address families",
        ),
        (
            json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.0/25"}]]),
            7,
            "range set 0 overlaps with 1",
        ),
        (json!([[]]), 7, "invalid range set 0: empty range set"),
    ];
    for (ranges, code, msg) in cases {
        let mut c = conf("1.0.0", data.path(), &[]);
        c["ipam"]["ranges"] = ranges.clone();
        let out = run("ADD", &c, "c1");
        assert_eq!(out.assert_error(*code)["msg"], *msg, "{ranges}");
    }
    let c = conf("0.2.0", data.path(), &["10.1.2.0/24", "10.1.3.0/24"]);
    let out = run("ADD", &c, "c1");
    assert_eq!(
        out.assert_error(7)["msg"],
        "CNI version 0.2.0 does not support more than 1 address per family"
    );
    assert!(snapshot(data.path()).is_empty());
}

// ----------------------------------------------------------------------------------------
// Differential: the same requests through the reference and through ours.

/// The reference prints `"dns": {}` in 1.0.0 results (its libcni predates the change
/// that omits it); both forms mean "no DNS".
fn normalize(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut()
        && o.get("dns") == Some(&json!({}))
        && o.contains_key("ips")
        && o.get("cniVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with('1'))
    {
        o.remove("dns");
    }
    v
}

#[test]
fn differential_against_the_reference() {
    let Some(reference) = reference_plugin("host-local") else {
        eprintln!("skipping: reference host-local not installed");
        return;
    };
    for version in ["0.2.0", "0.4.0", "1.0.0"] {
        let ref_data = tempdir();
        let our_data = tempdir();
        let subnets: &[&str] = &["10.1.2.0/29", "2001:db8:1::/64"];
        let steps: Vec<(&str, &str, &str, &str)> = vec![
            ("ADD", "c1", "eth0", ""),
            ("ADD", "c2", "eth0", ""),
            ("ADD", "c1", "eth0", ""),
            ("ADD", "c1", "eth1", ""),
            ("ADD", "c3", "eth0", "IP=10.1.2.6"),
            ("ADD", "c4", "eth0", "IP=10.1.2.6"),
            ("ADD", "c4", "eth0", "IP=10.1.2.1"),
            ("DEL", "c2", "eth0", ""),
            ("ADD", "c5", "eth0", ""),
            ("ADD", "c6", "eth0", ""),
            ("ADD", "c7", "eth0", ""),
            ("CHECK", "c1", "eth0", ""),
            ("CHECK", "zz", "eth0", ""),
            ("DEL", "c1", "eth0", ""),
            ("DEL", "c1", "eth0", ""),
            ("ADD", "c8", "eth0", ""),
            ("DEL", "nobody", "eth0", ""),
        ];
        for (i, (verb, cid, ifname, args)) in steps.iter().enumerate() {
            if *verb == "CHECK" && !has_check(version) {
                continue;
            }
            let mut outs = Vec::new();
            for (binary, data) in [(&reference, &ref_data), (&bin(), &our_data)] {
                let c = conf(version, data.path(), subnets);
                let out = call_with(binary, verb, &c, cid, ifname).args(args).run();
                outs.push(out);
            }
            let (r, o) = (&outs[0], &outs[1]);
            let ctx = format!("{version} step {i} {verb} {cid} {ifname} {args}");
            assert_eq!(
                r.success(),
                o.success(),
                "{ctx}\nreference:\n{r}\nours:\n{o}"
            );
            if r.success() {
                let rv = r.json.as_ref().map(normalize);
                let ov = o.json.as_ref().map(normalize);
                assert_eq!(rv, ov, "{ctx}\nreference:\n{r}\nours:\n{o}");
            } else {
                assert_eq!(
                    r.json.as_ref().map(|j| &j["msg"]),
                    o.json.as_ref().map(|j| &j["msg"]),
                    "{ctx}"
                );
            }
            assert_eq!(
                snapshot(ref_data.path()),
                snapshot(our_data.path()),
                "{ctx}: ledgers differ"
            );
        }
    }
}

#[test]
fn either_implementation_releases_the_others_reservations() {
    let Some(reference) = reference_plugin("host-local") else {
        eprintln!("skipping: reference host-local not installed");
        return;
    };
    let data = tempdir();
    let c = conf("1.0.0", data.path(), &["10.1.2.0/24", "2001:db8:1::/64"]);
    let ours = bin();

    // Reference ADD, our DEL.
    call_with(&reference, "ADD", &c, "go1", "eth0")
        .run()
        .assert_ok();
    assert_eq!(reservations(&data).len(), 2);
    // Our index learns about the reference's reservation: a duplicate ADD is refused.
    call_with(&ours, "ADD", &c, "go1", "eth0")
        .run()
        .assert_error(999);
    call_with(&ours, "CHECK", &c, "go1", "eth0")
        .run()
        .assert_ok();
    call_with(&ours, "DEL", &c, "go1", "eth0").run().assert_ok();
    assert!(reservations(&data).is_empty());

    // Our ADD, reference DEL (it walks past our index file without harm).
    call_with(&ours, "ADD", &c, "rs1", "eth0").run().assert_ok();
    call_with(&reference, "CHECK", &c, "rs1", "eth0")
        .run()
        .assert_ok();
    call_with(&reference, "ADD", &c, "rs1", "eth0")
        .run()
        .assert_error(999);
    call_with(&reference, "DEL", &c, "rs1", "eth0")
        .run()
        .assert_ok();
    assert!(reservations(&data).is_empty());

    // Interleaved, the round robin carries on across implementations.
    let a = call_with(&ours, "ADD", &c, "x1", "eth0").run();
    let b = call_with(&reference, "ADD", &c, "x2", "eth0").run();
    let d = call_with(&ours, "ADD", &c, "x3", "eth0").run();
    let addr = |o: &Outcome| {
        o.assert_ok()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        [addr(&a), addr(&b), addr(&d)],
        ["10.1.2.4/24", "10.1.2.5/24", "10.1.2.6/24"]
    );
    call_with(&reference, "DEL", &c, "x3", "eth0")
        .run()
        .assert_ok();
    call_with(&ours, "DEL", &c, "x2", "eth0").run().assert_ok();
    let left: Vec<String> = reservations(&data).into_keys().collect();
    assert_eq!(left, ["10.1.2.4", "2001:db8:1::4"]);

    // A legacy (ID-only) file is released by either.
    std::fs::write(net_dir(&data).join("10.1.2.99"), "old").unwrap();
    call_with(&ours, "DEL", &c, "old", "eth0").run().assert_ok();
    assert!(!net_dir(&data).join("10.1.2.99").exists());
}

#[test]
fn large_ledger_written_by_someone_else() {
    let data = tempdir();
    let c = conf("1.1.0", data.path(), &["10.30.0.0/20"]);
    let dir = net_dir(&data);
    std::fs::create_dir_all(&dir).unwrap();
    // 3000 reservations as the reference (or an older version) leaves them.
    for i in 0..3000u32 {
        let v = 2 + i;
        let name = format!("10.30.{}.{}", v >> 8, v & 255);
        let content = if i % 10 == 0 {
            format!("old{i}")
        } else {
            format!("pod{i}\r\neth0")
        };
        std::fs::write(dir.join(name), content).unwrap();
    }
    std::fs::write(dir.join("last_reserved_ip.0"), "10.30.11.185").unwrap();

    let r = run("ADD", &c, "new1");
    assert_eq!(r.assert_ok()["ips"][0]["address"], "10.30.11.186/20");
    let dup = run("ADD", &c, "pod17");
    assert_eq!(
        dup.assert_error(999)["msg"],
        "failed to allocate for range 0: 10.30.0.19 has been allocated to pod17, duplicate allocation is not allowed"
    );
    let dup = run("ADD", &c, "old20");
    assert!(
        dup.assert_error(999)["msg"]
            .as_str()
            .unwrap()
            .contains("10.30.0.22 has been allocated to old20")
    );
    run("CHECK", &c, "pod2999").assert_ok();
    run("DEL", &c, "pod17").assert_ok();
    run("DEL", &c, "old20").assert_ok();
    assert!(!dir.join("10.30.0.19").exists());
    assert!(!dir.join("10.30.0.22").exists());
    // Someone else removes one behind our back: the index notices.
    std::fs::remove_file(dir.join("10.30.0.30")).unwrap();
    run("CHECK", &c, "pod28").assert_error(999);
    run("ADD", &c, "pod28").assert_ok();
    assert_eq!(reservations(&data).len(), 3000 + 1 - 3 + 1);
    run("STATUS", &c, "").assert_ok();
}
