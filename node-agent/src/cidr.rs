//! CIDR arithmetic: the smallest list of CIDRs covering a set of them, so a cluster of
//! 5 000 node /24s becomes a handful of set elements.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

fn bounds(n: &IpNetwork) -> (u128, u128, u8) {
    match n {
        IpNetwork::V4(v) => {
            let start = u128::from(u32::from(v.network()));
            let size = 1u128 << (32 - u32::from(v.prefix()));
            (start, start + size - 1, 32)
        }
        IpNetwork::V6(v) => {
            let start = u128::from(v.network());
            let host = 128 - u32::from(v.prefix());
            let end = if host == 128 {
                u128::MAX
            } else {
                start | ((1u128 << host) - 1)
            };
            (start, end, 128)
        }
    }
}

fn to_net(start: u128, prefix: u8, bits: u8) -> IpNetwork {
    let ip = if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(start as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(start))
    };
    IpNetwork::new(ip, prefix).expect("prefix within the family's width")
}

/// The fewest CIDRs covering exactly the union of `nets` (per family, IPv4 first,
/// ascending).
pub fn aggregate<'a>(nets: impl IntoIterator<Item = &'a IpNetwork>) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    let mut ranges: Vec<(u8, u128, u128)> = nets
        .into_iter()
        .map(|n| {
            let (s, e, bits) = bounds(n);
            (bits, s, e)
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u8, u128, u128)> = Vec::new();
    for (bits, s, e) in ranges {
        match merged.last_mut() {
            Some((b, _, last_e)) if *b == bits && (*last_e == u128::MAX || s <= *last_e + 1) => {
                *last_e = (*last_e).max(e);
            }
            _ => merged.push((bits, s, e)),
        }
    }
    for (bits, mut s, e) in merged {
        // Largest aligned block at `s` that does not pass `e`, repeatedly.
        loop {
            let align = if s == 0 {
                u32::from(bits)
            } else {
                s.trailing_zeros().min(u32::from(bits))
            };
            let mut host = align;
            while host > 0 {
                let last = if host == 128 {
                    u128::MAX
                } else {
                    s + ((1u128 << host) - 1)
                };
                if last <= e {
                    break;
                }
                host -= 1;
            }
            out.push(to_net(s, bits - host as u8, bits));
            let last = if host == 128 {
                u128::MAX
            } else {
                s + ((1u128 << host) - 1)
            };
            if last >= e {
                break;
            }
            s = last + 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(s: &[&str]) -> Vec<String> {
        let nets: Vec<IpNetwork> = s.iter().map(|c| c.parse().unwrap()).collect();
        aggregate(&nets).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn merges_neighbours_and_drops_covered() {
        assert_eq!(agg(&["10.244.1.0/24", "10.244.0.0/24"]), ["10.244.0.0/23"]);
        assert_eq!(
            agg(&["10.244.1.0/24", "10.244.2.0/24"]),
            ["10.244.1.0/24", "10.244.2.0/24"]
        );
        assert_eq!(agg(&["10.244.0.0/16", "10.244.7.0/24"]), ["10.244.0.0/16"]);
        let all: Vec<String> = (0..=255).map(|i| format!("10.244.{i}.0/24")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(agg(&all), ["10.244.0.0/16"]);
        assert_eq!(agg(&["0.0.0.0/0", "1.2.3.4/32"]), ["0.0.0.0/0"]);
    }

    #[test]
    fn families_stay_apart() {
        assert_eq!(
            agg(&[
                "fd00:10:244:1::/64",
                "10.244.0.0/24",
                "fd00:10:244::/64",
                "::/0"
            ]),
            ["10.244.0.0/24", "::/0"]
        );
        assert_eq!(agg(&["fd00::/64", "fd00:0:0:1::/64"]), ["fd00::/63"]);
        assert!(agg(&[]).is_empty());
    }

    #[test]
    fn a_hole_leaves_the_fewest_pieces() {
        let nets: Vec<String> = (0..=255)
            .filter(|i| *i != 5)
            .map(|i| format!("10.244.{i}.0/24"))
            .collect();
        let nets: Vec<&str> = nets.iter().map(String::as_str).collect();
        assert_eq!(
            agg(&nets),
            [
                "10.244.0.0/22",
                "10.244.4.0/24",
                "10.244.6.0/23",
                "10.244.8.0/21",
                "10.244.16.0/20",
                "10.244.32.0/19",
                "10.244.64.0/18",
                "10.244.128.0/17"
            ]
        );
    }
}
