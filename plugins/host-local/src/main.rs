//! The `host-local` IPAM plugin binary.

fn main() {
    cni_types::skel::run("host-local", &host_local::plugin::HostLocal)
}
