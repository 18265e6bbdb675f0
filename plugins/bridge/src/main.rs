//! The `bridge` CNI plugin: connects a container to a Linux bridge on the
//! host through a veth pair, with addresses from a delegated IPAM plugin.

mod add;
mod bridge;
mod check;
mod config;
mod container;
mod del;
mod error;
mod gateway;
mod gc;
mod masq;
mod spoofcheck;
mod veth;

use cni_types::{CniResult, Plugin, Request};

use crate::config::BridgeConf;
use crate::error::BridgeError;

struct Bridge;

impl Plugin for Bridge {
    fn add(&self, req: &Request) -> Result<CniResult, cni_types::Error> {
        Ok(add::add(req)?)
    }

    fn del(&self, req: &Request) -> Result<(), cni_types::Error> {
        Ok(del::del(req)?)
    }

    fn check(&self, req: &Request) -> Result<(), cni_types::Error> {
        Ok(check::check(req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), cni_types::Error> {
        Ok(gc::gc(req)?)
    }

    fn status(&self, req: &Request) -> Result<(), cni_types::Error> {
        let conf = BridgeConf::parse(&req.stdin, &cni_types::CniArgs::default())?;
        if let Some(ipam) = &conf.ipam_type {
            cni_types::invoke::delegate_status(ipam, req).map_err(BridgeError::Ipam)?;
        }
        Ok(())
    }
}

fn main() {
    cni_types::skel::run("bridge", &Bridge)
}
