//! How much Go-style key matching costs per decode, against serde_json decoding the
//! same bytes straight into the same type (which matches keys exactly).
//! `cargo bench -p cni-types --bench json`; prints the median of 21 rounds.

use std::hint::black_box;
use std::time::Instant;

use cni_types::{CniResult, NetConf};
use serde::de::DeserializeOwned;

/// A portmap request as containerd sends it: plugin keys, runtimeConfig, prevResult.
const PORTMAP: &str = r#"{"cniVersion":"1.0.0","name":"cbr0","type":"portmap",
"capabilities":{"portMappings":true},"snat":true,
"runtimeConfig":{"portMappings":[{"HostPort":19301,"ContainerPort":8080,"Protocol":"tcp","HostIP":""}]},
"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"02:00:00:00:00:01"},
{"name":"veth1234abcd","mac":"02:00:00:00:00:02"},{"name":"eth0","mac":"02:00:00:00:00:03",
"sandbox":"/var/run/netns/cni-1234"}],"ips":[{"address":"10.244.3.7/24","gateway":"10.244.3.1",
"interface":2}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}"#;

fn median_ns<T: DeserializeOwned>(decode: impl Fn(&[u8]) -> T) -> f64 {
    const N: u32 = 20_000;
    let mut rounds: Vec<f64> = (0..21)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..N {
                black_box(decode(black_box(PORTMAP.as_bytes())));
            }
            start.elapsed().as_nanos() as f64 / f64::from(N)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[10]
}

fn main() {
    let exact = median_ns(|b| serde_json::from_slice::<NetConf>(b).unwrap());
    let go = median_ns(|b| cni_types::json::from_slice::<NetConf>(b).unwrap());
    println!("NetConf from bytes:   serde_json {exact:7.0} ns, Go keys {go:7.0} ns");
    let value = median_ns(|b| serde_json::from_slice::<serde_json::Value>(b).unwrap());
    println!("Value from bytes:     {value:7.0} ns");
    let v: serde_json::Value = serde_json::from_str(PORTMAP).unwrap();
    let prev = v["prevResult"].clone();
    let exact = median_ns(|_| serde_json::from_value::<CniResult>(prev.clone()).unwrap());
    let go = median_ns(|_| CniResult::from_value(&prev, "1.0.0").unwrap());
    println!("prevResult from Value: serde_json {exact:7.0} ns, Go keys {go:7.0} ns");
}
