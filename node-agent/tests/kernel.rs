//! The agent's kernel parts against a real kernel, each test in network namespaces it
//! creates and removes: routes by protocol number (add, replace, delete, never anyone
//! else's), next-hop lookups, the MTU, notifications, the reconciler restoring what a
//! person deleted or a link flap flushed, the masquerade table, the FORWARD chain and
//! `cni-rs-node cleanup`. Needs root, iproute2, nftables and iptables.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use cni_rs_node::forward;
use cni_rs_node::health::Status;
use cni_rs_node::masq::{self, MasqSpec};
use cni_rs_node::netlink::{self, Kernel, KernelEvent, Rtnl};
use cni_rs_node::node::NodeView;
use cni_rs_node::reconcile::Reconciler;
use cni_rs_node::routes::{Reach, RouteOp};
use cni_tests::Netns;
use ipnetwork::IpNetwork;

const PROTO: u8 = 61;

/// Runs `f` on a thread of its own inside `ns`, on a current-thread runtime, so every
/// socket it opens (and every process it starts) belongs to that namespace.
fn in_netns<F, Fut, T>(ns: &Netns, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = ns.path().to_owned();
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    });
    match thread.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A node namespace with `d0` (a veth whose peer `d0p` stays beside it) on
/// 10.99.0.1/24 and fd00:99::1/64.
fn node() -> Netns {
    let ns = Netns::new("agent");
    ns.lo_up();
    ns.ip(["link", "add", "d0", "type", "veth", "peer", "name", "d0p"]);
    ns.ip(["link", "set", "d0p", "up"]);
    ns.ip(["addr", "add", "10.99.0.1/24", "dev", "d0"]);
    ns.ip(["addr", "add", "fd00:99::1/64", "dev", "d0", "nodad"]);
    ns.ip(["link", "set", "d0", "up"]);
    // As a node's network configuration would: the address survives a link flap.
    ns.sysctl("net.ipv6.conf.d0.keep_addr_on_down", "1");
    ns
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn our_routes(ns: &Netns) -> String {
    let v4 = ns.ip(["route", "show", "proto", &PROTO.to_string()]);
    let v6 = ns.ip(["-6", "route", "show", "proto", &PROTO.to_string()]);
    format!("{v4}{v6}")
}

#[test]
fn routes_carry_our_protocol_and_only_ours_are_changed() {
    let ns = node();
    ns.ip(["route", "add", "10.244.9.0/24", "via", "10.99.0.9"]); // someone else's (proto boot)
    let dump = in_netns(&ns, || async {
        let mut k = Rtnl::open().unwrap();
        let ops = [
            RouteOp::Add {
                dst: net("10.244.2.0/24"),
                gw: ip("10.99.0.2"),
            },
            RouteOp::Add {
                dst: net("fd00:10:244:2::/64"),
                gw: ip("fd00:99::2"),
            },
        ];
        for r in k.apply(PROTO, &ops).await {
            r.unwrap();
        }
        let replace = [RouteOp::Replace {
            dst: net("10.244.2.0/24"),
            gw: ip("10.99.0.3"),
            priority: None,
        }];
        k.apply(PROTO, &replace).await.remove(0).unwrap();
        // A second add of the same route is refused, not duplicated.
        let again = k.apply(PROTO, &ops[1..]).await.remove(0).unwrap_err();
        assert_eq!(again.errno, Some(libc::EEXIST), "{again}");
        k.dump_routes().await.unwrap()
    });
    let shown = our_routes(&ns);
    assert!(
        shown.contains("10.244.2.0/24 via 10.99.0.3 dev d0"),
        "{shown}"
    );
    assert!(
        shown.contains("fd00:10:244:2::/64 via fd00:99::2 dev d0"),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 2, "{shown}");
    let find = |d: &str| dump.iter().find(|r| r.dst == net(d)).cloned().unwrap();
    assert_eq!(find("10.244.2.0/24").protocol, PROTO);
    assert_eq!(find("10.244.2.0/24").gw, Some(ip("10.99.0.3")));
    assert_eq!(find("10.244.9.0/24").protocol, 3, "boot");
    assert!(
        dump.iter().all(|r| !r.dst.ip().is_loopback()),
        "main table only: {dump:?}"
    );

    // Deleting "ours" for the foreign route's destination leaves the foreign route.
    let foreign = find("10.244.9.0/24");
    let v6 = find("fd00:10:244:2::/64");
    in_netns(&ns, move || async move {
        let mut k = Rtnl::open().unwrap();
        let res = k
            .apply(PROTO, &[RouteOp::Delete(foreign), RouteOp::Delete(v6)])
            .await;
        assert!(
            res[0].is_err(),
            "a route of another protocol is not ours to delete"
        );
        res[1].as_ref().unwrap();
    });
    assert!(
        ns.ip(["route", "show", "10.244.9.0/24"])
            .contains("via 10.99.0.9")
    );
    assert!(!our_routes(&ns).contains("fd00:10:244:2::"));
}

#[test]
fn next_hops_are_on_link_or_not_with_a_reason() {
    let ns = node();
    ns.ip(["link", "set", "d0", "mtu", "1400"]);
    ns.ip(["route", "add", "default", "via", "10.99.0.254"]);
    let (reach, mtu) = in_netns(&ns, || async {
        let mut k = Rtnl::open().unwrap();
        let gws = [
            ip("10.99.0.2"),
            ip("192.0.2.7"),
            ip("10.99.0.1"),
            ip("fd00:99::2"),
            ip("2001:db8::1"),
        ];
        (k.reach(&gws).await, k.mtu_for(ip("10.99.0.1")).await)
    });
    assert!(matches!(reach[0], Reach::OnLink { .. }), "{reach:?}");
    assert!(
        matches!(&reach[1], Reach::No(why) if why.contains("via gateway 10.99.0.254")),
        "{reach:?}"
    );
    assert!(
        matches!(&reach[2], Reach::No(why) if why.contains("address of this node")),
        "{reach:?}"
    );
    assert!(matches!(reach[3], Reach::OnLink { .. }), "{reach:?}");
    assert!(matches!(&reach[4], Reach::No(_)), "{reach:?}");
    assert_eq!(mtu, Some(1400));
}

fn view(name: &str, cidrs: &[&str], ips: &[&str]) -> NodeView {
    NodeView {
        name: name.into(),
        pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
        bad_cidrs: vec![],
        internal_ips: ips.iter().map(|i| ip(i)).collect(),
        external_ips: vec![],
    }
}

/// The reconciler with real notifications: what a person deletes and what a link flap
/// flushes comes back, a foreign route to a pod CIDR stays and is counted, an off-link
/// peer gets no route.
#[test]
fn the_reconciler_restores_deleted_and_flushed_routes() {
    let ns = node();
    ns.ip(["route", "add", "10.244.4.0/24", "via", "10.99.0.44"]); // by hand, old README
    let nodes = vec![
        view("me", &["10.244.1.0/24"], &["10.99.0.1"]),
        view(
            "n2",
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
            &["10.99.0.2", "fd00:99::2"],
        ),
        view("n3", &["10.244.3.0/24"], &["10.99.0.3"]),
        view("n4", &["10.244.4.0/24"], &["10.99.0.4"]),
        view("far", &["10.244.5.0/24"], &["192.0.2.5"]),
    ];
    let ns_name = ns.name().to_owned();
    let status = Status::new(Duration::from_secs(60));
    let st = status.clone();
    in_netns(&ns, move || async move {
        let mut events = netlink::monitor().unwrap();
        let mut rec = Reconciler::new(Rtnl::open().unwrap(), "me", PROTO, false, st.clone());
        rec.reconcile(&nodes).await;
        let shown = |ns: &str| {
            let out = std::process::Command::new("ip")
                .args(["-n", ns, "-4", "route", "show", "proto", "61"])
                .output()
                .unwrap();
            let out6 = std::process::Command::new("ip")
                .args(["-n", ns, "-6", "route", "show", "proto", "61"])
                .output()
                .unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out6.stdout)
            )
        };
        let before = shown(&ns_name);
        assert_eq!(
            before.lines().count(),
            3,
            "n2 (both families) and n3:\n{before}"
        );
        assert_eq!(
            st.metrics
                .route_conflicts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        // Drive the loop the way the agent does: notifications in, a pass when one matters.
        async fn settle(
            rec: &mut Reconciler<Rtnl>,
            events: &mut tokio::sync::mpsc::UnboundedReceiver<KernelEvent>,
            nodes: &[NodeView],
            until: impl Fn() -> bool,
        ) -> bool {
            let end = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < end {
                if until() {
                    return true;
                }
                if let Ok(Some(ev)) =
                    tokio::time::timeout(Duration::from_millis(100), events.recv()).await
                {
                    let mut dirty = rec.note(ev);
                    while let Ok(ev) = events.try_recv() {
                        dirty |= rec.note(ev);
                    }
                    if dirty {
                        rec.reconcile(nodes).await;
                    }
                }
            }
            until()
        }
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("ip")
                .arg("-n")
                .arg(&ns_name)
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args:?}");
        };
        run(&["route", "del", "10.244.3.0/24", "proto", "61"]);
        assert!(
            settle(&mut rec, &mut events, &nodes, || shown(&ns_name) == before).await,
            "hand-deleted route restored"
        );
        let foreign = |ns: &str| {
            let out = std::process::Command::new("ip")
                .args(["-n", ns, "route", "show", "10.244.4.0/24"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(
            foreign(&ns_name).contains("via 10.99.0.44 dev d0"),
            "the foreign route is untouched"
        );
        // A link flap flushes every route through d0, the foreign one too: ours come
        // back, and n4's pod CIDR, free now, gets its route.
        run(&["link", "set", "d0", "down"]);
        run(&["link", "set", "d0", "up"]);
        let after = format!(
            "{}10.244.4.0/24 via 10.99.0.4 dev d0 \n",
            before
                .lines()
                .take(2)
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        ) + &before
            .lines()
            .skip(2)
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        assert!(
            settle(&mut rec, &mut events, &nodes, || shown(&ns_name) == after).await,
            "flushed routes restored:\n{}\nwanted:\n{after}",
            shown(&ns_name)
        );
    });
    drop(status);
}

#[test]
fn notifications_report_our_routes_and_links() {
    let ns = node();
    let ns_name = ns.name().to_owned();
    in_netns(&ns, move || async move {
        let mut events = netlink::monitor().unwrap();
        let mut k = Rtnl::open().unwrap();
        k.apply(
            PROTO,
            &[RouteOp::Add {
                dst: net("10.244.2.0/24"),
                gw: ip("10.99.0.2"),
            }],
        )
        .await
        .remove(0)
        .unwrap();
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns_name, "route", "del", "10.244.2.0/24"])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns_name, "link", "set", "d0", "down"])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let mut seen = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < end
            && !(seen.contains(&"del".to_string()) && seen.contains(&"link".to_string()))
        {
            match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
                Ok(Some(KernelEvent::Route { route, added }))
                    if route.protocol == PROTO && route.dst == net("10.244.2.0/24") =>
                {
                    seen.push(if added { "add" } else { "del" }.to_string())
                }
                Ok(Some(KernelEvent::Link { up: false, .. })) => seen.push("link".into()),
                _ => {}
            }
        }
        assert_eq!(seen.iter().filter(|s| *s == "add").count(), 1, "{seen:?}");
        assert!(
            seen.contains(&"del".to_string()) && seen.contains(&"link".to_string()),
            "{seen:?}"
        );
    });
}

#[test]
fn masquerade_is_one_table_of_our_own() {
    let ns = node();
    ns.run(["nft", "add", "table", "ip", "someone_else"]);
    let spec = MasqSpec {
        pods: vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")],
        no_masq: vec![net("10.244.0.0/16"), net("fd00:10:244::/56")],
    };
    let s = spec.clone();
    in_netns(&ns, move || async move { masq::apply(&s).await.unwrap() });
    let table = ns.run(["nft", "list", "table", "inet", masq::TABLE]);
    assert!(
        table.contains("10.244.1.0/24") && table.contains("fd00:10:244::/56"),
        "{table}"
    );
    assert!(table.contains("masquerade fully-random"), "{table}");
    // An update replaces it whole; nothing else in the ruleset changes.
    let mut s = spec;
    s.no_masq.push(net("192.168.0.0/16"));
    in_netns(&ns, move || async move { masq::apply(&s).await.unwrap() });
    let table = ns.run(["nft", "list", "table", "inet", masq::TABLE]);
    assert!(table.contains("192.168.0.0/16"), "{table}");
    assert_eq!(table.matches("chain postrouting").count(), 1, "{table}");
    in_netns(&ns, || async { masq::remove().await.unwrap() });
    in_netns(&ns, || async { masq::remove().await.unwrap() }); // idempotent
    let all = ns.run(["nft", "list", "ruleset"]);
    assert!(
        !all.contains(masq::TABLE) && all.contains("someone_else"),
        "{all}"
    );
}

#[test]
fn forward_accepts_only_where_the_policy_is_drop() {
    let ns = node();
    let cidrs = vec![net("10.244.0.0/16")];
    let c = cidrs.clone();
    let wrote = in_netns(&ns, move || async move {
        forward::ensure(forward::Family::V4, &c).await.unwrap()
    });
    assert!(!wrote, "policy ACCEPT: nothing to do");
    assert!(
        !ns.run(["iptables-save", "-t", "filter"])
            .contains(forward::CHAIN)
    );
    ns.run(["iptables", "-w", "-P", "FORWARD", "DROP"]);
    ns.run(["ip6tables", "-w", "-P", "FORWARD", "DROP"]);
    for _ in 0..2 {
        let c = cidrs.clone();
        assert!(in_netns(&ns, move || async move {
            forward::ensure(forward::Family::V4, &c).await.unwrap()
        }));
    }
    let v6 = vec![net("fd00:10:244::/56")];
    assert!(in_netns(&ns, move || async move {
        forward::ensure(forward::Family::V6, &v6).await.unwrap()
    }));
    let save = ns.run(["iptables-save", "-t", "filter"]);
    assert_eq!(
        save.matches(&format!("-j {}", forward::CHAIN)).count(),
        1,
        "one jump:\n{save}"
    );
    assert!(
        save.contains("-A CNI-RS-FORWARD -s 10.244.0.0/16 -j ACCEPT"),
        "{save}"
    );
    assert!(
        ns.run(["ip6tables-save", "-t", "filter"])
            .contains("-d fd00:10:244::/56 -j ACCEPT")
    );
    for fam in [forward::Family::V4, forward::Family::V6] {
        in_netns(
            &ns,
            move || async move { forward::remove(fam).await.unwrap() },
        );
    }
    let save = ns.run(["iptables-save", "-t", "filter"]);
    assert!(
        !save.contains(forward::CHAIN) && save.contains(":FORWARD DROP"),
        "{save}"
    );
    assert!(
        !ns.run(["ip6tables-save", "-t", "filter"])
            .contains(forward::CHAIN)
    );
}

#[test]
fn cleanup_removes_exactly_what_the_agent_made() {
    let ns = node();
    let conf = cni_tests::TempDir::new("agent-conf");
    std::fs::write(conf.join("10-cni-rs.conflist"), "{}").unwrap();
    ns.ip([
        "route",
        "add",
        "10.244.2.0/24",
        "via",
        "10.99.0.2",
        "proto",
        "61",
    ]);
    ns.ip([
        "route",
        "add",
        "10.244.3.0/24",
        "via",
        "10.99.0.3",
        "proto",
        "62",
    ]);
    ns.ip(["route", "add", "10.244.4.0/24", "via", "10.99.0.4"]);
    ns.ip([
        "-6",
        "route",
        "add",
        "fd00:10:244:2::/64",
        "via",
        "fd00:99::2",
        "proto",
        "61",
    ]);
    in_netns(&ns, || async {
        masq::apply(&MasqSpec::default()).await.unwrap()
    });
    let out = ns.exec([
        env!("CARGO_BIN_EXE_cni-rs-node"),
        "cleanup",
        "--route-protocol",
        "61",
        "--cni-conf-dir",
        conf.path().to_str().unwrap(),
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("deleted 2 routes"), "{log}");
    assert_eq!(our_routes(&ns), "");
    let left = ns.ip(["route", "show"]);
    assert!(
        left.contains("10.244.3.0/24") && left.contains("10.244.4.0/24"),
        "{left}"
    );
    assert!(!ns.run(["nft", "list", "ruleset"]).contains(masq::TABLE));
    assert!(
        conf.join("10-cni-rs.conflist").exists(),
        "the conflist stays"
    );
}
