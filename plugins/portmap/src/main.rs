//! `portmap`: a chained CNI plugin forwarding host ports to the pod.

mod config;
mod container;
mod error;
mod localnet;
mod plugin;
#[cfg(test)]
mod props;
mod registry;

fn main() {
    cni_types::skel::run("portmap", &plugin::Portmap)
}
