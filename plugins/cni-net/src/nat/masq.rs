//! ipMasq, bridge's verbs: masquerade traffic from a container's addresses leaving
//! their subnet. Each takes the NAT lock, picks the driver(s) and says the
//! cross-layout rule: ADD writes one layout, DEL and GC visit every layout that may
//! hold the container's state.

use std::path::Path;

use ipnetwork::IpNetwork;

use super::Backend;
use super::driver::NatDriver;
use super::error::NatError;
use super::lock::{LOCK_PATH, lock_at};
use super::model::Attachment;

/// Installs masquerading for `ips` of the container. Idempotent: the container's rules
/// are replaced, and nothing is committed when they are already right.
///
/// The iptables layout ignores `ifname` (as the reference does); nftables comments carry
/// it.
pub fn setup_masq(
    backend: Backend,
    network: &str,
    ifname: &str,
    container_id: &str,
    ips: &[IpNetwork],
) -> Result<(), NatError> {
    setup_with(
        backend.driver(),
        Path::new(LOCK_PATH),
        network,
        ifname,
        container_id,
        ips,
    )
}

fn setup_with(
    driver: &dyn NatDriver,
    lock: &Path,
    network: &str,
    ifname: &str,
    container_id: &str,
    ips: &[IpNetwork],
) -> Result<(), NatError> {
    if ips.is_empty() {
        return Ok(());
    }
    let _lock = lock_at(lock)?;
    driver.setup_masq(network, ifname, container_id, ips)
}

/// Removes the container's masquerading from **every** layout (it may have been set up
/// by another version or configuration), without needing its addresses: safe on DEL
/// with the netns gone and no prevResult. Absent chains/tables are fine; a layout whose
/// tools are not installed or whose tables are absent is skipped. Errors are
/// collected, not short-circuited.
///
/// `addresses` (prevResult's, when the runtime sent it) only speed up the
/// nftables-sets layout: its entries are then looked up one by one instead of listed.
pub fn teardown_masq(
    network: &str,
    ifname: &str,
    container_id: &str,
    addresses: Option<&[IpNetwork]>,
) -> Result<(), NatError> {
    teardown_with(
        &all_drivers(),
        Path::new(LOCK_PATH),
        network,
        ifname,
        container_id,
        addresses,
    )
}

fn teardown_with(
    drivers: &[&dyn NatDriver],
    lock: &Path,
    network: &str,
    ifname: &str,
    container_id: &str,
    addresses: Option<&[IpNetwork]>,
) -> Result<(), NatError> {
    let _lock = lock_at(lock)?;
    let errors = drivers
        .iter()
        .filter(|d| d.may_hold_masq())
        .filter_map(|d| {
            d.teardown_masq(network, ifname, container_id, addresses)
                .err()
        })
        .collect();
    NatError::collect(errors)
}

/// GC: removes this network's masquerading for every attachment not in `valid`, in
/// every layout. iptables chains are per container (any ifname keeps them); nftables
/// rules are per attachment, as in the reference.
pub fn gc_masq(network: &str, valid: &[Attachment<'_>]) -> Result<(), NatError> {
    gc_with(&all_drivers(), Path::new(LOCK_PATH), network, valid)
}

fn gc_with(
    drivers: &[&dyn NatDriver],
    lock: &Path,
    network: &str,
    valid: &[Attachment<'_>],
) -> Result<(), NatError> {
    let _lock = lock_at(lock)?;
    let errors = drivers
        .iter()
        .filter(|d| d.may_hold_masq())
        .filter_map(|d| d.gc_masq(network, valid).err())
        .collect();
    NatError::collect(errors)
}

/// Every layout's driver, in [`Backend::ALL`]'s order.
fn all_drivers() -> [&'static dyn NatDriver; 3] {
    Backend::ALL.map(Backend::driver)
}

#[cfg(test)]
mod tests {
    use super::super::driver::testing::{Call, RecordingDriver, lock_file};
    use super::*;

    fn ips() -> Vec<IpNetwork> {
        vec!["10.0.0.2/24".parse().unwrap()]
    }

    #[test]
    fn setup_writes_one_layout_under_the_lock_and_nothing_without_addresses() {
        let (lock, _dir) = lock_file("setup");
        let d = RecordingDriver::new("a", &lock);
        setup_with(&d, &lock, "net", "eth0", "c1", &ips()).unwrap();
        assert_eq!(d.calls(), [Call::locked("setup_masq c1")]);
        setup_with(&d, &lock, "net", "eth0", "c2", &[]).unwrap();
        assert_eq!(d.calls().len(), 1, "no addresses: nothing to do");
    }

    #[test]
    fn teardown_visits_every_layout_that_may_hold_state() {
        let (lock, _dir) = lock_file("teardown");
        let a = RecordingDriver::new("a", &lock);
        let b = RecordingDriver::new("b", &lock).holding_nothing();
        let c = RecordingDriver::new("c", &lock);
        teardown_with(&[&a, &b, &c], &lock, "net", "eth0", "c1", None).unwrap();
        assert_eq!(a.calls(), [Call::locked("teardown_masq c1")]);
        assert_eq!(
            b.calls(),
            [],
            "a layout that holds nothing is not torn down"
        );
        assert_eq!(c.calls(), [Call::locked("teardown_masq c1")]);
    }

    #[test]
    fn teardown_and_gc_keep_going_after_a_failure() {
        let (lock, _dir) = lock_file("gc");
        let a = RecordingDriver::new("a", &lock).failing();
        let b = RecordingDriver::new("b", &lock);
        let c = RecordingDriver::new("c", &lock).failing();
        let valid = [Attachment {
            container_id: "keep",
            ifname: "eth0",
        }];
        let err = gc_with(&[&a, &b, &c], &lock, "net", &valid).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a: gc_masq net failed\nc: gc_masq net failed"
        );
        for d in [&a, &b, &c] {
            assert_eq!(d.calls(), [Call::locked("gc_masq net")]);
        }
        let err = teardown_with(&[&a, &b], &lock, "net", "eth0", "c1", None).unwrap_err();
        assert_eq!(err.to_string(), "a: teardown_masq c1 failed");
        assert_eq!(b.calls().last(), Some(&Call::locked("teardown_masq c1")));
    }
}
