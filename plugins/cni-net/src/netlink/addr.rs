//! Interface addresses.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::Link;
use super::socket::Netlink;
use super::types::{Family, Scope};
use crate::error::{Error, Result};

/// `IFA_F_*` bits worth naming.
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_PERMANENT: u32 = 0x80;

/// How often [`Netlink::settle_addrs`] polls, as the reference does.
const SETTLE_INTERVAL: Duration = Duration::from_millis(50);

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// Index of the interface carrying the address.
    pub index: u32,
    /// The address with its prefix length (host bits kept: `10.1.2.3/24`).
    pub net: IpNetwork,
    pub scope: Scope,
    /// Raw `IFA_F_*` flags (from `IFA_FLAGS` when present: the header only
    /// holds the low 8 bits).
    pub flags: u32,
    pub label: Option<String>,
}

impl Addr {
    pub fn ip(&self) -> IpAddr {
        self.net.ip()
    }

    pub fn family(&self) -> Family {
        Family::of(self.net.ip())
    }

    /// IPv6 duplicate address detection still running.
    pub fn is_tentative(&self) -> bool {
        self.flags & IFA_F_TENTATIVE != 0
    }

    /// IPv6 duplicate address detection found a duplicate.
    pub fn is_dadfailed(&self) -> bool {
        self.flags & IFA_F_DADFAILED != 0
    }

    /// Not from autoconfiguration (configured statically).
    pub fn is_permanent(&self) -> bool {
        self.flags & IFA_F_PERMANENT != 0
    }

    fn from_msg(msg: AddressMessage) -> Option<Addr> {
        let mut address = None;
        let mut local = None;
        let mut flags = u32::from(msg.header.flags.bits());
        let mut label = None;
        for attr in msg.attributes {
            match attr {
                AddressAttribute::Address(a) => address = Some(a),
                AddressAttribute::Local(a) => local = Some(a),
                AddressAttribute::Flags(f) => flags = f.bits(),
                AddressAttribute::Label(l) => label = Some(l),
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
        // point-to-point links and equals IFA_LOCAL elsewhere. IPv6 usually
        // sends only IFA_ADDRESS.
        let ip = local.or(address)?;
        let net = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
        Some(Addr {
            index: msg.header.index,
            net,
            scope: Scope::from(u8::from(msg.header.scope)),
            flags,
            label,
        })
    }
}

fn addr_msg(index: u32, net: IpNetwork) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = Family::of(net.ip()).af();
    m.header.prefix_len = net.prefix();
    m.header.index = index;
    m
}

impl Netlink {
    /// Addresses in this socket's netns, optionally of one interface and
    /// one family.
    pub fn addrs(&mut self, index: Option<u32>, family: Option<Family>) -> Result<Vec<Addr>> {
        let mut m = AddressMessage::default();
        m.header.family = family.map_or(AddressFamily::Unspec, Family::af);
        let msgs = self.dump(RouteNetlinkMessage::GetAddress(m), || match index {
            Some(i) => format!("list addresses of link {i}"),
            None => "list addresses".into(),
        })?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(m) => Addr::from_msg(m),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .filter(|a| family.is_none_or(|f| a.family() == f))
            .collect())
    }

    /// Adds `net` (address + prefix, e.g. `10.1.2.3/24`) to `link`. IPv4
    /// addresses get the subnet broadcast, as the reference sets it.
    ///
    /// An identical address fails with
    /// [`Error::is_exists`](crate::error::Error::is_exists).
    pub fn add_addr(&mut self, link: &Link, net: IpNetwork) -> Result<()> {
        let mut m = addr_msg(link.index, net);
        let ip = net.ip();
        if let IpNetwork::V4(v4) = net {
            m.attributes.push(AddressAttribute::Local(ip));
            if v4.prefix() < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        m.attributes.push(AddressAttribute::Address(ip));
        self.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add {net} to {:?}", link.name),
        )
    }

    /// Removes `net` from `link`; a missing address fails with
    /// [`Error::is_not_found`](crate::error::Error::is_not_found).
    pub fn del_addr(&mut self, link: &Link, net: IpNetwork) -> Result<()> {
        let mut m = addr_msg(link.index, net);
        let ip = net.ip();
        if net.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(ip));
        }
        m.attributes.push(AddressAttribute::Address(ip));
        self.ack(RouteNetlinkMessage::DelAddress(m), 0, || {
            format!("delete {net} from {:?}", link.name)
        })
    }

    /// Waits until no address of `link` is tentative (IPv6 DAD done).
    ///
    /// Fails at once with [`Error::DadFailed`] when DAD found a duplicate,
    /// and with [`Error::DadTimeout`] when addresses are still tentative
    /// after `timeout`.
    pub fn settle_addrs(&mut self, link: &Link, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let addrs = self.addrs(Some(link.index), None)?;
            if let Some(a) = addrs.iter().find(|a| a.is_dadfailed()) {
                return Err(Error::DadFailed {
                    link: link.name.clone(),
                    addr: a.ip(),
                });
            }
            if !addrs.iter().any(Addr::is_tentative) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::DadTimeout {
                    link: link.name.clone(),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(SETTLE_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::link::tests::netns_with_veth;
    use crate::sysctl;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn add_list_delete_v4_and_v6() {
        let (ns, mut nl, a, b) = netns_with_veth();
        // No DAD: the v6 address leaves tentative state at once.
        ns.run(|| sysctl::set("net/ipv6/conf/va/accept_dad", "0"))
            .unwrap();
        nl.add_addr(&a, net("10.1.2.3/24")).unwrap();
        nl.add_addr(&a, net("2001:db8::3/64")).unwrap();
        nl.add_addr(&b, net("10.1.2.4/24")).unwrap();

        let e = nl.add_addr(&a, net("10.1.2.3/24")).unwrap_err();
        assert!(e.is_exists(), "{e}");
        // The kernel's extended ack, when present, follows in parentheses.
        assert!(
            e.to_string()
                .starts_with("add 10.1.2.3/24 to \"va\": File exists"),
            "{e}"
        );

        let v4 = nl.addrs(Some(a.index), Some(Family::V4)).unwrap();
        assert_eq!(v4.len(), 1);
        assert_eq!(v4[0].net, net("10.1.2.3/24"));
        assert_eq!(v4[0].scope, Scope::Universe);
        assert_eq!(v4[0].label.as_deref(), Some("va"));
        assert!(v4[0].is_permanent());

        // Even without DAD the kernel clears "tentative" from a work item,
        // a moment after the add returns.
        nl.settle_addrs(&a, Duration::from_secs(1)).unwrap();
        let v6 = nl.addrs(Some(a.index), Some(Family::V6)).unwrap();
        assert!(v6.iter().any(|x| x.net == net("2001:db8::3/64")), "{v6:?}");
        assert!(v6.iter().all(|x| !x.is_tentative()));

        let all = nl.addrs(None, Some(Family::V4)).unwrap();
        assert_eq!(all.len(), 2, "{all:?}");

        nl.del_addr(&a, net("10.1.2.3/24")).unwrap();
        nl.del_addr(&a, net("2001:db8::3/64")).unwrap();
        assert!(
            nl.addrs(Some(a.index), Some(Family::V4))
                .unwrap()
                .is_empty()
        );
        let e = nl.del_addr(&a, net("10.1.2.3/24")).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[test]
    fn dad_flags_and_settle() {
        let (ns, mut nl, a, b) = netns_with_veth();
        ns.run(|| -> Result<()> {
            sysctl::set("net/ipv6/conf/va/accept_dad", "1")?;
            sysctl::set("net/ipv6/conf/va/dad_transmits", "1")?;
            // DAD starts after a random delay below this; keep the test short.
            sysctl::set("net/ipv6/conf/va/router_solicitation_delay", "0")?;
            sysctl::set("net/ipv6/neigh/va/retrans_time_ms", "100")
        })
        .unwrap();
        nl.add_addr(&a, net("2001:db8::5/64")).unwrap();
        nl.set_link_up(&a).unwrap();
        nl.set_link_up(&b).unwrap();
        let v6 = nl.addrs(Some(a.index), Some(Family::V6)).unwrap();
        let ours = v6.iter().find(|x| x.net == net("2001:db8::5/64")).unwrap();
        assert!(ours.is_tentative(), "{ours:?}");
        nl.settle_addrs(&a, Duration::from_secs(5)).unwrap();
        let v6 = nl.addrs(Some(a.index), Some(Family::V6)).unwrap();
        assert!(v6.iter().all(|x| !x.is_tentative() && !x.is_dadfailed()));
    }

    #[test]
    fn settle_times_out_on_a_link_that_stays_tentative() {
        let (ns, mut nl, a, _b) = netns_with_veth();
        ns.run(|| sysctl::set("net/ipv6/conf/va/accept_dad", "1"))
            .unwrap();
        nl.add_addr(&a, net("2001:db8::6/64")).unwrap();
        // Link down: DAD never starts, the address stays tentative.
        let e = nl.settle_addrs(&a, Duration::from_millis(120)).unwrap_err();
        assert!(matches!(e, Error::DadTimeout { .. }), "{e}");
    }
}
